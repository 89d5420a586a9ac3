// Micro-benchmarks for upstream::ZoneTable (include/dotproxy/upstream/zone_table.h):
// the forward-zone lookup every forwarded query pays, for 1, 100 and 10,000
// zones, on names inside a zone and outside all of them.

#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bench/common/wire.h"
#include "dotproxy/upstream/zone_table.h"

namespace dotproxy::upstream {
namespace {

std::vector<uint8_t> Wire(std::string_view text) {
  std::vector<uint8_t> wire;
  bench::PutName(wire, text);
  return wire;
}

// `zones` zones of two and three labels (service.team<N>.corp.example style).
ZoneTable MakeTable(int zones) {
  ZoneTable table;
  for (int i = 0; i < zones; ++i) {
    table.Add(i % 2 == 0 ? "team" + std::to_string(i) + ".internal"
                         : "svc.team" + std::to_string(i) + ".corp.example",
              1 + static_cast<uint32_t>(i % 16));
  }
  return table;
}

// A 5-label name inside one of the zones (mixed case, as 0x20 clients send).
void BM_ZoneTable_FindInZone(benchmark::State& state) {
  const int zones = static_cast<int>(state.range(0));
  const ZoneTable table = MakeTable(zones);
  std::vector<std::vector<uint8_t>> names;
  for (int i = 0; i < 64; ++i) {
    const int zone = (i * 7919) % zones;
    names.push_back(Wire(zone % 2 == 0 ? "Db1.Eu.Team" + std::to_string(zone) + ".Internal"
                                       : "Db1.Svc.Team" + std::to_string(zone) + ".Corp.Example"));
  }
  size_t i = 0;
  for (auto _ : state) {
    uint32_t group = table.Find(names[i++ & 63]);
    benchmark::DoNotOptimize(group);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ZoneTable_FindInZone)->Arg(1)->Arg(100)->Arg(10000);

// A public name no zone covers (the common case: it goes to the default zone).
void BM_ZoneTable_FindOutside(benchmark::State& state) {
  const ZoneTable table = MakeTable(static_cast<int>(state.range(0)));
  const std::vector<uint8_t> name = Wire("www.static.example.com");
  for (auto _ : state) {
    uint32_t group = table.Find(name);
    benchmark::DoNotOptimize(group);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ZoneTable_FindOutside)->Arg(0)->Arg(1)->Arg(100)->Arg(10000);

}  // namespace
}  // namespace dotproxy::upstream

BENCHMARK_MAIN();
