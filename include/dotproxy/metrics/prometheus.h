#pragma once
// The shards' counters as Prometheus metrics, and the /health and /ready
// verdicts. Control thread (or the HTTP server's threads) only: Collect()
// reads the shards' relaxed single-writer atomics at scrape time and
// allocates; the query path never touches prometheus-cpp.
//
// Names come from the lists in stats.h, so a new counter is exported
// without further code:
//   shard row udp_queries        -> dotproxy_udp_queries_total
//   shard row cache_entries      -> dotproxy_cache_entries (gauge)
//   upstream row answers         -> dotproxy_upstream_answers_total{upstream="SPEC"}
//   upstream row healthy         -> dotproxy_upstream_healthy{upstream} (shards that
//                                   see it healthy, out of dotproxy_shards)
//   upstream row latency_us      -> dotproxy_upstream_latency_seconds{upstream} (worst shard)
// plus dotproxy_shards, dotproxy_build_info{version} 1, and two histograms:
//   dotproxy_query_duration_seconds{transport=udp|tcp,source=cache|upstream|stale|local}
//   dotproxy_upstream_response_duration_seconds{upstream}
//
//   auto collector = std::make_shared<ShardCollector>(views, specs, "0.1.0");
//   exposer.RegisterCollectable(collector);

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>


#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "dotproxy/metrics/stats_format.h"

namespace dotproxy::metrics {

class ShardCollector : public prometheus::Collectable {
 public:
  // Borrows the shards' stats: they must outlive the collector's last
  // Collect(). `upstream_specs[u]` labels slot u of every shard's
  // UpstreamStats; all are configured until SetUpstreams().
  ShardCollector(std::vector<ShardCounters> shards, std::vector<std::string> upstream_specs,
                 std::string version);

  // After a reload: `specs` labels every slot ever assigned (their counters
  // stay exported: counters never go back), `configured` the slots in the
  // configuration now (only they export gauges and count for /ready).
  // Callable while scrapes run.
  void SetUpstreams(std::vector<std::string> specs, std::vector<size_t> configured);
  // The control thread's counters (reloads); borrowed, outlives the collector.
  void set_control(const ControlStats* control) { control_ = control; }
  // Names of the blocklist counter slots (ShardStats::blocklist_hits), asked
  // at each scrape: dotproxy_blocklist_hits_total{list="NAME"}. Set before
  // the first scrape.
  void set_blocklist_names(std::function<std::vector<std::string>()> names) {
    blocklist_names_ = std::move(names);
  }

  std::vector<prometheus::MetricFamily> Collect() const override;

  // /health: every shard's loop turned within `max_age` of `now` (steady
  // clock). A stopped or stuck shard fails it.
  bool Healthy(std::chrono::steady_clock::time_point now,
               std::chrono::nanoseconds max_age = std::chrono::seconds(1)) const;

  // /ready: every shard serves (sockets bound), and answers can be given:
  // some shard has an upstream it sees healthy with a connection up, or
  // some shard's cache has entries.
  bool Ready() const;

 private:
  struct Upstreams {
    std::vector<std::string> specs;  // by slot
    std::vector<bool> configured;    // by slot
  };
  Upstreams CurrentUpstreams() const;
  // One family per row of the lists in stats.h (see Collect).
  void AddShardFamily(const char* field, const char* help,
                      std::atomic<uint64_t> ShardStats::*member,
                      const std::vector<std::string>& upstream_names,
                      std::vector<prometheus::MetricFamily>& families) const;
  void AddUpstreamFamily(const char* field, const char* help,
                         std::atomic<uint64_t> UpstreamStats::*member, const Upstreams& upstreams,
                         std::vector<prometheus::MetricFamily>& families) const;

  std::vector<ShardCounters> shards_;
  mutable std::mutex upstreams_mutex_;  // scrape threads vs SetUpstreams
  Upstreams upstreams_;
  const ControlStats* control_ = nullptr;
  std::function<std::vector<std::string>()> blocklist_names_;
  std::string version_;
};

}  // namespace dotproxy::metrics
