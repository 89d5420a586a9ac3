#include "dotproxy/daemon/systemd.h"

#include <time.h>

#include <atomic>

#include "dotproxy_build_config.h"

#if DOTPROXY_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace dotproxy::daemon {

void Notify(const std::string& state) {
#if DOTPROXY_HAVE_SYSTEMD
  sd_notify(0, state.c_str());
#else
  (void)state;
#endif
}

std::chrono::microseconds WatchdogInterval() {
#if DOTPROXY_HAVE_SYSTEMD
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0) return std::chrono::microseconds(usec);
#endif
  return std::chrono::microseconds(0);
}

uint64_t MonotonicMicroseconds() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1000000 + static_cast<uint64_t>(now.tv_nsec) / 1000;
}

int StuckShard(const ShardList& shards, std::chrono::nanoseconds max_age) {
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  for (const auto& shard : shards) {
    const int64_t beat = shard->stats().loop_heartbeat_ns.load(std::memory_order_relaxed);
    if (now - beat > max_age.count()) return shard->index();
  }
  return -1;
}

}  // namespace dotproxy::daemon
