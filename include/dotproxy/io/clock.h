#pragma once
// The time of a shard's loop iteration, read once per iteration so every room
// of the shard sees the same "now" and no room calls clock_gettime per query.
// Owned by the shard; rooms hold a const reference. One owner thread.
//
// Tests drive it by hand with Set().

#include <sys/resource.h>
#include <time.h>

#include <chrono>
#include <cstdint>

namespace dotproxy::io {

using Clock = std::chrono::steady_clock;

// What the calling thread's scheduling looked like so far (getrusage
// RUSAGE_THREAD): its CPU time and how often it left its CPU (context
// switches, voluntary or not). Between two readings, wall time less CPU
// time over the switches is how long it stayed off its CPU each time
// (preempted, throttled or blocked). A system call, unlike the loop
// clock: read once per turn, and only when a room asks.
struct ThreadSchedule {
  int64_t cpu_ns = 0;
  int64_t switches = 0;
};
inline ThreadSchedule ReadThreadSchedule() {
  rusage usage{};
  getrusage(RUSAGE_THREAD, &usage);
  const auto us = [](const timeval& t) { return int64_t{t.tv_sec} * 1'000'000 + t.tv_usec; };
  return {.cpu_ns = (us(usage.ru_utime) + us(usage.ru_stime)) * 1000,
          .switches = static_cast<int64_t>(usage.ru_nvcsw) + usage.ru_nivcsw};
}

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
