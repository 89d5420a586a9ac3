// The rate limiter's cost per query, to compare with serving a cache hit
// (bench/cache/packet_cache_benchmark.cc): one client under
// its limit, many clients (a fresh-ish prefix each time: table probes and
// evictions), and a client over its limit.

#include <arpa/inet.h>
#include <netinet/in.h>

#include <benchmark/benchmark.h>

#include <vector>

#include "dotproxy/frontend/rate_limiter.h"

namespace dotproxy::frontend {
namespace {

sockaddr_in V4(uint32_t address) {
  sockaddr_in v4{};
  v4.sin_family = AF_INET;
  v4.sin_addr.s_addr = htonl(address);
  return v4;
}

RateLimitSettings Settings(uint32_t qps) {
  RateLimitSettings settings;
  settings.qps = qps;
  settings.burst = qps;
  return settings;
}

void BM_OneClientUnderItsLimit(benchmark::State& state) {
  RateLimiter limiter(Settings(1'000'000'000), nullptr);
  const sockaddr_in source = V4(0xc0000201);
  int64_t now = 1'000'000'000;
  for (auto _ : state) {
    benchmark::DoNotOptimize(limiter.Check(reinterpret_cast<const sockaddr*>(&source), now));
    now += 1000;
  }
}
BENCHMARK(BM_OneClientUnderItsLimit);

void BM_ManyClients(benchmark::State& state) {
  RateLimiter limiter(Settings(100), nullptr);
  std::vector<sockaddr_in> sources;
  for (uint32_t i = 0; i < static_cast<uint32_t>(state.range(0)); ++i) {
    sources.push_back(V4(0x0a000001 + (i << 8)));  // one /24 each
  }
  int64_t now = 1'000'000'000;
  size_t next = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        limiter.Check(reinterpret_cast<const sockaddr*>(&sources[next]), now));
    next = next + 1 == sources.size() ? 0 : next + 1;
    now += 1000;
  }
}
BENCHMARK(BM_ManyClients)->Arg(1000)->Arg(60000)->Arg(1000000);

void BM_OneClientOverItsLimit(benchmark::State& state) {
  RateLimiter limiter(Settings(10), nullptr);
  const sockaddr_in source = V4(0xc0000201);
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        limiter.Check(reinterpret_cast<const sockaddr*>(&source), 1'000'000'000));
  }
}
BENCHMARK(BM_OneClientOverItsLimit);

}  // namespace
}  // namespace dotproxy::frontend

BENCHMARK_MAIN();
