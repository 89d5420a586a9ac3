#pragma once
// A bounded single-producer/single-consumer ring of variable-length records:
// a shard (the producer) copies a dnstap event in, the dnstap writer thread
// (the consumer) reads it out. Fixed memory sized at construction; no
// locks, no allocation, no waiting on either side: a record that does not
// fit is refused (the caller drops and counts it).
//
//   ByteRing ring(1 << 20);
//   if (std::span<uint8_t> space = ring.Reserve(n); !space.empty()) {
//     ...fill space...; ring.Commit();
//   }
//   // consumer thread:
//   while (std::span<const uint8_t> record = ring.Peek(); !record.empty()) {
//     ...read record...; ring.Pop();
//   }
//
// Records are 8-byte aligned and contiguous: one that would cross the end
// of the buffer leaves a padding record there and starts at offset 0.
// Positions are monotonic 64-bit byte counts (they never wrap in practice);
// each side caches the other's position and reloads it only when it seems
// full (producer) or empty (consumer), so the common case touches no
// shared cache line but its own.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>

namespace dotproxy::dnstap {

class ByteRing {
 public:
  // REQUIRES: `capacity` a power of two ≥ 64.
  explicit ByteRing(size_t capacity)
      : capacity_(capacity), mask_(capacity - 1), buffer_(new uint64_t[capacity / 8]()) {}
  ByteRing(const ByteRing&) = delete;
  ByteRing& operator=(const ByteRing&) = delete;

  size_t capacity() const { return capacity_; }
  // The largest record ever accepted: half the ring, so that one always
  // fits after a padding record once the ring has drained.
  size_t max_record() const { return capacity_ / 2 - kFrameBytes; }

  // Producer: `length` bytes of contiguous space, or empty when the ring
  // has no room for it now (or ever: length > max_record()). At most one
  // reservation is open; Commit() publishes it.
  std::span<uint8_t> Reserve(size_t length) {
    const size_t frame = Align(length + kFrameBytes);
    if (length > max_record()) return {};
    const uint64_t tail = tail_.load(std::memory_order_relaxed);
    const size_t offset = tail & mask_;
    const size_t to_end = capacity_ - offset;
    const size_t padding = frame > to_end ? to_end : 0;
    if (tail + padding + frame - cached_head_ > capacity_) {
      cached_head_ = head_.load(std::memory_order_acquire);
      if (tail + padding + frame - cached_head_ > capacity_) return {};
    }
    if (padding != 0) WriteFrame(offset, static_cast<uint32_t>(padding), kPadding);
    const size_t start = (tail + padding) & mask_;
    WriteFrame(start, static_cast<uint32_t>(frame), static_cast<uint32_t>(length));
    pending_tail_ = tail + padding + frame;
    return {bytes() + start + kFrameBytes, length};
  }
  void Commit() { tail_.store(pending_tail_, std::memory_order_release); }

  // Consumer: the oldest record, or empty when there is none.
  std::span<const uint8_t> Peek() {
    while (true) {
      const uint64_t head = head_.load(std::memory_order_relaxed);
      if (head == cached_tail_) {
        cached_tail_ = tail_.load(std::memory_order_acquire);
        if (head == cached_tail_) return {};
      }
      const size_t offset = head & mask_;
      uint32_t frame = 0, length = 0;
      std::memcpy(&frame, bytes() + offset, 4);
      std::memcpy(&length, bytes() + offset + 4, 4);
      if (length == kPadding) {
        head_.store(head + frame, std::memory_order_release);
        continue;
      }
      peeked_frame_ = frame;
      return {bytes() + offset + kFrameBytes, length};
    }
  }
  // Consumer: frees the record Peek() returned.
  void Pop() {
    head_.store(head_.load(std::memory_order_relaxed) + peeked_frame_, std::memory_order_release);
  }

  // Bytes in use, for tests: either side may call it, the answer is a snapshot.
  size_t used() const {
    return tail_.load(std::memory_order_acquire) - head_.load(std::memory_order_acquire);
  }

 private:
  // Each record: uint32 frame size (header included, aligned), uint32
  // payload length (kPadding: skip to the end of the buffer); host order.
  static constexpr size_t kFrameBytes = 8;
  static constexpr uint32_t kPadding = UINT32_MAX;
  static size_t Align(size_t n) { return (n + 7) & ~size_t{7}; }
  uint8_t* bytes() { return reinterpret_cast<uint8_t*>(buffer_.get()); }
  void WriteFrame(size_t offset, uint32_t frame, uint32_t length) {
    std::memcpy(bytes() + offset, &frame, 4);
    std::memcpy(bytes() + offset + 4, &length, 4);
  }

  const size_t capacity_;
  const size_t mask_;
  std::unique_ptr<uint64_t[]> buffer_;
  // Consumer side.
  alignas(64) std::atomic<uint64_t> head_{0};
  uint64_t cached_tail_ = 0;
  uint32_t peeked_frame_ = 0;
  // Producer side.
  alignas(64) std::atomic<uint64_t> tail_{0};
  uint64_t cached_head_ = 0;
  uint64_t pending_tail_ = 0;
};

}  // namespace dotproxy::dnstap
