#include "dotproxy/control/alloc_counter.h"

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/memory.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace dotproxy::control {
namespace {

thread_local std::atomic<uint64_t>* heap_counter = nullptr;
thread_local std::atomic<uint64_t>* tls_counter = nullptr;

// Single writer per counter (its shard thread): load+store, no RMW.
inline void Count(std::atomic<uint64_t>* counter) {
  if (counter != nullptr) {
    counter->store(counter->load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
}

// wolfSSL 5.5.4 (Debian's build has no static I/O buffers) allocates a
// record buffer for every TLS write and for large reads, and frees it right
// after. Each shard thread therefore keeps small free lists of such blocks,
// by power-of-two size class, so in steady state wolfSSL reuses blocks
// instead of calling malloc. Only real mallocs are counted.
constexpr size_t kHeader = 16;  // keeps 16-byte alignment; holds class and size
constexpr int kMinClassShift = 6;   // 64 bytes
constexpr int kClasses = 12;        // up to 128 KiB
constexpr int kMaxCachedPerClass = 32;
constexpr int kUnpooled = 255;

struct FreeList {
  void* blocks[kMaxCachedPerClass];
  int count = 0;
};
thread_local FreeList free_lists[kClasses];

int ClassFor(size_t size) {
  const size_t total = size + kHeader;
  for (int c = 0; c < kClasses; ++c) {
    if (total <= (size_t{1} << (c + kMinClassShift))) return c;
  }
  return kUnpooled;
}

void* CountingMalloc(size_t size) {
  const int size_class = ClassFor(size);
  uint8_t* block = nullptr;
  if (size_class != kUnpooled && free_lists[size_class].count > 0) {
    FreeList& list = free_lists[size_class];
    block = static_cast<uint8_t*>(list.blocks[--list.count]);
  } else {
    Count(tls_counter);
    const size_t bytes = size_class != kUnpooled ? (size_t{1} << (size_class + kMinClassShift))
                                                 : size + kHeader;
    block = static_cast<uint8_t*>(std::malloc(bytes));
    if (block == nullptr) return nullptr;
  }
  block[0] = static_cast<uint8_t>(size_class);
  std::memcpy(block + 8, &size, sizeof(size));  // requested size, for realloc
  return block + kHeader;
}

void CountingFree(void* ptr) {
  if (ptr == nullptr) return;
  uint8_t* block = static_cast<uint8_t*>(ptr) - kHeader;
  const int size_class = block[0];
  if (size_class != kUnpooled && free_lists[size_class].count < kMaxCachedPerClass) {
    FreeList& list = free_lists[size_class];
    list.blocks[list.count++] = block;
    return;
  }
  std::free(block);
}

void* CountingRealloc(void* ptr, size_t size) {
  if (ptr == nullptr) return CountingMalloc(size);
  uint8_t* block = static_cast<uint8_t*>(ptr) - kHeader;
  const int size_class = block[0];
  if (size_class != kUnpooled && size + kHeader <= (size_t{1} << (size_class + kMinClassShift))) {
    return ptr;  // still fits its block
  }
  void* grown = CountingMalloc(size);
  if (grown == nullptr) return nullptr;
  size_t old_size;
  std::memcpy(&old_size, block + 8, sizeof(old_size));
  std::memcpy(grown, ptr, std::min(old_size, size));
  CountingFree(ptr);
  return grown;
}

}  // namespace

void SetThreadAllocationCounters(std::atomic<uint64_t>* heap, std::atomic<uint64_t>* tls) {
  heap_counter = heap;
  tls_counter = tls;
}

void CountHeapAllocation() { Count(heap_counter); }

void InstallTlsAllocationCounting() {
  wolfSSL_SetAllocators(&CountingMalloc, &CountingFree, &CountingRealloc);
}

}  // namespace dotproxy::control
