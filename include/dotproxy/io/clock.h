#pragma once
// The time of a shard's loop iteration, read once per iteration so every room
// of the shard sees the same "now" and no room calls clock_gettime per query.
// Owned by the shard; rooms hold a const reference. One owner thread.
//
// Tests drive it by hand with Set().

#include <time.h>

#include <chrono>
#include <cstdint>

namespace dotproxy::io {

using Clock = std::chrono::steady_clock;

class LoopClock {
 public:
  LoopClock() { Update(); }

  // Reads the monotonic clock (and the wall clock, which the kernel's
  // receive timestamps use): once per loop iteration.
  void Update() {
    Set(Clock::now());
    timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    realtime_ns_ = int64_t{wall.tv_sec} * 1'000'000'000 + wall.tv_nsec;
  }
  void Set(Clock::time_point now) {
    now_ = now;
    seconds_ = static_cast<uint32_t>(
        std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count());
  }

  Clock::time_point now() const { return now_; }
  // Monotonic whole seconds, for cache TTLs.
  uint32_t seconds() const { return seconds_; }
  // CLOCK_REALTIME nanoseconds at Update(), to age kernel receive stamps.
  int64_t realtime_ns() const { return realtime_ns_; }
  void SetRealtimeNs(int64_t ns) { realtime_ns_ = ns; }

 private:
  Clock::time_point now_{};
  uint32_t seconds_ = 0;
  int64_t realtime_ns_ = 0;
};

}  // namespace dotproxy::io
