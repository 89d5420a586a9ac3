// Micro-benchmarks for dns::ParseQuery / ParseResponse (include/dotproxy/dns/message.h):
// the validation every client query and every upstream answer goes through.
// Run: meson test -C BUILD --benchmark dns_message_benchmark --verbose

#include <benchmark/benchmark.h>

#include <cstdint>
#include <span>
#include <vector>

#include "bench/common/wire.h"
#include "dotproxy/dns/message.h"

namespace dotproxy::dns {
namespace {

// 1024 different queries, cycled, so the loop does not parse one hot buffer
// whose branches the CPU has memorised.
std::vector<std::vector<uint8_t>> MakeQueries(bool edns, std::string_view prefix = "q") {
  std::vector<std::vector<uint8_t>> queries;
  uint16_t id = 1;
  for (const std::string& name : bench::MakeNames(1024, prefix)) {
    queries.push_back(bench::MakeQuery(name, id++, edns));
  }
  return queries;
}

void ParseQueries(benchmark::State& state, const std::vector<std::vector<uint8_t>>& queries) {
  size_t i = 0;
  size_t bytes = 0;
  for (auto _ : state) {
    const std::vector<uint8_t>& q = queries[i++ & 1023];
    QueryInfo info;
    QueryParse result = ParseQuery(q, info);
    benchmark::DoNotOptimize(result);
    benchmark::DoNotOptimize(info);
    bytes += q.size();
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}

// Plain query without EDNS (dig +noedns, old stubs).
void BM_ParseQuery_PlainA(benchmark::State& state) { ParseQueries(state, MakeQueries(false)); }
BENCHMARK(BM_ParseQuery_PlainA);

// Query with an OPT RR (dnsperf, most modern stubs): also walks the additional section.
void BM_ParseQuery_Edns(benchmark::State& state) { ParseQueries(state, MakeQueries(true)); }
BENCHMARK(BM_ParseQuery_Edns);

// A long QNAME (8 labels, ~100 bytes): the cost of the label walk.
void BM_ParseQuery_LongName(benchmark::State& state) {
  ParseQueries(state,
               MakeQueries(true, "abcdefghij.klmnopqrst.uvwxyzabcd.efghijklmn.opqrstuvwx.yzabcdefgh.q"));
}
BENCHMARK(BM_ParseQuery_LongName);

// A reflected response (QR=1) arriving on the client port: must be dropped cheaply.
void BM_ParseQuery_DropResponse(benchmark::State& state) {
  auto queries = MakeQueries(true);
  for (auto& q : queries) q[2] |= 0x80;
  ParseQueries(state, queries);
}
BENCHMARK(BM_ParseQuery_DropResponse);

// Upstream answer (one A record + OPT): the check before routing it back by ID.
void BM_ParseResponse_AnswerA(benchmark::State& state) {
  std::vector<std::vector<uint8_t>> answers;
  uint16_t id = 1;
  for (const std::string& name : bench::MakeNames(1024)) {
    answers.push_back(bench::MakeAnswer(name, id++, true));
  }
  size_t i = 0;
  for (auto _ : state) {
    ResponseInfo info;
    bool ok = ParseResponse(answers[i++ & 1023], info);
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(info);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ParseResponse_AnswerA);

}  // namespace
}  // namespace dotproxy::dns

BENCHMARK_MAIN();
