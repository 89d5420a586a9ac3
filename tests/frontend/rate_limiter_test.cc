// RateLimiter against a hand-driven clock: the GCRA budget (rate plus
// burst), prefixes as clients, slip, exemptions, IPv4-mapped sources, and
// eviction when the table's probe window is full.

#include "dotproxy/frontend/rate_limiter.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <gtest/gtest.h>

#include <string>

namespace dotproxy::frontend {
namespace {

constexpr int64_t kSecond = 1'000'000'000;

sockaddr_in6 Address(const std::string& text) {
  sockaddr_in6 storage{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
  if (inet_pton(AF_INET, text.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
  } else {
    storage.sin6_family = AF_INET6;
    EXPECT_EQ(inet_pton(AF_INET6, text.c_str(), &storage.sin6_addr), 1) << text;
  }
  return storage;
}

RateVerdict Check(RateLimiter& limiter, const std::string& source, int64_t now) {
  const sockaddr_in6 address = Address(source);
  return limiter.Check(reinterpret_cast<const sockaddr*>(&address), now);
}

int Allowed(RateLimiter& limiter, const std::string& source, int count, int64_t now) {
  int allowed = 0;
  for (int i = 0; i < count; ++i) allowed += Check(limiter, source, now) == RateVerdict::kAllow;
  return allowed;
}

RateLimitSettings Settings(uint32_t qps, uint32_t burst, uint32_t slip = 0) {
  RateLimitSettings settings;
  settings.qps = qps;
  settings.burst = burst;
  settings.slip = slip;
  return settings;
}

TEST(RateLimiterTest, AnIdleClientGetsItsBurstThenTheRate) {
  std::atomic<uint64_t> evictions{0};
  RateLimiter limiter(Settings(/*qps=*/10, /*burst=*/5), &evictions);
  const int64_t t0 = 100 * kSecond;
  EXPECT_EQ(Allowed(limiter, "192.0.2.1", 20, t0), 5);
  // A tenth of a second later one more query's worth has accrued.
  EXPECT_EQ(Allowed(limiter, "192.0.2.1", 20, t0 + kSecond / 10), 1);
  // Over a whole second of steady overload: the rate, no more.
  int allowed = 0;
  for (int ms = 200; ms < 1200; ms += 10) allowed += Allowed(limiter, "192.0.2.1", 10, t0 + ms * 1'000'000);
  EXPECT_GE(allowed, 9);
  EXPECT_LE(allowed, 11);
  EXPECT_EQ(evictions.load(), 0u);
}

TEST(RateLimiterTest, BurstZeroMeansAsManyAsTheRate) {
  RateLimiter limiter(Settings(100, 0), nullptr);
  EXPECT_EQ(Allowed(limiter, "192.0.2.1", 500, kSecond), 100);
}

TEST(RateLimiterTest, AClientIsItsPrefix) {
  RateLimiter limiter(Settings(10, 10), nullptr);
  EXPECT_EQ(Allowed(limiter, "192.0.2.1", 10, kSecond), 10);
  // Same /24: the same budget, already spent.
  EXPECT_EQ(Allowed(limiter, "192.0.2.200", 10, kSecond), 0);
  // Another /24, and an IPv4-mapped address of the first one.
  EXPECT_EQ(Allowed(limiter, "192.0.3.1", 10, kSecond), 10);
  EXPECT_EQ(Allowed(limiter, "::ffff:192.0.2.7", 10, kSecond), 0);
  // IPv6: a /56 is one client.
  EXPECT_EQ(Allowed(limiter, "2001:db8:0:1::1", 10, kSecond), 10);
  EXPECT_EQ(Allowed(limiter, "2001:db8:0:ff::2", 10, kSecond), 0);
  EXPECT_EQ(Allowed(limiter, "2001:db8:0:100::1", 10, kSecond), 10);
}

TEST(RateLimiterTest, EverySlipthOverLimitQueryIsASlipTheRestDrop) {
  RateLimiter limiter(Settings(1, 1, /*slip=*/3), nullptr);
  EXPECT_EQ(Check(limiter, "192.0.2.1", kSecond), RateVerdict::kAllow);
  int slips = 0, drops = 0;
  for (int i = 0; i < 9; ++i) {
    const RateVerdict verdict = Check(limiter, "192.0.2.1", kSecond);
    slips += verdict == RateVerdict::kSlip;
    drops += verdict == RateVerdict::kDrop;
  }
  EXPECT_EQ(slips, 3);
  EXPECT_EQ(drops, 6);
}

TEST(RateLimiterTest, ExemptNetworksAreNeverLimited) {
  RateLimitSettings settings = Settings(1, 1);
  settings.exempt.push_back(*ParseCidr("10.0.0.0/8"));
  RateLimiter limiter(settings, nullptr);
  EXPECT_EQ(Allowed(limiter, "10.1.2.3", 1000, kSecond), 1000);
  EXPECT_EQ(Allowed(limiter, "11.1.2.3", 1000, kSecond), 1);
}

TEST(RateLimiterTest, ManyPrefixesEvictTheEarliestAndCountWhatWasStillLimited) {
  std::atomic<uint64_t> evictions{0};
  RateLimiter limiter(Settings(1, 1), &evictions);
  const int64_t now = kSecond;
  // Far more prefixes than entries: the table stays the same size and
  // every prefix still gets its first query.
  int first_answers = 0;
  for (uint32_t i = 0; i < 3 * RateLimiter::kEntries; ++i) {
    const std::string source = std::to_string(i >> 16 & 0xff) + "." +
                               std::to_string(i >> 8 & 0xff) + "." + std::to_string(i & 0xff) +
                               ".1";
    first_answers += Check(limiter, source, now) == RateVerdict::kAllow;
  }
  EXPECT_EQ(first_answers, static_cast<int>(3 * RateLimiter::kEntries));
  EXPECT_GT(evictions.load(), 0u);
}

}  // namespace
}  // namespace dotproxy::frontend
