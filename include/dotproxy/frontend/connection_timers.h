#pragma once
// The two clocks of a stream room's connections (TCP and TLS alike, RFC
// 7766 §6.2.3): the idle timer, restarted by every read and send, and the
// message timer, which starts with an incomplete message's first byte (or
// a TLS handshake's start) and is not extended by bytes trickling in, so a
// slowloris client is closed `message_timeout` after it began however
// slowly it sends. Each clock is a list in time order, so expiry and the
// search for an idle connection to evict look at the oldest only.
//
// Indexed by the room's client slot; sized once (Resize), allocation-free
// after. The room decides what to close: ExpiredIdle, ExpiredMessage and
// IdleVictim name slots.
// Shard thread only.

#include <chrono>
#include <cstdint>
#include <vector>

#include "dotproxy/io/index_list.h"
#include "dotproxy/io/clock.h"

namespace dotproxy::frontend {

class ConnectionTimers {
 public:
  using TimePoint = io::Clock::time_point;

  ConnectionTimers() = default;
  ConnectionTimers(const ConnectionTimers&) = delete;  // the lists point into entries_
  ConnectionTimers& operator=(const ConnectionTimers&) = delete;

  void Resize(size_t slots);

  // Activity: the slot goes to the back of the idle list.
  void Touch(uint32_t slot, TimePoint now);
  // The message timer: Start (re)starts it now, Stop ends it.
  void StartMessage(uint32_t slot, TimePoint now);
  void StopMessage(uint32_t slot) { message_.Remove(slot); }
  bool MessageTimed(uint32_t slot) const { return message_.Contains(slot); }
  TimePoint message_since(uint32_t slot) const { return entries_[slot].message_since; }
  // Closing: off both clocks.
  void Forget(uint32_t slot) {
    idle_.Remove(slot);
    message_.Remove(slot);
  }

  // The oldest slot idle for `idle_timeout`, else the oldest whose message
  // timer has run `message_timeout`; io::kNoIndex when none. The room
  // closes it (which Forgets it) and asks again.
  uint32_t ExpiredIdle(TimePoint now, std::chrono::milliseconds idle_timeout) const;
  uint32_t ExpiredMessage(TimePoint now, std::chrono::milliseconds message_timeout) const;

  // Near a room's cap: the least recently active of the 16 oldest slots
  // that `waits_for_nothing` (no query in flight, no answer unsent) and is
  // not mid-message (unless for a second: a real client's query arrives
  // whole), never `newcomer`; io::kNoIndex when none.
  template <typename WaitsForNothing>
  uint32_t IdleVictim(uint32_t newcomer, TimePoint now, WaitsForNothing waits_for_nothing) const {
    int looked = 0;
    for (uint32_t slot = idle_.head(); slot != io::kNoIndex && looked < 16; ++looked) {
      const bool mid_message = message_.Contains(slot) &&
                               now - entries_[slot].message_since < std::chrono::seconds(1);
      if (slot != newcomer && !mid_message && waits_for_nothing(slot)) return slot;
      slot = idle_.Next(slot);
    }
    return io::kNoIndex;
  }

 private:
  struct Entry {
    TimePoint last_activity{};
    io::IndexLinks idle_links;  // by last activity, oldest first
    TimePoint message_since{};
    io::IndexLinks message_links;  // by message_since, oldest first
  };

  std::vector<Entry> entries_;
  io::IndexList<Entry, &Entry::idle_links> idle_{&entries_};
  io::IndexList<Entry, &Entry::message_links> message_{&entries_};
};

}  // namespace dotproxy::frontend
