#pragma once
// A fixed-capacity allocator for one HTTP/2 connection: nghttp2 allocates
// through it (nghttp2_mem), and so do the answers waiting to be framed.
// One arena, reserved once (mmap, committed as touched), carved into
// power-of-two blocks with per-size free lists; a free list that is empty
// takes a block from the arena's unused end, else splits a larger free
// block. No coalescing: a connection's allocations repeat the same few
// sizes, so freed blocks are reused as they are. Exhaustion returns null
// (nghttp2 then fails the session with NGHTTP2_ERR_NOMEM): memory per
// connection is bounded by the capacity whatever the peer does. Reset()
// forgets everything and gives the pages back. Not thread-safe (one
// connection, one shard thread).

#include <cstddef>
#include <cstdint>

namespace dotproxy::http {

class BoundedPool {
 public:
  explicit BoundedPool(size_t capacity);
  ~BoundedPool();
  BoundedPool(const BoundedPool&) = delete;
  BoundedPool& operator=(const BoundedPool&) = delete;

  // 16-byte aligned, or null when the pool cannot hold `size` more bytes.
  void* Allocate(size_t size);
  void* AllocateZeroed(size_t count, size_t size);
  // Same block when `size` still fits it; null (old block kept) on failure.
  void* Reallocate(void* block, size_t size);
  void Free(void* block);
  // Forgets every block (their owner is gone) and returns the pages.
  void Reset();

  bool ok() const { return arena_ != nullptr; }
  size_t capacity() const { return capacity_; }
  size_t in_use() const { return in_use_; }          // bytes of blocks handed out
  size_t high_water() const { return high_water_; }  // most in_use ever, since Reset
  uint64_t failures() const { return failures_; }    // allocations refused

 private:
  static constexpr int kMinShift = 5;  // smallest block 32 bytes (header included)
  static constexpr int kClasses = 27;  // up to 2^31
  struct Header {
    uint32_t size_class;
    uint32_t magic;
    uint64_t pad;  // keeps the payload 16-byte aligned
  };
  // A free block keeps the header's layout (magic 0) so that a second
  // Free of it is recognised.
  struct FreeBlock {
    uint32_t size_class;
    uint32_t magic;
    FreeBlock* next;
  };
  static int ClassFor(size_t size);
  Header* Take(int size_class);

  uint8_t* arena_ = nullptr;
  size_t capacity_ = 0;
  size_t bump_ = 0;
  size_t in_use_ = 0;
  size_t high_water_ = 0;
  uint64_t failures_ = 0;
  FreeBlock* free_[kClasses] = {};
};

}  // namespace dotproxy::http
