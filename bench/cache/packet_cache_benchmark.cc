// Micro-benchmarks for cache::PacketCache (include/dotproxy/cache/packet_cache.h):
// key construction, hit and miss lookups, serving a hit (copy the stored answer,
// patch ID, question case and TTLs) and inserting answers, on a cache sized like
// the load benchmark's (--cache-size 100000, one shard).

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <utility>
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

// Parsed EDNS queries for `names`, each with its key.
std::vector<Query> MakeQueries(const std::vector<std::string>& names) {
  const size_t count = names.size();
  std::vector<Query> out(count);
  for (size_t i = 0; i < count; ++i) {
    out[i].name = names[i];
    out[i].wire = bench::MakeQuery(names[i], static_cast<uint16_t>(i), true);
    if (dns::ParseQuery(out[i].wire, out[i].info) != dns::QueryParse::kOk) std::abort();
    MakeKey(out[i].wire.data(), out[i].info.question_length, out[i].info.has_edns,
            out[i].info.dnssec_ok, out[i].key);
  }
  return out;
}

// `count` parsed EDNS queries for distinct names, each with its key. `prefix`
// keeps the hit and miss sets disjoint.
std::vector<Query> MakeQueries(size_t count, std::string_view prefix) {
  return MakeQueries(bench::MakeNames(count, prefix));
}

std::unique_ptr<PacketCache> NewCache(size_t entries) {
  CacheConfig config;
  config.entries = entries;
  absl::StatusOr<std::unique_ptr<PacketCache>> cache = PacketCache::Create(config);
  if (!cache.ok()) std::abort();
  return *std::move(cache);
}

std::unique_ptr<PacketCache> FilledCache(const std::vector<Query>& queries) {
  std::unique_ptr<PacketCache> cache = NewCache(kEntries);
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

// The index hash before the keyed one: unseeded FNV-1a over the lower-cased
// QNAME, QTYPE, QCLASS and key flags (packet_cache.cc at 3225d6c). Anyone can
// compute it offline, so anyone can pick names that share one index.
uint64_t OldUnkeyedHash(std::span<const uint8_t> question, uint8_t flags) {
  uint64_t h = 0xcbf29ce484222325ull;
  const size_t name_length = question.size() - 4;
  for (size_t i = 0; i < question.size(); ++i) {
    uint8_t c = question[i];
    if (i < name_length && c >= 'A' && c <= 'Z') c += 32;
    h = (h ^ c) * 0x100000001b3ull;
  }
  h = (h ^ flags) * 0x100000001b3ull;
  return h ^ (h >> 29);
}

// Names whose old index (hash & table mask, table as sized for kEntries)
// falls in one narrow window of cells: under linear probing they pile up
// into one cluster as long as the number of names, whatever the window's
// exact start. A window rather than one cell keeps the brute force in setup
// to ~1000 hashes per name instead of ~260000.
std::vector<std::string> NamesCollidingUnderOldHash(size_t count) {
  size_t table_size = 16;
  while (table_size < kEntries * 2) table_size <<= 1;
  constexpr uint64_t kWindowStart = 0x1234;
  constexpr uint64_t kWindow = 256;
  constexpr uint8_t kFlags = kKeyRd | kKeyEdns;  // what bench::MakeQuery sends
  std::vector<std::string> names;
  for (uint64_t i = 0; names.size() < count; ++i) {
    std::string name = "c" + std::to_string(i) + ".bench.test";
    std::vector<uint8_t> question;
    bench::PutName(question, name);
    bench::PutU16(question, 1);  // A
    bench::PutU16(question, 1);  // IN
    const uint64_t cell = OldUnkeyedHash(question, kFlags) & (table_size - 1);
    if (cell - kWindowStart < kWindow) names.push_back(std::move(name));
  }
  return names;
}

constexpr size_t kHostileNames = 4096;

// A hit in a cache holding `queries`, cycling through all of them.
void HitAfter(benchmark::State& state, const std::vector<Query>& queries) {
  auto cache = FilledCache(queries);
  size_t i = 0;
  for (auto _ : state) {
    Found found = cache->Find(queries[i].key, kNow + 1);
    if (found.freshness != Freshness::kFresh) state.SkipWithError("miss");
    if (++i == queries.size()) i = 0;
    benchmark::DoNotOptimize(found);
  }
  state.SetItemsProcessed(state.iterations());
}

// Hash flooding: a client fills the cache with names chosen offline to share
// one index under the old unkeyed hash; every later hit on them walks the
// cluster. With a keyed hash they scatter like any names, so this and
// BM_PacketCache_HitAfterRandomNames should be level.
void BM_PacketCache_HitAfterCollidingNames(benchmark::State& state) {
  HitAfter(state, MakeQueries(NamesCollidingUnderOldHash(kHostileNames)));
}
BENCHMARK(BM_PacketCache_HitAfterCollidingNames);

// The same with as many ordinary names: the baseline for the one above.
void BM_PacketCache_HitAfterRandomNames(benchmark::State& state) {
  HitAfter(state, MakeQueries(kHostileNames, "r"));
}
BENCHMARK(BM_PacketCache_HitAfterRandomNames);

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
  std::unique_ptr<PacketCache> cache = NewCache(1024);
  const std::vector<Query> queries = MakeQueries(4096, "ins");
  std::vector<std::vector<uint8_t>> answers;
  const std::vector<std::string> names = bench::MakeNames(4096, "ins");
  for (size_t i = 0; i < names.size(); ++i) {
    answers.push_back(bench::MakeAnswer(names[i], static_cast<uint16_t>(i), true));
  }
  size_t i = 0;
  for (auto _ : state) {
    bool ok = cache->Insert(queries[i].key, answers[i], kNow);
    i = (i + 1) & 4095;
    benchmark::DoNotOptimize(ok);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PacketCache_InsertEvicting);

}  // namespace
}  // namespace dotproxy::cache

BENCHMARK_MAIN();
