// Micro-benchmarks for cache::PacketCache (include/dotproxy/cache/packet_cache.h):
// key construction, hit and miss lookups, serving a hit (copy the stored answer,
// patch ID, question case and TTLs) and inserting answers, on a cache sized like
// the load benchmark's (--cache-size 100000, one shard).

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "bench/common/wire.h"
#include "dotproxy/cache/packet_cache.h"
#include "dotproxy/dns/message.h"

namespace dotproxy::cache {
namespace {

constexpr size_t kEntries = 100000;
constexpr uint32_t kNow = 1000;

struct Query {
  std::string name;
  std::vector<uint8_t> wire;
  dns::QueryInfo info;
  CacheKey key;
};

// `count` parsed EDNS queries for distinct names, each with its key. `prefix`
// keeps the hit and miss sets disjoint.
std::vector<Query> MakeQueries(size_t count, std::string_view prefix) {
  std::vector<Query> out(count);
  const std::vector<std::string> names = bench::MakeNames(count, prefix);
  for (size_t i = 0; i < count; ++i) {
    out[i].name = names[i];
    out[i].wire = bench::MakeQuery(names[i], static_cast<uint16_t>(i), true);
    if (dns::ParseQuery(out[i].wire, out[i].info) != dns::QueryParse::kOk) std::abort();
    MakeKey(out[i].wire.data(), out[i].info.question_length, out[i].info.has_edns,
            out[i].info.dnssec_ok, out[i].key);
  }
  return out;
}

std::unique_ptr<PacketCache> FilledCache(const std::vector<Query>& queries) {
  CacheConfig config;
  config.entries = kEntries;
  auto cache = std::make_unique<PacketCache>(config);
  for (const Query& q : queries) {
    const std::vector<uint8_t> answer = bench::MakeAnswer(q.name, q.info.id, true);
    if (!cache->Insert(q.key, answer, kNow)) std::abort();
  }
  return cache;
}

// Hash of the lower-cased question + flags.
void BM_PacketCache_MakeKey(benchmark::State& state) {
  const std::vector<Query> queries = MakeQueries(1024, "q");
  size_t i = 0;
  for (auto _ : state) {
    const Query& q = queries[i++ & 1023];
    CacheKey key;
    MakeKey(q.wire.data(), q.info.question_length, q.info.has_edns, q.info.dnssec_ok, key);
    benchmark::DoNotOptimize(key);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PacketCache_MakeKey);

// Find on a cache holding `range(0)` entries, every lookup a hit (100 = the load
// benchmark's cache-hit name set; 50000 = a working set well beyond the CPU caches).
void BM_PacketCache_FindHit(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const std::vector<Query> queries = MakeQueries(n, "q");
  auto cache = FilledCache(queries);
  size_t i = 0;
  for (auto _ : state) {
    Found found = cache->Find(queries[i].key, kNow + 1);
    if (++i == n) i = 0;
    benchmark::DoNotOptimize(found);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PacketCache_FindHit)->Arg(100)->Arg(50000);

// Find of names that are not cached (the miss path's extra cost), cache half full.
void BM_PacketCache_FindMiss(benchmark::State& state) {
  const std::vector<Query> cached = MakeQueries(50000, "q");
  const std::vector<Query> absent = MakeQueries(1024, "miss");
  auto cache = FilledCache(cached);
  size_t i = 0;
  for (auto _ : state) {
    Found found = cache->Find(absent[i++ & 1023].key, kNow + 1);
    benchmark::DoNotOptimize(found);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PacketCache_FindMiss);

// Serve a found entry: copy, patch ID + question + TTL.
void BM_PacketCache_Serve(benchmark::State& state) {
  const std::vector<Query> queries = MakeQueries(100, "q");
  auto cache = FilledCache(queries);
  std::vector<uint32_t> entries;
  for (const Query& q : queries) entries.push_back(cache->Find(q.key, kNow).entry);
  uint8_t out[1232];
  size_t i = 0;
  for (auto _ : state) {
    const Query& q = queries[i];
    size_t len = cache->Serve(entries[i], out, q.info.id, q.key.question, 1232, kNow + 5, false);
    if (++i == queries.size()) i = 0;
    benchmark::DoNotOptimize(len);
    benchmark::DoNotOptimize(out);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PacketCache_Serve);

// The whole per-query cache-hit path after receive: parse, key, find, serve.
void BM_PacketCache_HitPath(benchmark::State& state) {
  const std::vector<Query> queries = MakeQueries(100, "q");
  auto cache = FilledCache(queries);
  uint8_t out[1232];
  size_t i = 0;
  for (auto _ : state) {
    const Query& q = queries[i];
    if (++i == queries.size()) i = 0;
    dns::QueryInfo info;
    if (dns::ParseQuery(q.wire, info) != dns::QueryParse::kOk) state.SkipWithError("parse");
    CacheKey key;
    MakeKey(q.wire.data(), info.question_length, info.has_edns, info.dnssec_ok, key);
    const Found found = cache->Find(key, kNow + 5);
    size_t len = 0;
    if (found.freshness == Freshness::kFresh) {
      len = cache->Serve(found.entry, out, info.id, key.question, info.udp_response_limit,
                         kNow + 5, false);
    }
    benchmark::DoNotOptimize(len);
    benchmark::DoNotOptimize(out);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PacketCache_HitPath);

// Insert answers into a full cache (every insert evicts via CLOCK): the miss
// path's cost when the upstream's answer comes back.
void BM_PacketCache_InsertEvicting(benchmark::State& state) {
  CacheConfig config;
  config.entries = 1024;
  PacketCache cache(config);
  const std::vector<Query> queries = MakeQueries(4096, "ins");
  std::vector<std::vector<uint8_t>> answers;
  const std::vector<std::string> names = bench::MakeNames(4096, "ins");
  for (size_t i = 0; i < names.size(); ++i) {
    answers.push_back(bench::MakeAnswer(names[i], static_cast<uint16_t>(i), true));
  }
  size_t i = 0;
  for (auto _ : state) {
    bool ok = cache.Insert(queries[i].key, answers[i], kNow);
    i = (i + 1) & 4095;
    benchmark::DoNotOptimize(ok);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PacketCache_InsertEvicting);

}  // namespace
}  // namespace dotproxy::cache

BENCHMARK_MAIN();
