#pragma once
// Tells a burst from overload for a queue of work that waits: CoDel's test
// (Nichols and Jacobson, RFC 8289), that a good queue drains within an
// interval and a standing one only adds delay. A queue whose oldest element
// has not been young (waited less than half of overload_wait) for
// standing_after stands; while it stands, what has waited overload_wait is
// shed, otherwise only what has waited max_wait. Used for queries waiting in
// a UDP socket's receive buffer (frontend) and for upstream capacity
// (forwarder), with the same settings, so a query's budget is the same
// wherever it waits. One owner thread.

#include <chrono>

#include "dotproxy/io/clock.h"

namespace dotproxy::io {

struct StandingQueueSettings {
  std::chrono::nanoseconds standing_after = std::chrono::milliseconds(100);
  std::chrono::nanoseconds overload_wait = std::chrono::milliseconds(20);
  std::chrono::nanoseconds max_wait = std::chrono::milliseconds(200);
};

class StandingQueue {
 public:
  explicit StandingQueue(const StandingQueueSettings& settings = {},
                         Clock::time_point now = Clock::time_point{})
      : settings_(settings), last_short_(now) {}

  void set_settings(const StandingQueueSettings& settings) { settings_ = settings; }

  // The oldest waiting element has waited `oldest_wait` at `now` (an empty
  // queue: zero).
  void Observe(Clock::time_point now, std::chrono::nanoseconds oldest_wait) {
    if (oldest_wait < settings_.overload_wait / 2) last_short_ = now;
  }
  bool Standing(Clock::time_point now) const {
    return now - last_short_ >= settings_.standing_after;
  }
  // Elements that have waited this long are shed.
  std::chrono::nanoseconds ShedAfter(Clock::time_point now) const {
    return Standing(now) ? settings_.overload_wait : settings_.max_wait;
  }

 private:
  StandingQueueSettings settings_;
  Clock::time_point last_short_;
};

}  // namespace dotproxy::io
