#include "dotproxy/metrics/stats_format.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace dotproxy::metrics {
namespace {
uint64_t Load(const std::atomic<uint64_t>& counter) {
  return counter.load(std::memory_order_relaxed);
}
}  // namespace

std::string FormatTotals(std::span<const ShardCounters> shards) {
  std::string line = "counters:";
#define DOTPROXY_SUM_COUNTER(name, help)                                \
  {                                                                     \
    uint64_t total = 0;                                                 \
    for (const ShardCounters& s : shards) total += Load(s.shard->name); \
    if (total > 0) absl::StrAppend(&line, " ", #name, "=", total);     \
  }
  DOTPROXY_SHARD_COUNTERS(DOTPROXY_SUM_COUNTER)
#undef DOTPROXY_SUM_COUNTER
  return line;
}

std::string FormatUpstream(std::string_view name, size_t upstream,
                           std::span<const ShardCounters> shards) {
  std::string line = absl::StrCat("upstream ", absl::string_view(name.data(), name.size()), ":");
  // healthy and latency_us are per-shard gauges: reported below, not summed.
  const std::string_view kHealthy = "healthy";
  const std::string_view kLatency = "latency_us";
#define DOTPROXY_SUM_UPSTREAM(name, help)                                                   \
  if (#name != kHealthy && #name != kLatency) {                                             \
    uint64_t total = 0;                                                                     \
    for (const ShardCounters& s : shards) total += Load(s.upstreams[upstream].name);        \
    absl::StrAppend(&line, " ", #name, "=", total);                                         \
  }
  DOTPROXY_UPSTREAM_COUNTERS(DOTPROXY_SUM_UPSTREAM)
#undef DOTPROXY_SUM_UPSTREAM
  uint64_t healthy_shards = 0;
  uint64_t latency_max = 0;
  for (const ShardCounters& s : shards) {
    healthy_shards += Load(s.upstreams[upstream].healthy);
    latency_max = std::max(latency_max, Load(s.upstreams[upstream].latency_us));
  }
  absl::StrAppend(&line, " healthy_shards=", healthy_shards, "/", shards.size(),
                  " latency_ms=", absl::StrFormat("%.2f", latency_max / 1000.0));
  return line;
}

}  // namespace dotproxy::metrics
