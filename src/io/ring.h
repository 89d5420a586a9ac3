#pragma once
// RAII wrappers for a shard's io_uring and its provided-buffer ring.
//
// Both must be created, used and destroyed by the one thread that owns the
// shard (the ring is set up with IORING_SETUP_SINGLE_ISSUER).

#include <liburing.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace dotproxy::io {

class Ring {
 public:
  Ring() = default;
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  ~Ring();

  // Creates the ring with `entries` SQEs and `cq_entries` CQEs. Tries the
  // single-issuer, deferred-task-run setup first (completions are processed
  // only when this thread waits, which batches them), then falls back to a
  // plain ring on kernels that refuse those flags.
  absl::Status Init(unsigned entries, unsigned cq_entries);

  io_uring* get() { return &ring_; }

  // Returns an SQE, submitting queued ones first if the SQ is full. Never
  // null once Init succeeded (submission frees the queue).
  io_uring_sqe* GetSqe();

 private:
  io_uring ring_{};
  bool initialized_ = false;
};

// A provided-buffer ring (IORING_REGISTER_PBUF_RING): the kernel picks a free
// buffer for each datagram a multishot recvmsg receives. liburing 2.3 has no
// io_uring_setup_buf_ring, so the ring memory is allocated and registered
// here.
class BufferRing {
 public:
  BufferRing() = default;
  BufferRing(const BufferRing&) = delete;
  BufferRing& operator=(const BufferRing&) = delete;
  ~BufferRing();

  // REQUIRES: `count` is a power of two <= 32768.
  absl::Status Init(Ring& ring, uint16_t group_id, unsigned count, unsigned buffer_size);

  uint8_t* Buffer(uint16_t id) { return buffers_ + size_t{id} * buffer_size_; }
  unsigned buffer_size() const { return buffer_size_; }
  uint16_t group_id() const { return group_id_; }

  // Hands buffer `id` back to the kernel. Returns are published in bulk by
  // Publish(), once per loop iteration.
  void Recycle(uint16_t id) {
    io_uring_buf_ring_add(ring_, Buffer(id), buffer_size_, id, mask_, pending_++);
  }
  void Publish() {
    if (pending_ == 0) return;
    io_uring_buf_ring_advance(ring_, pending_);
    pending_ = 0;
  }

 private:
  Ring* owner_ = nullptr;
  io_uring_buf_ring* ring_ = nullptr;
  size_t ring_bytes_ = 0;
  uint8_t* buffers_ = nullptr;
  unsigned count_ = 0;
  unsigned buffer_size_ = 0;
  int mask_ = 0;
  int pending_ = 0;
  uint16_t group_id_ = 0;
};

}  // namespace dotproxy::io
