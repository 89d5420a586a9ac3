// io::StandingQueue: a burst drains within the interval and keeps the long
// bound; a queue whose oldest element stays old for the interval stands and
// sheds at the short bound until it is seen young again.

#include "dotproxy/io/standing_queue.h"

#include <gtest/gtest.h>

namespace dotproxy::io {
namespace {

using std::chrono::milliseconds;

// Interval 100 ms, young under 10 ms, shed at 20 ms standing, else 200 ms.
StandingQueueSettings Settings(int min_old = 1) {
  return {.standing_after = milliseconds(100), .overload_wait = milliseconds(20),
          .max_wait = milliseconds(200), .min_old = min_old};
}

TEST(StandingQueueTest, BeginsAfterAnIntervalWithoutYoungAndEndsAfterOneWithoutOld) {
  const Clock::time_point t0{};
  StandingQueue queue(Settings(), t0);
  const auto at = [&](int ms) { return t0 + milliseconds(ms); };
  queue.Observe(at(0), milliseconds(0));
  // 90 ms of old heads: still a burst.
  for (int ms = 10; ms <= 90; ms += 10) queue.Observe(at(ms), milliseconds(50));
  EXPECT_FALSE(queue.standing());
  EXPECT_EQ(queue.ShedAfter(), milliseconds(200));
  // 100 ms without a young head (young: under half of 20 ms): it stands.
  queue.Observe(at(100), milliseconds(12));
  EXPECT_TRUE(queue.standing());
  EXPECT_EQ(queue.ShedAfter(), milliseconds(20));
  // Young moments inside the flood do not end it while old ones keep coming.
  for (int ms = 110; ms <= 300; ms += 10) {
    queue.Observe(at(ms), milliseconds(ms % 20 == 0 ? 0 : 15));
    EXPECT_TRUE(queue.standing()) << ms;
  }
  // Young only: it ends once no old head was seen for 100 ms.
  for (int ms = 310; ms < 390; ms += 10) queue.Observe(at(ms), milliseconds(2));
  EXPECT_TRUE(queue.standing()) << "the last old head was at 290 ms";
  queue.Observe(at(390), milliseconds(2));
  EXPECT_FALSE(queue.standing());
  EXPECT_EQ(queue.ShedAfter(), milliseconds(200));
  // And it takes a whole interval without young ones to begin again.
  for (int ms = 400; ms < 490; ms += 10) queue.Observe(at(ms), milliseconds(30));
  EXPECT_FALSE(queue.standing());
  queue.Observe(at(490), milliseconds(30));
  EXPECT_TRUE(queue.standing());
}

TEST(StandingQueueTest, AnIdleIntervalIsYoungSoOneOldElementAfterItDoesNotStand) {
  const Clock::time_point t0{};
  StandingQueue queue(Settings(), t0);
  // Nothing read for a second (an idle socket), then a datagram that sat
  // in the buffer since before the loop started.
  queue.Observe(t0 + milliseconds(1000), milliseconds(900));
  EXPECT_FALSE(queue.standing());
  // Old ones without a gap for another interval: now it stands.
  for (int ms = 1010; ms < 1100; ms += 10) queue.Observe(t0 + milliseconds(ms), milliseconds(30));
  EXPECT_FALSE(queue.standing());
  queue.Observe(t0 + milliseconds(1100), milliseconds(30));
  EXPECT_TRUE(queue.standing());
}

TEST(StandingQueueTest, AnIdleIntervalEndsAStandingQueue) {
  const Clock::time_point t0{};
  StandingQueue queue(Settings(), t0);
  const auto at = [&](int ms) { return t0 + milliseconds(ms); };
  queue.Observe(at(0), milliseconds(0));
  for (int ms = 10; ms <= 100; ms += 10) queue.Observe(at(ms), milliseconds(30));
  ASSERT_TRUE(queue.standing());
  // The flood stops; nothing is read for a second. The next datagram
  // waited 25 ms (a busy loop), which a standing queue would shed.
  queue.Observe(at(1100), milliseconds(25));
  EXPECT_FALSE(queue.standing());
  EXPECT_EQ(queue.ShedAfter(), milliseconds(200));
  // Old reads for another interval make it stand again; then a pause just
  // under an interval (90 ms, as a flood's pauses are) keeps it.
  for (int ms = 1110; ms <= 1210; ms += 10) queue.Observe(at(ms), milliseconds(30));
  ASSERT_TRUE(queue.standing());
  queue.Observe(at(1300), milliseconds(30));
  EXPECT_TRUE(queue.standing());
}

TEST(StandingQueueTest, TwoOldStragglersInAnIntervalAreNotAStandingQueue) {
  // What CI's ASan run met: the readiness probe read old (it sat in the
  // buffer before the loop ran), then one query 150 ms later that waited
  // behind a busy loop. No young read between them, but no queue either.
  const Clock::time_point t0{};
  StandingQueue queue(Settings(/*min_old=*/8), t0);
  const auto at = [&](int ms) { return t0 + milliseconds(ms); };
  queue.Observe(at(60), milliseconds(80));
  queue.Observe(at(150), milliseconds(25));
  EXPECT_FALSE(queue.standing());
  EXPECT_EQ(queue.ShedAfter(), milliseconds(200));
  // Six more old reads (eight in all) make it one.
  for (int ms = 155; ms < 180; ms += 5) queue.Observe(at(ms), milliseconds(25));
  EXPECT_FALSE(queue.standing());
  queue.Observe(at(180), milliseconds(25));
  EXPECT_TRUE(queue.standing());
}

}  // namespace
}  // namespace dotproxy::io
