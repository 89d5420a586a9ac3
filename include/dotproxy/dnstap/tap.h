#pragma once
// A shard's end of dnstap: it copies events into its own ring for the
// writer thread (writer.h). Log() never waits, never allocates and never
// blocks: when the ring is full (the writer fell behind, or the reader is
// gone) the event is dropped and counted. Shard thread only, except the
// ring's consumer side and `written`, which are the writer thread's.
//
//   if (tap != nullptr && tap->wants(MessageType::kClientQuery)) {
//     tap->Log(header, wire);
//   }

#include <atomic>
#include <cstdint>
#include <cstring>
#include <span>

#include "dotproxy/dnstap/event.h"
#include "dotproxy/dnstap/ring.h"

namespace dotproxy::dnstap {

// Each shard's ring: 2 MiB, about 12,000 events of a typical 100-byte
// message (a 64-byte header each), or 31 of the largest (64 KB TCP) ones.
inline constexpr size_t kRingBytesPerShard = size_t{2} << 20;

// Counters of one tap, single-writer relaxed atomics: `dropped` by the
// shard, `written` and `lost` by the writer thread. Null until attached
// (main points them into the shard's stats); then never changed.
struct TapCounters {
  std::atomic<uint64_t>* dropped = nullptr;  // ring full: never queued
  std::atomic<uint64_t>* written = nullptr;  // handed to Frame Streams
  std::atomic<uint64_t>* lost = nullptr;     // in a write that failed
};

class Tap {
 public:
  explicit Tap(size_t ring_bytes) : ring_(ring_bytes) {}

  bool wants(MessageType type) const { return (mask_ & Bit(type)) != 0; }
  // Shard thread: which types are logged from now on (a reload).
  void set_mask(MessageMask mask) { mask_ = mask; }
  void set_counters(const TapCounters& counters) { counters_ = counters; }
  const TapCounters& counters() const { return counters_; }

  // Shard thread: queues the event, or drops and counts it.
  void Log(EventHeader header, std::span<const uint8_t> message) {
    header.message_length = static_cast<uint32_t>(message.size());
    std::span<uint8_t> space = ring_.Reserve(sizeof(EventHeader) + message.size());
    if (space.empty()) {
      if (counters_.dropped != nullptr) Bump(*counters_.dropped);
      return;
    }
    std::memcpy(space.data(), &header, sizeof header);
    if (!message.empty()) std::memcpy(space.data() + sizeof header, message.data(), message.size());
    ring_.Commit();
  }

  ByteRing& ring() { return ring_; }

  static void Bump(std::atomic<uint64_t>& counter, uint64_t n = 1) {
    counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }

 private:
  ByteRing ring_;
  MessageMask mask_ = kAllMessages;
  TapCounters counters_;
};

}  // namespace dotproxy::dnstap
