#include "dotproxy/shard/query_table.h"

#include <gtest/gtest.h>

namespace dotproxy::shard {
namespace {

using io::Clock;

TEST(QueryTableTest, AllocationResetsEveryFieldOfThePreviousQuery) {
  QueryTable table(1);
  const auto t0 = Clock::now();
  uint32_t index = table.Allocate(SlotKind::kClient, t0);
  ASSERT_NE(index, kNoSlot);
  QuerySlot& slot = table[index];
  // A TCP query that was retried, bound and queued: everything set.
  slot.client = frontend::ClientRef::Tcp(7, 9);
  slot.attempt = 2;
  slot.has_edns = slot.dnssec_ok = slot.stale_candidate = true;
  slot.client_id = 0x1234;
  slot.udp_limit = 4096;
  slot.query_length = 99;
  slot.question_length = 20;
  slot.binding = {1, 3, 0x4321};
  table.attempts().PushBack(index);
  table.waiting().PushBack(index);
  table.Release(index);

  // The next query (a UDP one whose setup fails half-way, say) must not see
  // any of it: the stale TCP owner is what wedged clients before.
  index = table.Allocate(SlotKind::kPrefetch, t0);
  ASSERT_NE(index, kNoSlot);
  const QuerySlot& fresh = table[index];
  EXPECT_TRUE(fresh.in_use);
  EXPECT_EQ(fresh.kind, SlotKind::kPrefetch);
  EXPECT_EQ(fresh.client.transport, frontend::Transport::kUdp);
  EXPECT_EQ(fresh.client.tcp_client, 0u);
  EXPECT_EQ(fresh.client.tcp_generation, 0u);
  EXPECT_EQ(fresh.attempt, 1);
  EXPECT_FALSE(fresh.has_edns || fresh.dnssec_ok || fresh.stale_candidate);
  EXPECT_EQ(fresh.client_id, 0);
  EXPECT_EQ(fresh.query_length, 0);
  EXPECT_EQ(fresh.question_length, 0);
  EXPECT_FALSE(fresh.binding.bound());
  EXPECT_EQ(fresh.binding.upstream, -1);
  EXPECT_FALSE(table.attempts().Contains(index));
  EXPECT_FALSE(table.waiting().Contains(index));
  EXPECT_TRUE(table.deadlines().Contains(index));
}

TEST(QueryTableTest, DeadlineListInAllocationOrderAndFullTableRefuses) {
  QueryTable table(3);
  const auto t0 = Clock::now();
  const uint32_t a = table.Allocate(SlotKind::kClient, t0);
  const uint32_t b = table.Allocate(SlotKind::kClient, t0 + std::chrono::milliseconds(1));
  const uint32_t c = table.Allocate(SlotKind::kClient, t0 + std::chrono::milliseconds(2));
  EXPECT_EQ(table.Allocate(SlotKind::kClient, t0), kNoSlot);
  EXPECT_EQ(table.in_use(), 3u);
  EXPECT_EQ(table.deadlines().head(), a);
  table.Release(a);
  EXPECT_EQ(table.deadlines().head(), b);
  EXPECT_EQ(table.deadlines().Next(b), c);
  table.Release(a);  // twice: no-op
  EXPECT_EQ(table.in_use(), 2u);
  EXPECT_NE(table.Allocate(SlotKind::kClient, t0), kNoSlot);
  EXPECT_EQ(table.deadlines().tail(), a);
}

}  // namespace
}  // namespace dotproxy::shard
