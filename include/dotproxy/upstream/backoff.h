#pragma once
// Delays that double with each consecutive failure, up to a cap: one helper
// for reconnect backoff and probe intervals. Pure functions.

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace dotproxy::upstream {

// base * 2^(attempt - 1), at most `cap`; attempt <= 1 gives `base`.
inline std::chrono::milliseconds DoublingDelay(std::chrono::milliseconds base,
                                               std::chrono::milliseconds cap, int attempt) {
  const int shift = std::clamp(attempt - 1, 0, 20);
  return std::min(cap, base * (int64_t{1} << shift));
}

// Reconnect delay after `failures` consecutive failures: doubling from
// 100 ms, capped at 10 s, with ±25% jitter from `random` (0..2^32-1) so
// shards do not reconnect in lockstep.
inline std::chrono::milliseconds BackoffDelay(int failures, uint32_t random) {
  const auto base = DoublingDelay(std::chrono::milliseconds(100), std::chrono::seconds(10), failures);
  const int64_t jitter = static_cast<int64_t>(random % 501) - 250;  // per mille, [-25%, +25%]
  return base + base * jitter / 1000;
}

// Reconnect delay while no upstream of the pool has a connection up (a
// total outage): the backoff above spares one bad upstream among good ones,
// but with none left every client gets SERVFAIL until one is back, so retry
// every ~kOutageRetry (±25%) instead: 100 ms, then 200, 250, 250, ... (a SYN
// four times a second per shard and upstream costs the upstream nothing;
// the target is answers within 1 s of its return).
inline constexpr std::chrono::milliseconds kOutageRetry{250};
inline std::chrono::milliseconds OutageBackoffDelay(int failures, uint32_t random) {
  const auto base = DoublingDelay(std::chrono::milliseconds(100), kOutageRetry, failures);
  const int64_t jitter = static_cast<int64_t>(random % 501) - 250;
  return base + base * jitter / 1000;
}

}  // namespace dotproxy::upstream
