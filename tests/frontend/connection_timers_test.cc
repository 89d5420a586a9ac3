// The idle and message clocks of the stream rooms, on their own: order,
// restarts, expiry and the choice of an idle connection to evict.
#include "dotproxy/frontend/connection_timers.h"

#include <gtest/gtest.h>

namespace dotproxy::frontend {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class ConnectionTimersTest : public ::testing::Test {
 protected:
  void SetUp() override { timers_.Resize(8); }
  ConnectionTimers::TimePoint At(int ms) const { return t0_ + milliseconds(ms); }

  ConnectionTimers timers_;
  const ConnectionTimers::TimePoint t0_ = io::Clock::now();
};

TEST_F(ConnectionTimersTest, IdleExpiresOldestActivityFirstAndTouchRestarts) {
  timers_.Touch(3, At(0));
  timers_.Touch(5, At(10));
  timers_.Touch(3, At(20));  // 3 is now the most recent
  EXPECT_EQ(timers_.ExpiredIdle(At(100), milliseconds(100)), io::kNoIndex);
  EXPECT_EQ(timers_.ExpiredIdle(At(110), milliseconds(100)), 5u);
  timers_.Forget(5);
  EXPECT_EQ(timers_.ExpiredIdle(At(119), milliseconds(100)), io::kNoIndex);
  EXPECT_EQ(timers_.ExpiredIdle(At(120), milliseconds(100)), 3u);
}

TEST_F(ConnectionTimersTest, TheMessageTimerIsNotExtendedByActivity) {
  timers_.Touch(1, At(0));
  timers_.StartMessage(1, At(0));
  for (int ms = 10; ms < 100; ms += 10) timers_.Touch(1, At(ms));  // a trickle
  EXPECT_TRUE(timers_.MessageTimed(1));
  EXPECT_EQ(timers_.ExpiredMessage(At(99), milliseconds(100)), io::kNoIndex);
  EXPECT_EQ(timers_.ExpiredMessage(At(100), milliseconds(100)), 1u);
  EXPECT_EQ(timers_.ExpiredIdle(At(100), milliseconds(100)), io::kNoIndex) << "active all along";
  timers_.StopMessage(1);
  EXPECT_FALSE(timers_.MessageTimed(1));
  EXPECT_EQ(timers_.ExpiredMessage(At(1000), milliseconds(100)), io::kNoIndex);
}

TEST_F(ConnectionTimersTest, StartMessageRestartsAndReorders) {
  timers_.StartMessage(2, At(0));
  timers_.StartMessage(4, At(10));
  timers_.StartMessage(2, At(20));  // a message completed, the next began
  EXPECT_EQ(timers_.message_since(2), At(20));
  EXPECT_EQ(timers_.ExpiredMessage(At(115), milliseconds(100)), 4u);
}

TEST_F(ConnectionTimersTest, IdleVictimIsTheOldestThatWaitsForNothing) {
  for (uint32_t slot : {0u, 1u, 2u, 3u}) timers_.Touch(slot, At(static_cast<int>(slot)));
  const auto busy = [](uint32_t slot) { return slot != 0; };  // 0 has a query in flight
  EXPECT_EQ(timers_.IdleVictim(io::kNoIndex, At(10), busy), 1u);
  EXPECT_EQ(timers_.IdleVictim(1, At(10), busy), 2u) << "never the newcomer";
  timers_.StartMessage(2, At(5));  // mid-message: spared
  EXPECT_EQ(timers_.IdleVictim(1, At(10), busy), 3u);
  EXPECT_EQ(timers_.IdleVictim(1, At(5) + seconds(1), busy), 2u) << "mid-message for a second";
  EXPECT_EQ(timers_.IdleVictim(io::kNoIndex, At(10), [](uint32_t) { return false; }),
            io::kNoIndex);
}

TEST_F(ConnectionTimersTest, IdleVictimLooksAtTheSixteenOldestOnly) {
  timers_.Resize(20);
  for (uint32_t slot = 0; slot < 20; ++slot) timers_.Touch(slot, At(static_cast<int>(slot)));
  const auto only_the_youngest = [](uint32_t slot) { return slot >= 16; };
  EXPECT_EQ(timers_.IdleVictim(io::kNoIndex, At(100), only_the_youngest), io::kNoIndex);
  const auto the_sixteenth = [](uint32_t slot) { return slot == 15; };
  EXPECT_EQ(timers_.IdleVictim(io::kNoIndex, At(100), the_sixteenth), 15u);
}

}  // namespace
}  // namespace dotproxy::frontend
