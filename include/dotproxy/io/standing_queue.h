#pragma once
// Tells a burst from overload for a queue of work that waits: CoDel's test
// (RFC 8289), that a good queue drains within an interval and a standing one
// only adds delay. An observation is young when the oldest element has
// waited less than half of overload_wait. The queue begins to stand when no
// observation was young for standing_after and that interval held at least
// min_old observations, and stops when none was old for
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
  // An owner that cannot observe its queue empty (a UDP socket read by a
  // multishot receive says nothing when it runs dry) asks for more than one
  // old observation: a standing socket queue is read thousands of times an
  // interval, while two stragglers that each met a busy loop are no queue.
  int min_old = 1;
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
    // loop started is not a standing queue), and a queue that stood has
    // drained (CoDel leaves its dropping state when the queue empties):
    // a lone query after a lull is not shed at the short bound on the
    // strength of a flood that ended before it.
    if (now - last_observed_ >= settings_.standing_after) {
      last_young_ = now;
      old_since_young_ = 0;
      standing_ = false;
    }
    last_observed_ = now;
    if (oldest_wait < settings_.overload_wait / 2) {
      last_young_ = now;
      old_since_young_ = 0;
    } else {
      last_old_ = now;
      ++old_since_young_;
    }
    if (!standing_ && now - last_young_ >= settings_.standing_after &&
        old_since_young_ >= settings_.min_old) {
      standing_ = true;
    }
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
  int old_since_young_ = 0;
  bool standing_ = false;
};

}  // namespace dotproxy::io
