// Micro-benchmarks for upstream::IdTable (include/dotproxy/upstream/id_table.h):
// binding a random free upstream ID to a query slot when a query goes out,
// looking it up when the answer comes back, and freeing it.

#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "dotproxy/upstream/id_table.h"

namespace dotproxy::upstream {
namespace {

// Insert + Lookup + Erase of one query while `range(0)` others are in flight
// (a connection's steady state: 32 = Unbound's stream cap, 500 = dnsperf -q).
void BM_IdTable_InsertLookupErase(benchmark::State& state) {
  const uint32_t in_flight = static_cast<uint32_t>(state.range(0));
  IdTable table;
  FastRng rng;
  for (uint32_t slot = 0; slot < in_flight; ++slot) {
    uint16_t id = 0;
    if (!table.Insert(slot, rng, id)) state.SkipWithError("insert failed");
  }
  uint32_t slot = in_flight;
  for (auto _ : state) {
    uint16_t id = 0;
    bool ok = table.Insert(slot, rng, id);
    uint32_t found = table.Lookup(id);
    table.Erase(id);
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(found);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_IdTable_InsertLookupErase)->Arg(32)->Arg(500)->Arg(30000);

// Only the lookup (answer routing), over IDs bound in a table of 500.
void BM_IdTable_Lookup(benchmark::State& state) {
  IdTable table;
  FastRng rng;
  std::vector<uint16_t> ids(512);
  for (uint32_t slot = 0; slot < 512; ++slot) table.Insert(slot, rng, ids[slot]);
  size_t i = 0;
  for (auto _ : state) {
    uint32_t found = table.Lookup(ids[i++ & 511]);
    benchmark::DoNotOptimize(found);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_IdTable_Lookup);

// The random ID source alone (xoshiro128**).
void BM_FastRng_Next(benchmark::State& state) {
  FastRng rng;
  for (auto _ : state) {
    uint32_t v = rng.Next();
    benchmark::DoNotOptimize(v);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_FastRng_Next);

}  // namespace
}  // namespace dotproxy::upstream

BENCHMARK_MAIN();
