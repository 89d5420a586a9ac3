#include "dotproxy/upstream/health.h"

#include <gtest/gtest.h>


namespace dotproxy::upstream {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;
using TimePoint = HealthTracker::TimePoint;

// A fake clock: tests move time by hand.
struct FakeClock {
  TimePoint now{};
  void Advance(milliseconds d) { now += d; }
};

HealthPolicy NoExploration() {
  HealthPolicy policy;
  policy.explore_one_in = 0;
  return policy;
}

auto All = [](int) { return true; };

TEST(HealthTrackerTest, PrefersLowestLatency) {
  FakeClock clock;
  HealthTracker health({0, 0, 0}, NoExploration());
  health.RecordAnswer(0, microseconds(9000), clock.now);
  health.RecordAnswer(1, microseconds(2000), clock.now);
  health.RecordAnswer(2, microseconds(5000), clock.now);
  EXPECT_EQ(health.Select(All, -1, 1), 1);
  EXPECT_EQ(health.Select(All, 1, 1), 2);
}

TEST(HealthTrackerTest, LoadStretchesExpectedLatency) {
  FakeClock clock;
  HealthTracker health({0, 0}, NoExploration());
  health.RecordAnswer(0, microseconds(2000), clock.now);
  health.RecordAnswer(1, microseconds(3000), clock.now);
  EXPECT_EQ(health.Select(All, -1, 1), 0);
  for (int i = 0; i < 64; ++i) health.AddInFlight(0);  // 2 ms * 2 > 3 ms
  EXPECT_EQ(health.Select(All, -1, 1), 1);
  for (int i = 0; i < 64; ++i) health.RemoveInFlight(0);
  EXPECT_EQ(health.Select(All, -1, 1), 0);
}

TEST(HealthTrackerTest, UntriedUpstreamIsTriedFirst) {
  FakeClock clock;
  HealthTracker health({0, 0}, NoExploration());
  health.RecordAnswer(0, microseconds(100), clock.now);
  EXPECT_EQ(health.Select(All, -1, 1), 1);
}

TEST(HealthTrackerTest, PriorityBeatsLatency) {
  FakeClock clock;
  HealthTracker health({1, 0}, NoExploration());
  health.RecordAnswer(0, microseconds(100), clock.now);
  health.RecordAnswer(1, microseconds(50000), clock.now);
  EXPECT_EQ(health.Select(All, -1, 1), 1);
}

TEST(HealthTrackerTest, BecomesUnhealthyAfterThresholdAndIsAvoided) {
  FakeClock clock;
  HealthTracker health({0, 1}, NoExploration());
  EXPECT_FALSE(health.RecordFailure(0, clock.now));
  EXPECT_FALSE(health.RecordFailure(0, clock.now));
  EXPECT_TRUE(health.RecordFailure(0, clock.now));  // third: transition
  EXPECT_EQ(health.get(0).state, HealthState::kUnhealthy);
  EXPECT_FALSE(health.RecordFailure(0, clock.now));  // no second transition
  // The worse-priority healthy upstream now wins.
  EXPECT_EQ(health.Select(All, -1, 1), 1);
}

TEST(HealthTrackerTest, SuccessResetsFailureCount) {
  FakeClock clock;
  HealthTracker health({0}, NoExploration());
  health.RecordFailure(0, clock.now);
  health.RecordFailure(0, clock.now);
  health.RecordAnswer(0, microseconds(1000), clock.now);
  EXPECT_FALSE(health.RecordFailure(0, clock.now));
  EXPECT_EQ(health.get(0).state, HealthState::kHealthy);
}

TEST(HealthTrackerTest, UnhealthyIsStillUsedWhenNothingElseIs) {
  FakeClock clock;
  HealthTracker health({0, 0}, NoExploration());
  for (int i = 0; i < 3; ++i) health.RecordFailure(0, clock.now);
  EXPECT_EQ(health.Select([](int i) { return i == 0; }, -1, 1), 0);
  EXPECT_EQ(health.Select([](int) { return false; }, -1, 1), -1);
  EXPECT_EQ(health.Select(All, 1, 1), 0);
}

TEST(HealthTrackerTest, RecoversOnAnswer) {
  FakeClock clock;
  HealthTracker health({0}, NoExploration());
  for (int i = 0; i < 3; ++i) health.RecordFailure(0, clock.now);
  EXPECT_TRUE(health.RecordAnswer(0, microseconds(1000), clock.now));
  EXPECT_EQ(health.get(0).state, HealthState::kHealthy);
}

TEST(HealthTrackerTest, ProbesBackOff) {
  FakeClock clock;
  HealthPolicy policy = NoExploration();
  policy.probe_min = milliseconds(500);
  policy.probe_max = milliseconds(4000);
  HealthTracker health({0}, policy);
  EXPECT_FALSE(health.ProbeDue(0, clock.now));  // healthy: never probed
  for (int i = 0; i < 3; ++i) health.RecordFailure(0, clock.now);
  EXPECT_FALSE(health.ProbeDue(0, clock.now));
  clock.Advance(milliseconds(500));
  ASSERT_TRUE(health.ProbeDue(0, clock.now));
  health.ProbeSent(0, clock.now);  // next in 500 ms
  clock.Advance(milliseconds(499));
  EXPECT_FALSE(health.ProbeDue(0, clock.now));
  clock.Advance(milliseconds(1));
  ASSERT_TRUE(health.ProbeDue(0, clock.now));
  health.ProbeSent(0, clock.now);  // then 1000 ms
  clock.Advance(milliseconds(999));
  EXPECT_FALSE(health.ProbeDue(0, clock.now));
  clock.Advance(milliseconds(1));
  EXPECT_TRUE(health.ProbeDue(0, clock.now));
  for (int i = 0; i < 10; ++i) health.ProbeSent(0, clock.now);
  clock.Advance(milliseconds(4000));  // capped at probe_max
  EXPECT_TRUE(health.ProbeDue(0, clock.now));
}

TEST(HealthTrackerTest, WithNothingHealthyProbesStayAtTheShortestInterval) {
  FakeClock clock;
  HealthPolicy policy = NoExploration();
  policy.probe_min = milliseconds(500);
  HealthTracker health({0, 0}, policy);
  EXPECT_TRUE(health.AnyHealthy());
  for (int i = 0; i < 3; ++i) health.RecordFailure(0, clock.now);
  EXPECT_TRUE(health.AnyHealthy()) << "upstream 1 still is";
  for (int i = 0; i < 3; ++i) health.RecordFailure(1, clock.now);
  EXPECT_FALSE(health.AnyHealthy());
  clock.Advance(milliseconds(500));
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(health.ProbeDue(0, clock.now)) << i;
    health.ProbeSent(0, clock.now, /*fast=*/true);
    clock.Advance(milliseconds(499));
    EXPECT_FALSE(health.ProbeDue(0, clock.now));
    clock.Advance(milliseconds(1));
  }
}

TEST(HealthTrackerTest, LatencyIsAnEwma) {
  FakeClock clock;
  HealthPolicy policy = NoExploration();
  policy.latency_alpha = 0.5;
  HealthTracker health({0}, policy);
  health.RecordAnswer(0, microseconds(10000), clock.now);
  EXPECT_DOUBLE_EQ(health.get(0).latency_ewma_ms, 10.0);
  health.RecordAnswer(0, microseconds(20000), clock.now);
  EXPECT_DOUBLE_EQ(health.get(0).latency_ewma_ms, 15.0);
}

TEST(HealthTrackerTest, ExplorationPicksAnotherHealthyUpstreamOfSamePriority) {
  FakeClock clock;
  HealthPolicy policy;
  policy.explore_one_in = 4;
  HealthTracker health({0, 0, 1}, policy);
  health.RecordAnswer(0, microseconds(1000), clock.now);
  health.RecordAnswer(1, microseconds(9000), clock.now);
  health.RecordAnswer(2, microseconds(10), clock.now);
  EXPECT_EQ(health.Select(All, -1, 1), 0);  // 1 % 4 != 0: best
  EXPECT_EQ(health.Select(All, -1, 4), 1);  // explore: the other priority-0 one
}

}  // namespace
}  // namespace dotproxy::upstream
