// Micro-benchmarks for dns::BuildUpstreamQuery / RewriteAnswerOpt
// (include/dotproxy/dns/edns.h): the copy + EDNS rewrite (keepalive, padding to
// 128 bytes) of every query going upstream, and the OPT clean-up of its answer.

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "bench/common/wire.h"
#include "dotproxy/dns/edns.h"
#include "dotproxy/dns/message.h"

namespace dotproxy::dns {
namespace {

struct Parsed {
  std::vector<uint8_t> wire;
  QueryInfo info;
};

std::vector<Parsed> ParsedQueries(bool edns) {
  std::vector<Parsed> out;
  uint16_t id = 1;
  for (const std::string& name : bench::MakeNames(1024)) {
    Parsed p{bench::MakeQuery(name, id++, edns), {}};
    if (ParseQuery(p.wire, p.info) != QueryParse::kOk) std::abort();
    out.push_back(std::move(p));
  }
  return out;
}

void BuildQueries(benchmark::State& state, bool edns, const UpstreamQueryOptions& options) {
  const std::vector<Parsed> queries = ParsedQueries(edns);
  uint8_t out[512 + kUpstreamQueryGrowth];
  size_t i = 0;
  for (auto _ : state) {
    const Parsed& q = queries[i++ & 1023];
    size_t n = BuildUpstreamQuery(q.wire, q.info, options, out);
    benchmark::DoNotOptimize(n);
    benchmark::DoNotOptimize(out);
  }
  state.SetItemsProcessed(state.iterations());
}

// Client sent an OPT: copy it, add keepalive, pad to 128 (the default options).
void BM_BuildUpstreamQuery_ClientEdns(benchmark::State& state) {
  BuildQueries(state, true, UpstreamQueryOptions{});
}
BENCHMARK(BM_BuildUpstreamQuery_ClientEdns);

// Client sent no OPT: one is added.
void BM_BuildUpstreamQuery_NoClientEdns(benchmark::State& state) {
  BuildQueries(state, false, UpstreamQueryOptions{});
}
BENCHMARK(BM_BuildUpstreamQuery_NoClientEdns);

// Padding and keepalive off: the bare copy-and-rewrite cost.
void BM_BuildUpstreamQuery_NoPadding(benchmark::State& state) {
  UpstreamQueryOptions options;
  options.pad = false;
  options.request_keepalive = false;
  BuildQueries(state, true, options);
}
BENCHMARK(BM_BuildUpstreamQuery_NoPadding);

// Answer OPT rewritten for a client that sent EDNS (in place; each iteration
// rewrites a fresh copy, the copy is part of what is measured).
void BM_RewriteAnswerOpt_ClientEdns(benchmark::State& state) {
  const std::vector<uint8_t> answer = bench::MakeAnswer("q1.bench.test", 1, true);
  std::vector<uint8_t> work(answer.size());
  for (auto _ : state) {
    std::memcpy(work.data(), answer.data(), answer.size());
    int keepalive = -1;
    size_t n = RewriteAnswerOpt(work, answer.size(), true, &keepalive);
    benchmark::DoNotOptimize(n);
    benchmark::DoNotOptimize(keepalive);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RewriteAnswerOpt_ClientEdns);

}  // namespace
}  // namespace dotproxy::dns

BENCHMARK_MAIN();
