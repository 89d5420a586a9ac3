#include "dotproxy/metrics/prometheus.h"

#include <algorithm>
#include <iterator>
#include <limits>
#include <string_view>

#include <prometheus/metric_type.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace dotproxy::metrics {
namespace {

uint64_t Load(const std::atomic<uint64_t>& counter) {
  return counter.load(std::memory_order_relaxed);
}

// A row of the lists in stats.h, as Prometheus sees it.
struct Row {
  std::string name;  // dotproxy_..., with _total or _seconds
  std::string help;
  bool gauge = false;
  double divisor = 1.0;  // _us rows are exported in seconds
};

Row MakeRow(absl::string_view prefix, absl::string_view name, absl::string_view help) {
  Row row;
  row.gauge = absl::EndsWith(help, "(gauge)");
  std::string base(name);
  if (absl::EndsWith(base, "_us")) {
    base.resize(base.size() - 3);
    base += "_seconds";
    row.divisor = 1e6;
  }
  row.name = absl::StrCat("dotproxy_", prefix, base, row.gauge ? "" : "_total");
  row.help = std::string(help);
  return row;
}

prometheus::MetricFamily Family(const Row& row) {
  prometheus::MetricFamily family;
  family.name = row.name;
  family.help = row.help;
  family.type = row.gauge ? prometheus::MetricType::Gauge : prometheus::MetricType::Counter;
  return family;
}

prometheus::ClientMetric Sample(const Row& row, double value) {
  prometheus::ClientMetric metric;
  if (row.gauge) {
    metric.gauge.value = value / row.divisor;
  } else {
    metric.counter.value = value / row.divisor;
  }
  return metric;
}

// One histogram sample: the shards' buckets summed, then made cumulative.
prometheus::ClientMetric HistogramSample(const std::vector<const LatencyHistogram*>& parts) {
  prometheus::ClientMetric metric;
  uint64_t cumulative = 0;
  uint64_t sum_us = 0;
  for (size_t b = 0; b < LatencyHistogram::kBuckets; ++b) {
    for (const LatencyHistogram* h : parts) cumulative += Load(h->buckets[b]);
    prometheus::ClientMetric::Bucket bucket;
    bucket.cumulative_count = cumulative;
    bucket.upper_bound = b < std::size(LatencyHistogram::kBoundsUs)
                             ? static_cast<double>(LatencyHistogram::kBoundsUs[b]) / 1e6
                             : std::numeric_limits<double>::infinity();
    metric.histogram.bucket.push_back(bucket);
  }
  for (const LatencyHistogram* h : parts) sum_us += Load(h->sum_us);
  metric.histogram.sample_count = cumulative;
  metric.histogram.sample_sum = static_cast<double>(sum_us) / 1e6;
  return metric;
}

}  // namespace

ShardCollector::ShardCollector(std::vector<ShardCounters> shards,
                               std::vector<std::string> upstream_specs, std::string version)
    : shards_(std::move(shards)), version_(std::move(version)) {
  upstreams_.configured.assign(upstream_specs.size(), true);
  upstreams_.specs = std::move(upstream_specs);
}

void ShardCollector::SetUpstreams(std::vector<std::string> specs,
                                  std::vector<size_t> configured) {
  Upstreams next;
  next.configured.assign(specs.size(), false);
  for (size_t slot : configured) {
    if (slot < next.configured.size()) next.configured[slot] = true;
  }
  next.specs = std::move(specs);
  std::lock_guard lock(upstreams_mutex_);
  upstreams_ = std::move(next);
}

ShardCollector::Upstreams ShardCollector::CurrentUpstreams() const {
  std::lock_guard lock(upstreams_mutex_);
  return upstreams_;
}

void ShardCollector::AddShardFamily(const char* field, const char* help,
                                    std::atomic<uint64_t> ShardStats::*member,
                                    const std::vector<std::string>& upstream_names,
                                    std::vector<prometheus::MetricFamily>& families) const {
  const Row row = MakeRow("", field, help);
  if (std::find(upstream_names.begin(), upstream_names.end(), row.name) != upstream_names.end()) {
    return;
  }
  uint64_t total = 0;
  for (const ShardCounters& s : shards_) total += Load(s.shard->*member);
  families.push_back(Family(row));
  families.back().metric.push_back(Sample(row, static_cast<double>(total)));
}

// Gauges are summed over shards (healthy: how many shards see it healthy;
// in flight; connections) except latency, the worst shard's EWMA; only
// configured upstreams export gauges.
void ShardCollector::AddUpstreamFamily(const char* field, const char* help,
                                       std::atomic<uint64_t> UpstreamStats::*member,
                                       const Upstreams& upstreams,
                                       std::vector<prometheus::MetricFamily>& families) const {
  const Row row = MakeRow("upstream_", field, help);
  const bool worst = std::string_view(field) == "latency_us";
  families.push_back(Family(row));
  for (size_t u = 0; u < upstreams.specs.size(); ++u) {
    if (row.gauge && !upstreams.configured[u]) continue;
    uint64_t value = 0;
    for (const ShardCounters& s : shards_) {
      const uint64_t v = Load(s.upstreams[u].*member);
      value = worst ? std::max(value, v) : value + v;
    }
    prometheus::ClientMetric metric = Sample(row, static_cast<double>(value));
    metric.label.push_back({"upstream", upstreams.specs[u]});
    families.back().metric.push_back(std::move(metric));
  }
}

std::vector<prometheus::MetricFamily> ShardCollector::Collect() const {
  std::vector<prometheus::MetricFamily> families;
  const Upstreams upstreams = CurrentUpstreams();
  const std::vector<std::string>& upstream_specs = upstreams.specs;

  // A shard row that counts what an upstream row counts per upstream
  // (upstream_connect_failures and connect_failures) would export the same
  // name twice: the labelled series stands for both (sum() gives the total).
  // Each row is a call with a pointer to its member, not code expanded in
  // place: this frame stays small (under ASan the expanded form overflowed
  // the HTTP server's worker stack).
  std::vector<std::string> upstream_names;
#define DOTPROXY_UPSTREAM_NAME(field, help) \
  upstream_names.push_back(MakeRow("upstream_", #field, help).name);
  DOTPROXY_UPSTREAM_COUNTERS(DOTPROXY_UPSTREAM_NAME)
#undef DOTPROXY_UPSTREAM_NAME

  // Shard rows: summed over shards (gauges too: entries, in flight).
#define DOTPROXY_COLLECT_SHARD(field, help) \
  AddShardFamily(#field, help, &ShardStats::field, upstream_names, families);
  DOTPROXY_SHARD_COUNTERS(DOTPROXY_COLLECT_SHARD)
#undef DOTPROXY_COLLECT_SHARD

  // Upstream rows, one sample per upstream.
#define DOTPROXY_COLLECT_UPSTREAM(field, help) \
  AddUpstreamFamily(#field, help, &UpstreamStats::field, upstreams, families);
  DOTPROXY_UPSTREAM_COUNTERS(DOTPROXY_COLLECT_UPSTREAM)
#undef DOTPROXY_COLLECT_UPSTREAM

  // Histograms: fixed buckets summed over shards, made cumulative here.
  {
    prometheus::MetricFamily family;
    family.name = "dotproxy_query_duration_seconds";
    family.help = "client-observed answer time, from reading the query to replying (loop clock)";
    family.type = prometheus::MetricType::Histogram;
    for (size_t t = 0; t < std::size(kTransportNames); ++t) {
      for (size_t a = 0; a < std::size(kAnswerSourceNames); ++a) {
        std::vector<const LatencyHistogram*> parts;
        for (const ShardCounters& s : shards_) parts.push_back(&s.shard->query_duration[t][a]);
        prometheus::ClientMetric metric = HistogramSample(parts);
        metric.label.push_back({"transport", std::string(kTransportNames[t])});
        metric.label.push_back({"source", std::string(kAnswerSourceNames[a])});
        family.metric.push_back(std::move(metric));
      }
    }
    families.push_back(std::move(family));
  }
  {
    prometheus::MetricFamily family;
    family.name = "dotproxy_upstream_response_duration_seconds";
    family.help = "time from sending a query upstream to its accepted answer (probes included)";
    family.type = prometheus::MetricType::Histogram;
    for (size_t u = 0; u < upstream_specs.size(); ++u) {
      std::vector<const LatencyHistogram*> parts;
      for (const ShardCounters& s : shards_) parts.push_back(&s.upstreams[u].response_time);
      prometheus::ClientMetric metric = HistogramSample(parts);
      metric.label.push_back({"upstream", upstream_specs[u]});
      family.metric.push_back(std::move(metric));
    }
    families.push_back(std::move(family));
  }

  if (blocklist_names_) {
    const std::vector<std::string> names = blocklist_names_();
    const Row row{"dotproxy_blocklist_hits_total", "queries answered by each blocklist", false, 1.0};
    families.push_back(Family(row));
    for (size_t slot = 0; slot < names.size() && slot < kMaxBlocklistSlots; ++slot) {
      uint64_t value = 0;
      for (const ShardCounters& s : shards_) value += Load(s.shard->blocklist_hits[slot]);
      prometheus::ClientMetric metric = Sample(row, static_cast<double>(value));
      metric.label.push_back({"list", names[slot]});
      families.back().metric.push_back(std::move(metric));
    }
  }

  if (control_ != nullptr) {
    const Row reloads{"dotproxy_config_reloads_total",
                      "configuration reloads applied (SIGHUP)", false, 1.0};
    const Row failures{"dotproxy_config_reload_failures_total",
                       "configuration reloads refused (the old configuration stayed)", false, 1.0};
    const Row last{"dotproxy_config_last_reload_successful",
                   "1 unless the last reload was refused", true, 1.0};
    for (const auto& [row, value] :
         {std::pair{reloads, Load(control_->reloads)},
          std::pair{failures, Load(control_->reload_failures)},
          std::pair{last, Load(control_->last_reload_successful)}}) {
      families.push_back(Family(row));
      families.back().metric.push_back(Sample(row, static_cast<double>(value)));
    }
  }

  const Row shards_row{"dotproxy_shards", "shards (event loops, one thread each)", true, 1.0};
  families.push_back(Family(shards_row));
  families.back().metric.push_back(Sample(shards_row, static_cast<double>(shards_.size())));

  const Row build_row{"dotproxy_build_info", "always 1; the version as a label", true, 1.0};
  families.push_back(Family(build_row));
  prometheus::ClientMetric build = Sample(build_row, 1);
  build.label.push_back({"version", version_});
  families.back().metric.push_back(std::move(build));
  return families;
}

bool ShardCollector::Healthy(std::chrono::steady_clock::time_point now,
                             std::chrono::nanoseconds max_age) const {
  const int64_t now_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
  for (const ShardCounters& s : shards_) {
    if (!s.shard->serving.load(std::memory_order_relaxed)) return false;
    const int64_t beat = s.shard->loop_heartbeat_ns.load(std::memory_order_relaxed);
    if (now_ns - beat > max_age.count()) return false;
  }
  return !shards_.empty();
}

bool ShardCollector::Ready() const {
  if (shards_.empty()) return false;
  const Upstreams upstreams = CurrentUpstreams();
  bool answers = false;
  for (const ShardCounters& s : shards_) {
    if (!s.shard->serving.load(std::memory_order_relaxed)) return false;
    if (Load(s.shard->cache_entries) > 0) answers = true;
    for (size_t u = 0; u < upstreams.specs.size(); ++u) {
      if (!upstreams.configured[u]) continue;
      if (Load(s.upstreams[u].healthy) > 0 && Load(s.upstreams[u].connections) > 0) answers = true;
    }
  }
  return answers;
}

}  // namespace dotproxy::metrics
