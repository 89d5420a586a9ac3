#include "dotproxy/upstream/connection.h"

#include <algorithm>

namespace dotproxy::upstream {

const char* ToString(ConnectionState state) {
  switch (state) {
    case ConnectionState::kIdle: return "idle";
    case ConnectionState::kConnecting: return "connecting";
    case ConnectionState::kHandshaking: return "handshaking";
    case ConnectionState::kReady: return "ready";
    case ConnectionState::kClosing: return "closing";
  }
  return "?";
}

std::chrono::milliseconds BackoffDelay(int failures, uint32_t random) {
  constexpr int64_t kBaseMs = 100;
  constexpr int64_t kCapMs = 10000;
  const int shift = std::clamp(failures - 1, 0, 16);
  const int64_t base = std::min(kCapMs, kBaseMs << shift);
  // Jitter in [-25%, +25%].
  const int64_t jitter = static_cast<int64_t>(random % 501) - 250;  // per mille
  return std::chrono::milliseconds(base + base * jitter / 1000);
}

}  // namespace dotproxy::upstream
