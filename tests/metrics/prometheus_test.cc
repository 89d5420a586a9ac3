// ShardCollector against hand-filled shard stats: names, sums, labels,
// gauges, and the /health and /ready verdicts.

#include "dotproxy/metrics/prometheus.h"
#include "dotproxy/metrics/upstream_slots.h"

#include <prometheus/text_serializer.h>

#include <chrono>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace dotproxy::metrics {
namespace {

using std::chrono::steady_clock;

struct FakeShard {
  ShardStats stats;
  UpstreamStats upstreams[2];
};

// Two shards, two upstreams, serving, with a fresh heartbeat at `now`.
class ShardCollectorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (FakeShard& s : shards_) {
      s.stats.serving.store(true);
      Beat(s, now_);
    }
  }
  static void Beat(FakeShard& s, steady_clock::time_point at) {
    s.stats.loop_heartbeat_ns.store(
        std::chrono::duration_cast<std::chrono::nanoseconds>(at.time_since_epoch()).count());
  }
  ShardCollector Collector() {
    return ShardCollector({{&shards_[0].stats, shards_[0].upstreams},
                           {&shards_[1].stats, shards_[1].upstreams}},
                          {"127.0.0.1:853#a.test", "127.0.0.2:853#b.test"}, "1.2.3");
  }
  // "name{labels}" -> value, from the text exposition.
  std::map<std::string, std::string> Samples() { return Samples(Collector()); }
  std::map<std::string, std::string> Samples(const ShardCollector& collector) {
    const auto families = collector.Collect();
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, families);
    text_ = out.str();
    std::map<std::string, std::string> samples;
    std::istringstream lines(text_);
    for (std::string line; std::getline(lines, line);) {
      if (line.empty() || line[0] == '#') continue;
      const size_t space = line.rfind(' ');
      samples[line.substr(0, space)] = line.substr(space + 1);
    }
    return samples;
  }

  steady_clock::time_point now_ = steady_clock::now();
  FakeShard shards_[2];
  std::string text_;
};

TEST_F(ShardCollectorTest, SumsCountersOverShardsWithTotalSuffix) {
  Bump(shards_[0].stats.udp_queries, 5);
  Bump(shards_[1].stats.udp_queries, 7);
  Bump(shards_[1].stats.tcp_queries, 3);
  auto samples = Samples();
  EXPECT_EQ(samples["dotproxy_udp_queries_total"], "12") << text_;
  EXPECT_EQ(samples["dotproxy_tcp_queries_total"], "3");
  EXPECT_EQ(samples["dotproxy_cache_hits_total"], "0") << "every row is exported, zero or not";
  EXPECT_NE(text_.find("# TYPE dotproxy_udp_queries_total counter"), std::string::npos);
}

TEST_F(ShardCollectorTest, GaugesHaveNoTotalSuffix) {
  Set(shards_[0].stats.cache_entries, 10);
  Set(shards_[1].stats.cache_entries, 4);
  auto samples = Samples();
  EXPECT_EQ(samples["dotproxy_cache_entries"], "14") << text_;
  EXPECT_EQ(samples.count("dotproxy_cache_entries_total"), 0u);
  EXPECT_NE(text_.find("# TYPE dotproxy_cache_entries gauge"), std::string::npos);
  // A running total stays a counter.
  EXPECT_EQ(samples.count("dotproxy_cache_evictions_total"), 1u);
}

TEST_F(ShardCollectorTest, UpstreamRowsAreLabelledBySpec) {
  Bump(shards_[0].upstreams[0].answers, 2);
  Bump(shards_[1].upstreams[0].answers, 3);
  Bump(shards_[1].upstreams[1].timeouts, 1);
  Set(shards_[0].upstreams[0].healthy, 1);
  Set(shards_[1].upstreams[0].healthy, 1);
  Set(shards_[0].upstreams[1].healthy, 1);
  Set(shards_[0].upstreams[0].latency_us, 1500);
  Set(shards_[1].upstreams[0].latency_us, 2500);
  Set(shards_[0].upstreams[0].connections, 1);
  Set(shards_[1].upstreams[0].connections, 2);
  auto samples = Samples();
  EXPECT_EQ(samples["dotproxy_upstream_answers_total{upstream=\"127.0.0.1:853#a.test\"}"], "5")
      << text_;
  EXPECT_EQ(samples["dotproxy_upstream_answers_total{upstream=\"127.0.0.2:853#b.test\"}"], "0");
  EXPECT_EQ(samples["dotproxy_upstream_timeouts_total{upstream=\"127.0.0.2:853#b.test\"}"], "1");
  EXPECT_EQ(samples["dotproxy_upstream_healthy{upstream=\"127.0.0.1:853#a.test\"}"], "2");
  EXPECT_EQ(samples["dotproxy_upstream_healthy{upstream=\"127.0.0.2:853#b.test\"}"], "1");
  EXPECT_EQ(samples["dotproxy_upstream_connections{upstream=\"127.0.0.1:853#a.test\"}"], "3");
  // Latency: the worst shard's EWMA, in seconds.
  EXPECT_EQ(samples["dotproxy_upstream_latency_seconds{upstream=\"127.0.0.1:853#a.test\"}"],
            "0.0025");
  EXPECT_EQ(samples["dotproxy_shards"], "2");
  EXPECT_EQ(samples["dotproxy_build_info{version=\"1.2.3\"}"], "1");
}

TEST_F(ShardCollectorTest, EveryNameHasThePrefixAndAValidShape) {
  for (const auto& [name, value] : Samples()) {
    EXPECT_EQ(name.rfind("dotproxy_", 0), 0u) << name;
    EXPECT_EQ(name.find("_us"), std::string::npos) << "base units: " << name;
  }
}

TEST_F(ShardCollectorTest, EveryFamilyNameIsExportedOnce) {
  std::map<std::string, int> seen;
  for (const auto& family : Collector().Collect()) ++seen[family.name];
  for (const auto& [name, count] : seen) EXPECT_EQ(count, 1) << name;
  // The shard total of upstream_connect_failures is the labelled series'.
  Bump(shards_[0].upstreams[1].connect_failures, 4);
  auto samples = Samples();
  EXPECT_EQ(samples["dotproxy_upstream_connect_failures_total{upstream=\"127.0.0.2:853#b.test\"}"],
            "4");
  EXPECT_EQ(samples.count("dotproxy_upstream_connect_failures_total"), 0u);
}

TEST_F(ShardCollectorTest, HistogramsSumShardsIntoCumulativeBuckets) {
  using std::chrono::microseconds;
  auto udp_upstream = [](FakeShard& s) -> LatencyHistogram& {
    return s.stats.query_duration[0][static_cast<size_t>(AnswerSource::kUpstream)];
  };
  udp_upstream(shards_[0]).Record(microseconds(50));     // <= 100 us
  udp_upstream(shards_[1]).Record(microseconds(100));    // <= 100 us (bounds inclusive)
  udp_upstream(shards_[1]).Record(microseconds(3000));   // <= 5 ms
  udp_upstream(shards_[0]).Record(microseconds(9000000));  // +Inf
  shards_[1].upstreams[1].response_time.Record(microseconds(700));
  auto samples = Samples();
  const std::string q = "dotproxy_query_duration_seconds";
  const std::string l = "transport=\"udp\",source=\"upstream\"";
  EXPECT_EQ(samples[q + "_count{" + l + "}"], "4") << text_;
  EXPECT_EQ(samples[q + "_bucket{" + l + ",le=\"0.0001\"}"], "2");
  EXPECT_EQ(samples[q + "_bucket{" + l + ",le=\"0.0025\"}"], "2");
  EXPECT_EQ(samples[q + "_bucket{" + l + ",le=\"0.005\"}"], "3");
  EXPECT_EQ(samples[q + "_bucket{" + l + ",le=\"5\"}"], "3");
  EXPECT_EQ(samples[q + "_bucket{" + l + ",le=\"+Inf\"}"], "4");
  EXPECT_EQ(samples[q + "_sum{" + l + "}"], "9.00315");
  EXPECT_EQ(samples[q + "_count{transport=\"tcp\",source=\"cache\"}"], "0")
      << "every label pair is exported";
  const std::string r = "dotproxy_upstream_response_duration_seconds";
  EXPECT_EQ(samples[r + "_count{upstream=\"127.0.0.2:853#b.test\"}"], "1");
  EXPECT_EQ(samples[r + "_bucket{upstream=\"127.0.0.2:853#b.test\",le=\"0.0005\"}"], "0");
  EXPECT_EQ(samples[r + "_bucket{upstream=\"127.0.0.2:853#b.test\",le=\"0.001\"}"], "1");
}

TEST_F(ShardCollectorTest, HealthyWhileEveryLoopTurnsWithinASecond) {
  EXPECT_TRUE(Collector().Healthy(now_ + std::chrono::milliseconds(900)));
  Beat(shards_[1], now_ - std::chrono::milliseconds(1500));
  EXPECT_FALSE(Collector().Healthy(now_)) << "one stuck shard fails health";
  Beat(shards_[1], now_);
  shards_[0].stats.serving.store(false);
  EXPECT_FALSE(Collector().Healthy(now_)) << "a stopped shard fails health";
}

TEST_F(ShardCollectorTest, ReadyNeedsAHealthyConnectedUpstreamOrACache) {
  EXPECT_FALSE(Collector().Ready()) << "no connection, no cache";
  Set(shards_[1].upstreams[1].healthy, 1);
  EXPECT_FALSE(Collector().Ready()) << "healthy but not connected";
  Set(shards_[1].upstreams[1].connections, 1);
  EXPECT_TRUE(Collector().Ready());
  Set(shards_[1].upstreams[1].healthy, 0);
  EXPECT_FALSE(Collector().Ready()) << "connected but unhealthy";
  Set(shards_[0].stats.cache_entries, 1);
  EXPECT_TRUE(Collector().Ready()) << "the cache can answer";
  shards_[1].stats.serving.store(false);
  EXPECT_FALSE(Collector().Ready()) << "every shard must have bound its sockets";
}

TEST(UpstreamSlotsTest, AKnownSpecKeepsItsSlotANewOneTakesTheNext) {
  UpstreamSlots slots;
  auto first = slots.Assign({"a", "b"});
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, (std::vector<size_t>{0, 1}));
  auto second = slots.Assign({"c", "a", "c"});
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*second, (std::vector<size_t>{2, 0, 2}));
  EXPECT_EQ(slots.specs(), (std::vector<std::string>{"a", "b", "c"}));
}

TEST(UpstreamSlotsTest, FullTableIsAnErrorAndChangesNothing) {
  UpstreamSlots slots;
  std::vector<std::string> many;
  for (size_t i = 0; i < UpstreamSlots::kMaxSlots; ++i) many.push_back("u" + std::to_string(i));
  ASSERT_TRUE(slots.Assign(many).ok());
  auto refused = slots.Assign({"u0", "new"});
  EXPECT_FALSE(refused.ok());
  EXPECT_EQ(slots.specs().size(), UpstreamSlots::kMaxSlots);
  EXPECT_TRUE(slots.Assign({"u0", "u1"}).ok());  // known ones still fit
}

TEST_F(ShardCollectorTest, AfterAReloadRemovedUpstreamsKeepCountersButNoGauges) {
  ShardCollector collector = Collector();
  Bump(shards_[0].upstreams[0].answers, 4);
  Set(shards_[0].upstreams[0].healthy, 1);
  Set(shards_[0].upstreams[0].connections, 1);
  Set(shards_[0].upstreams[1].healthy, 1);
  // Upstream a removed, b kept.
  collector.SetUpstreams({"127.0.0.1:853#a.test", "127.0.0.2:853#b.test"}, {1});
  auto samples = Samples(collector);
  EXPECT_EQ(samples["dotproxy_upstream_answers_total{upstream=\"127.0.0.1:853#a.test\"}"], "4");
  EXPECT_EQ(samples.count("dotproxy_upstream_healthy{upstream=\"127.0.0.1:853#a.test\"}"), 0u)
      << text_;
  EXPECT_EQ(samples["dotproxy_upstream_healthy{upstream=\"127.0.0.2:853#b.test\"}"], "1");
  // /ready no longer counts the removed upstream's connection.
  EXPECT_FALSE(collector.Ready());
}

TEST_F(ShardCollectorTest, ReloadCountersAreExportedWhenGiven) {
  ShardCollector collector = Collector();
  ControlStats control;
  Bump(control.reloads, 3);
  Bump(control.reload_failures, 1);
  Set(control.last_reload_successful, 0);
  collector.set_control(&control);
  auto samples = Samples(collector);
  EXPECT_EQ(samples["dotproxy_config_reloads_total"], "3") << text_;
  EXPECT_EQ(samples["dotproxy_config_reload_failures_total"], "1");
  EXPECT_EQ(samples["dotproxy_config_last_reload_successful"], "0");
}

}  // namespace
}  // namespace dotproxy::metrics
