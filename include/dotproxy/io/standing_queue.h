#pragma once
// Tells a burst from overload for a queue of work that waits: CoDel's test
// (RFC 8289), that a good queue drains within an interval and a standing one
// only adds delay. An observation is young when the oldest element has
// waited less than half of overload_wait. The queue begins to stand when no
// observation was young for standing_after, and stops when none was old for
// standing_after (the same interval both ways, so that one lull in a flood
// or one slow moment in normal load does not flip it). While it stands,
// what has waited overload_wait is shed, otherwise what has waited
// max_wait. Used for queries waiting for upstream capacity (forwarder) and
// in a UDP socket's receive buffer (frontend), with the same settings, so a
// query's budget is the same wherever it waits. One owner thread.

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
      : settings_(settings), last_young_(now), last_old_(now), last_observed_(now) {}

  void set_settings(const StandingQueueSettings& settings) { settings_ = settings; }

  // The oldest waiting element has waited `oldest_wait` at `now` (an empty
  // queue: zero).
  void Observe(Clock::time_point now, std::chrono::nanoseconds oldest_wait) {
    // Nothing observed for an interval: the queue was empty meanwhile (an
    // idle socket has nothing to read), so the interval was young, whatever
    // the first element after it says (one datagram queued before the
    // loop started is not a standing queue).
    if (now - last_observed_ >= settings_.standing_after) last_young_ = now;
    last_observed_ = now;
    if (oldest_wait < settings_.overload_wait / 2) {
      last_young_ = now;
    } else {
      last_old_ = now;
    }
    if (!standing_ && now - last_young_ >= settings_.standing_after) standing_ = true;
    if (standing_ && now - last_old_ >= settings_.standing_after) standing_ = false;
  }
  // As of the last observation.
  bool standing() const { return standing_; }
  // Elements that have waited this long are shed.
  std::chrono::nanoseconds ShedAfter() const {
    return standing_ ? settings_.overload_wait : settings_.max_wait;
  }
  const StandingQueueSettings& settings() const { return settings_; }

 private:
  StandingQueueSettings settings_;
  Clock::time_point last_young_;
  Clock::time_point last_old_;
  Clock::time_point last_observed_;
  bool standing_ = false;
};

}  // namespace dotproxy::io
