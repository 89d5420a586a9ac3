#pragma once
// Text forms of the shards' counters for the SIGUSR1 and exit reports: one
// line of totals, one line per upstream. Control thread only; allocates.
// Generated from the counter lists in stats.h, so a new counter appears
// here without further code.

#include <span>
#include <string>
#include <string_view>

#include "dotproxy/metrics/stats.h"

namespace dotproxy::metrics {

// What one shard publishes: its counters and one UpstreamStats per upstream.
struct ShardCounters {
  const ShardStats* shard = nullptr;
  const UpstreamStats* upstreams = nullptr;
};

// "counters: udp_queries=12 forwarded=3 ..." (non-zero totals only).
std::string FormatTotals(std::span<const ShardCounters> shards);

// "upstream NAME: queries=.. answers=.. healthy_shards=2/2 latency_ms=1.20":
// counters summed over shards, health as a count of shards that consider it
// healthy, latency as the worst shard's EWMA.
std::string FormatUpstream(std::string_view name, size_t upstream,
                           std::span<const ShardCounters> shards);

}  // namespace dotproxy::metrics
