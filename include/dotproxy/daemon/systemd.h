#pragma once
// The control thread's side of systemd: sd_notify messages (READY=1,
// RELOADING=1, STATUS=, WATCHDOG=1, STOPPING=1), the watchdog interval, and
// the liveness rule the keep-alive is sent under. No-ops when built without
// libsystemd or when not started by systemd (no NOTIFY_SOCKET).

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dotproxy/shard/shard.h"

namespace dotproxy::daemon {

using ShardList = std::vector<std::unique_ptr<shard::Shard>>;

// One sd_notify(3) message ("READY=1\nSTATUS=...").
void Notify(const std::string& state);

// systemd's watchdog interval (WatchdogSec=, WATCHDOG_USEC), or zero when
// it is off.
std::chrono::microseconds WatchdogInterval();

// CLOCK_MONOTONIC in µs, for RELOADING=1's MONOTONIC_USEC=.
uint64_t MonotonicMicroseconds();

// The first shard whose loop has not turned within `max_age`, or -1. An
// idle loop turns every 100 ms; the same rule as /health.
int StuckShard(const ShardList& shards, std::chrono::nanoseconds max_age);

}  // namespace dotproxy::daemon
