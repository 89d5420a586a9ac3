// Micro-benchmarks for policy::Tables (include/dotproxy/policy/tables.h):
// building a one-million-entry blocklist (load time, table bytes, RSS
// growth), the per-query lookup (miss, exact hit, subtree hit, allowlisted)
// and a whole blocked answer, next to the packet cache's hit path on the
// same machine in the same run (BM_Reference_*), which a lookup must cost
// well under.

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench/common/wire.h"
#include "dotproxy/cache/packet_cache.h"
#include "dotproxy/dns/message.h"
#include "dotproxy/policy/tables.h"

namespace dotproxy::policy {
namespace {

constexpr size_t kEntries = 1000000;

// On a shared machine the mean carries other processes' time: every
// benchmark also reports its fastest repetition
// (--benchmark_repetitions=N --benchmark_report_aggregates_only=true).
double Fastest(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

// Entry i: "d<i>.blk<i % 977>.test"; every tenth a subtree ("*.").
std::string EntryName(size_t i) {
  return "d" + std::to_string(i) + ".blk" + std::to_string(i % 977) + ".test";
}

std::string WriteList(size_t entries) {
  const std::string path = "/tmp/dotproxy_policy_bench_" + std::to_string(::getpid()) + ".list";
  std::ofstream out(path);
  out << "# synthetic list\n";
  for (size_t i = 0; i < entries; ++i) out << (i % 10 == 0 ? "*." : "") << EntryName(i) << "\n";
  return path;
}

size_t RssBytes() {
  long pages = 0, resident = 0;
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
  std::fclose(f);
  return static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

const Tables& MillionTables() {
  static std::shared_ptr<const Tables> tables = [] {
    const std::string path = WriteList(kEntries);
    Sources sources;
    sources.blocklists.push_back({"bench", path, "nxdomain", 60, "bench"});
    const std::string allow = path + ".allow";
    std::ofstream(allow) << EntryName(20) << "\n";
    sources.allowlist.push_back(allow);
    auto built = Tables::Build(sources);
    std::remove(path.c_str());
    std::remove(allow.c_str());
    if (!built.ok()) std::abort();
    return *built;
  }();
  return *tables;
}

struct Query {
  std::vector<uint8_t> wire;
  dns::QueryInfo info;
  std::span<const uint8_t> qname() const { return {wire.data() + 12, info.qname_length}; }
};

std::vector<Query> MakeQueries(size_t count, const std::function<std::string(size_t)>& name) {
  std::vector<Query> queries(count);
  for (size_t i = 0; i < count; ++i) {
    queries[i].wire = bench::MakeQuery(name(i), static_cast<uint16_t>(i), true);
    if (dns::ParseQuery(queries[i].wire, queries[i].info) != dns::QueryParse::kOk) std::abort();
  }
  return queries;
}

// Load time and memory of 1M entries: one build per iteration.
void BM_Policy_Build1M(benchmark::State& state) {
  const std::string path = WriteList(kEntries);
  Sources sources;
  sources.blocklists.push_back({"build", path, "nxdomain", 60, "bench"});
  for (auto _ : state) {
    const size_t before = RssBytes();
    const auto start = std::chrono::steady_clock::now();
    auto built = Tables::Build(sources);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!built.ok()) state.SkipWithError("build failed");
    state.counters["load_s"] = seconds;
    state.counters["rss_delta_MiB"] = static_cast<double>(RssBytes() - before) / 1048576.0;
    state.counters["table_MiB"] = static_cast<double>((*built)->MemoryBytes()) / 1048576.0;
    state.counters["bytes_per_entry"] =
        static_cast<double>((*built)->MemoryBytes()) / static_cast<double>(kEntries);
  }
  std::remove(path.c_str());
}
BENCHMARK(BM_Policy_Build1M)->Iterations(1)->Unit(benchmark::kMillisecond);

// The common case: a name in no list (three label suffixes hashed).
void BM_Policy_LookupMiss(benchmark::State& state) {
  const Tables& tables = MillionTables();
  const auto queries = MakeQueries(4096, [](size_t i) { return "www.site" + std::to_string(i) + ".example"; });
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(tables.Lookup(queries[i].qname()));
    if (++i == queries.size()) i = 0;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Policy_LookupMiss)->ComputeStatistics("min", Fastest);

void BM_Policy_LookupExactHit(benchmark::State& state) {
  const Tables& tables = MillionTables();
  const auto queries = MakeQueries(4096, [](size_t i) { return EntryName(i * 241 % kEntries | 1); });
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(tables.Lookup(queries[i].qname()));
    if (++i == queries.size()) i = 0;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Policy_LookupExactHit)->ComputeStatistics("min", Fastest);

// Two labels below a subtree entry: the longest suffixes miss first.
void BM_Policy_LookupSubtreeHit(benchmark::State& state) {
  const Tables& tables = MillionTables();
  const auto queries =
      MakeQueries(4096, [](size_t i) { return "a.b." + EntryName((i * 2410) % kEntries / 10 * 10); });
  size_t i = 0;
  for (auto _ : state) {
    const Decision d = tables.Lookup(queries[i].qname());
    if (d.action == Action::kNone) state.SkipWithError("not blocked");
    benchmark::DoNotOptimize(d);
    if (++i == queries.size()) i = 0;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Policy_LookupSubtreeHit)->ComputeStatistics("min", Fastest);

// A blocked name's whole answer: lookup and NXDOMAIN + SOA + OPT written.
void BM_Policy_BlockedAnswer(benchmark::State& state) {
  const Tables& tables = MillionTables();
  const auto queries = MakeQueries(4096, [](size_t i) { return EntryName(i * 241 % kEntries | 1); });
  uint8_t out[kMaxPolicyReply];
  size_t i = 0;
  for (auto _ : state) {
    const Query& q = queries[i];
    const Decision d = tables.Lookup(q.qname());
    benchmark::DoNotOptimize(tables.WriteReply(d, q.wire, q.info, 1232, 1232, out));
    benchmark::DoNotOptimize(out);
    if (++i == queries.size()) i = 0;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Policy_BlockedAnswer)->ComputeStatistics("min", Fastest);

// Reference, same run: the packet cache's Find hit and its whole hit path
// (parse, key, find, serve) for 50000 cached names, as in bench/cache/.
std::unique_ptr<cache::PacketCache> FilledCache(const std::vector<std::string>& names) {
  cache::CacheConfig config;
  config.entries = 100000;
  auto made = cache::PacketCache::Create(config);
  if (!made.ok()) std::abort();
  auto cache = *std::move(made);
  for (size_t i = 0; i < names.size(); ++i) {
    const auto query = bench::MakeQuery(names[i], static_cast<uint16_t>(i), true);
    dns::QueryInfo info;
    if (dns::ParseQuery(query, info) != dns::QueryParse::kOk) std::abort();
    cache::CacheKey key;
    cache::MakeKey(query.data(), info.question_length, info.has_edns, info.dnssec_ok, key);
    const auto answer = bench::MakeAnswer(names[i], static_cast<uint16_t>(i), true);
    cache->Insert(key, answer, 1000);
  }
  return cache;
}

void BM_Reference_CacheHitPath(benchmark::State& state) {
  const auto names = bench::MakeNames(50000);
  auto cache = FilledCache(names);
  std::vector<std::vector<uint8_t>> queries;
  for (size_t i = 0; i < 4096; ++i) queries.push_back(bench::MakeQuery(names[i * 7], 1, true));
  uint8_t out[1232];
  size_t i = 0;
  for (auto _ : state) {
    const auto& wire = queries[i];
    if (++i == queries.size()) i = 0;
    dns::QueryInfo info;
    if (dns::ParseQuery(wire, info) != dns::QueryParse::kOk) state.SkipWithError("parse");
    cache::CacheKey key;
    cache::MakeKey(wire.data(), info.question_length, info.has_edns, info.dnssec_ok, key);
    const cache::Found found = cache->Find(key, 1005);
    size_t length = 0;
    if (found.freshness == cache::Freshness::kFresh) {
      length = cache->Serve(found.entry, out, info.id, key.question, info.udp_response_limit, 1005, false);
    }
    benchmark::DoNotOptimize(length);
    benchmark::DoNotOptimize(out);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Reference_CacheHitPath)->ComputeStatistics("min", Fastest);

void BM_Reference_CacheFindHit(benchmark::State& state) {
  const auto names = bench::MakeNames(50000);
  auto cache = FilledCache(names);
  std::vector<cache::CacheKey> keys(4096);
  std::vector<std::vector<uint8_t>> wires(keys.size());  // the keys borrow their question
  for (size_t i = 0; i < keys.size(); ++i) {
    wires[i] = bench::MakeQuery(names[i * 7], 1, true);
    dns::QueryInfo info;
    if (dns::ParseQuery(wires[i], info) != dns::QueryParse::kOk) std::abort();
    cache::MakeKey(wires[i].data(), info.question_length, info.has_edns, info.dnssec_ok, keys[i]);
  }
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(cache->Find(keys[i], 1005));
    if (++i == keys.size()) i = 0;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Reference_CacheFindHit)->ComputeStatistics("min", Fastest);

}  // namespace
}  // namespace dotproxy::policy

BENCHMARK_MAIN();
