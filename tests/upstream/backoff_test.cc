#include "dotproxy/upstream/backoff.h"

#include <gtest/gtest.h>

namespace dotproxy::upstream {
namespace {

using std::chrono::milliseconds;

TEST(DoublingDelayTest, DoublesFromBaseUpToCap) {
  EXPECT_EQ(DoublingDelay(milliseconds(500), milliseconds(10000), 0), milliseconds(500));
  EXPECT_EQ(DoublingDelay(milliseconds(500), milliseconds(10000), 1), milliseconds(500));
  EXPECT_EQ(DoublingDelay(milliseconds(500), milliseconds(10000), 2), milliseconds(1000));
  EXPECT_EQ(DoublingDelay(milliseconds(500), milliseconds(10000), 5), milliseconds(8000));
  EXPECT_EQ(DoublingDelay(milliseconds(500), milliseconds(10000), 6), milliseconds(10000));
  EXPECT_EQ(DoublingDelay(milliseconds(500), milliseconds(10000), 1000), milliseconds(10000));
}

TEST(BackoffTest, GrowsExponentiallyWithJitterAndCap) {
  for (uint32_t random : {0u, 250u, 500u}) {
    const auto first = BackoffDelay(1, random).count();
    EXPECT_GE(first, 75);
    EXPECT_LE(first, 125);
    const auto fourth = BackoffDelay(4, random).count();
    EXPECT_GE(fourth, 600);
    EXPECT_LE(fourth, 1000);
    const auto late = BackoffDelay(30, random).count();
    EXPECT_GE(late, 7500);
    EXPECT_LE(late, 12500);
  }
  EXPECT_NE(BackoffDelay(3, 0), BackoffDelay(3, 500));  // jitter spreads shards
}

TEST(BackoffTest, InATotalOutageRetriesStayNear250Ms) {
  for (uint32_t random : {0u, 250u, 500u}) {
    EXPECT_LE(OutageBackoffDelay(1, random).count(), 125);
    for (int failures : {3, 10, 1000}) {
      const auto delay = OutageBackoffDelay(failures, random).count();
      EXPECT_GE(delay, 187) << failures;
      EXPECT_LE(delay, 313) << failures;
    }
  }
}

}  // namespace
}  // namespace dotproxy::upstream
