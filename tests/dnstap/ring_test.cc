#include "dotproxy/dnstap/ring.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "dotproxy/dnstap/tap.h"

namespace dotproxy::dnstap {
namespace {

bool Push(ByteRing& ring, uint32_t value, size_t length) {
  std::span<uint8_t> space = ring.Reserve(length);
  if (space.empty()) return false;
  std::memset(space.data(), static_cast<int>(value & 0xff), length);
  std::memcpy(space.data(), &value, sizeof value);
  ring.Commit();
  return true;
}

// Pops one record; its value, or -1 when empty.
int64_t PopValue(ByteRing& ring, size_t* length = nullptr) {
  std::span<const uint8_t> record = ring.Peek();
  if (record.empty()) return -1;
  uint32_t value = 0;
  std::memcpy(&value, record.data(), sizeof value);
  for (size_t i = sizeof value; i < record.size(); ++i) {
    if (record[i] != (value & 0xff)) return -2;  // torn or overwritten
  }
  if (length != nullptr) *length = record.size();
  ring.Pop();
  return value;
}

TEST(ByteRingTest, FullRefusesThenAcceptsAfterPop) {
  ByteRing ring(1024);
  int pushed = 0;
  while (Push(ring, pushed, 100)) ++pushed;
  // 100 bytes + 8 of frame, aligned: 112 each; 9 fit in 1024.
  EXPECT_EQ(pushed, 9);
  EXPECT_FALSE(Push(ring, 99, 100));
  EXPECT_EQ(PopValue(ring), 0);
  EXPECT_TRUE(Push(ring, 9, 100));
  for (int expected = 1; expected <= 9; ++expected) EXPECT_EQ(PopValue(ring), expected);
  EXPECT_EQ(PopValue(ring), -1);
  EXPECT_EQ(ring.used(), 0u);
}

TEST(ByteRingTest, RefusesRecordsOverHalfTheRing) {
  ByteRing ring(1024);
  EXPECT_TRUE(ring.Reserve(ring.max_record() + 1).empty());
  EXPECT_FALSE(ring.Reserve(ring.max_record()).empty());
}

TEST(ByteRingTest, WrapsAroundWithPaddingInOrder) {
  ByteRing ring(1024);
  uint32_t next_push = 0, next_pop = 0;
  // Odd sizes so records straddle the end at varying offsets.
  for (int round = 0; round < 2000; ++round) {
    const size_t length = 4 + (round * 37) % 300;
    while (!Push(ring, next_push, length)) {
      size_t got = 0;
      ASSERT_EQ(PopValue(ring, &got), next_pop);
      ++next_pop;
    }
    ++next_push;
  }
  while (next_pop < next_push) ASSERT_EQ(PopValue(ring), next_pop++);
  EXPECT_EQ(PopValue(ring), -1);
}

TEST(ByteRingTest, TapDropsAndCountsWhenFull) {
  Tap tap(1024);
  std::atomic<uint64_t> dropped{0};
  tap.set_counters({.dropped = &dropped});
  const std::vector<uint8_t> message(200, 0x42);
  int queued = 0;
  for (int i = 0; i < 10; ++i) {
    const size_t before = tap.ring().used();
    tap.Log(EventHeader{}, message);
    if (tap.ring().used() != before) ++queued;
  }
  EXPECT_GT(queued, 0);
  EXPECT_EQ(dropped.load() + queued, 10u);
  EXPECT_GT(dropped.load(), 0u);
}

TEST(ByteRingTest, TwoThreadsSeeEveryRecordInOrder) {
  ByteRing ring(4096);
  constexpr uint32_t kRecords = 50000;
  std::atomic<bool> failed{false};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::thread consumer([&] {
    uint32_t expected = 0;
    while (expected < kRecords && std::chrono::steady_clock::now() < deadline) {
      const int64_t value = PopValue(ring);
      if (value == -1) continue;
      if (value != expected) {
        failed = true;
        return;
      }
      ++expected;
    }
    if (expected != kRecords) failed = true;
  });
  uint64_t refused = 0;
  for (uint32_t i = 0; i < kRecords && std::chrono::steady_clock::now() < deadline;) {
    if (Push(ring, i, 4 + i % 200)) {
      ++i;
    } else {
      ++refused;  // the producer never waits on the consumer: it would drop
    }
  }
  consumer.join();
  EXPECT_FALSE(failed.load());
  EXPECT_EQ(ring.used(), 0u);
  RecordProperty("refused", static_cast<int>(refused));
}

}  // namespace
}  // namespace dotproxy::dnstap
