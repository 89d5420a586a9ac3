// io::StandingQueue: a burst drains within the interval and keeps the long
// bound; a queue whose oldest element stays old for the interval stands and
// sheds at the short bound until it is seen young again.

#include "dotproxy/io/standing_queue.h"

#include <gtest/gtest.h>

namespace dotproxy::io {
namespace {

using std::chrono::milliseconds;

TEST(StandingQueueTest, BurstKeepsTheLongBoundAndOverloadGetsTheShortOne) {
  const Clock::time_point t0{};
  StandingQueue queue({.standing_after = milliseconds(100), .overload_wait = milliseconds(20),
                       .max_wait = milliseconds(200)},
                      t0);
  queue.Observe(t0, milliseconds(0));
  // 80 ms of old heads: still a burst.
  for (int ms = 10; ms <= 80; ms += 10) queue.Observe(t0 + milliseconds(ms), milliseconds(50));
  EXPECT_FALSE(queue.Standing(t0 + milliseconds(80)));
  EXPECT_EQ(queue.ShedAfter(t0 + milliseconds(80)), milliseconds(200));
  // Past 100 ms without a young head: it stands.
  queue.Observe(t0 + milliseconds(100), milliseconds(30));
  EXPECT_TRUE(queue.Standing(t0 + milliseconds(100)));
  EXPECT_EQ(queue.ShedAfter(t0 + milliseconds(100)), milliseconds(20));
  // A head of 12 ms is not young (young: under half of 20 ms).
  queue.Observe(t0 + milliseconds(150), milliseconds(12));
  EXPECT_TRUE(queue.Standing(t0 + milliseconds(150)));
  // A young head ends it at once.
  queue.Observe(t0 + milliseconds(160), milliseconds(9));
  EXPECT_FALSE(queue.Standing(t0 + milliseconds(160)));
  EXPECT_EQ(queue.ShedAfter(t0 + milliseconds(160)), milliseconds(200));
  // And the interval starts again from there.
  EXPECT_FALSE(queue.Standing(t0 + milliseconds(259)));
  EXPECT_TRUE(queue.Standing(t0 + milliseconds(260)));
}

}  // namespace
}  // namespace dotproxy::io
