#include "dotproxy/frontend/connection_timers.h"

namespace dotproxy::frontend {

void ConnectionTimers::Resize(size_t slots) {
  entries_.assign(slots, Entry{});
  idle_ = io::IndexList<Entry, &Entry::idle_links>(&entries_);
  message_ = io::IndexList<Entry, &Entry::message_links>(&entries_);
}

void ConnectionTimers::Touch(uint32_t slot, TimePoint now) {
  entries_[slot].last_activity = now;
  idle_.Remove(slot);
  idle_.PushBack(slot);
}

void ConnectionTimers::StartMessage(uint32_t slot, TimePoint now) {
  entries_[slot].message_since = now;
  message_.Remove(slot);
  message_.PushBack(slot);
}

uint32_t ConnectionTimers::ExpiredIdle(TimePoint now,
                                       std::chrono::milliseconds idle_timeout) const {
  if (idle_.empty() || now - entries_[idle_.head()].last_activity < idle_timeout) {
    return io::kNoIndex;
  }
  return idle_.head();
}

uint32_t ConnectionTimers::ExpiredMessage(TimePoint now,
                                          std::chrono::milliseconds message_timeout) const {
  if (message_.empty() || now - entries_[message_.head()].message_since < message_timeout) {
    return io::kNoIndex;
  }
  return message_.head();
}

}  // namespace dotproxy::frontend
