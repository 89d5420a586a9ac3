// What dnstap costs a shard (Tap::Log: the copy into its ring) and the
// writer thread (EncodeEvent: one protobuf frame), for a 60-byte query
// from an IPv4 client.

#include <arpa/inet.h>
#include <benchmark/benchmark.h>

#include <vector>

#include "dotproxy/dnstap/encode.h"
#include "dotproxy/dnstap/tap.h"
#include "dotproxy/dnstap/writer.h"

namespace dotproxy::dnstap {
namespace {

EventHeader ClientQuery() {
  sockaddr_in client{};
  client.sin_family = AF_INET;
  client.sin_port = htons(40000);
  client.sin_addr.s_addr = htonl(0x7f000001);
  EventHeader header;
  header.type = MessageType::kClientQuery;
  header.query_address = EventAddress::From(reinterpret_cast<sockaddr*>(&client));
  header.response_address = header.query_address;
  header.query_time_ns = 123456789;
  return header;
}

// The shard's side; the ring is emptied every 1000 events (outside the
// measured copy's hot loop only by amortization, like a writer keeping up).
void BM_Tap_LogClientQuery(benchmark::State& state) {
  Tap tap(kRingBytesPerShard);
  std::atomic<uint64_t> dropped{0};
  tap.set_counters({.dropped = &dropped});
  const std::vector<uint8_t> wire(60, 0x11);
  const EventHeader header = ClientQuery();
  size_t n = 0;
  for (auto _ : state) {
    tap.Log(header, wire);
    if (++n % 1000 == 0) {
      while (!tap.ring().Peek().empty()) tap.ring().Pop();
    }
  }
  benchmark::DoNotOptimize(dropped.load());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Tap_LogClientQuery);

// The writer's side: one Dnstap frame.
void BM_EncodeEvent_ClientQuery(benchmark::State& state) {
  const std::vector<uint8_t> wire(60, 0x11);
  const EventHeader header = ClientQuery();
  std::vector<uint8_t> out;
  out.reserve(4096);
  for (auto _ : state) {
    out.clear();
    benchmark::DoNotOptimize(EncodeEvent(header, wire, "resolver-1", "dotproxy 0.1.0", 0, out));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EncodeEvent_ClientQuery);

}  // namespace
}  // namespace dotproxy::dnstap

BENCHMARK_MAIN();
