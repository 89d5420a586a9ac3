#include "src/http/bounded_pool.h"

#include <sys/mman.h>

#include <cstring>

namespace dotproxy::http {
namespace {
constexpr uint32_t kMagic = 0xd0b10c55;
}

BoundedPool::BoundedPool(size_t capacity) {
  void* arena = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (arena == MAP_FAILED) return;
  arena_ = static_cast<uint8_t*>(arena);
  capacity_ = capacity;
}

BoundedPool::~BoundedPool() {
  if (arena_ != nullptr) munmap(arena_, capacity_);
}

int BoundedPool::ClassFor(size_t size) {
  const size_t need = size + sizeof(Header);
  int size_class = 0;
  while ((size_t{1} << (size_class + kMinShift)) < need) {
    if (++size_class == kClasses) return -1;
  }
  return size_class;
}

BoundedPool::Header* BoundedPool::Take(int size_class) {
  if (FreeBlock* block = free_[size_class]) {
    free_[size_class] = block->next;
    return reinterpret_cast<Header*>(block);
  }
  const size_t block_size = size_t{1} << (size_class + kMinShift);
  // Every block is a power of two of at least 32 bytes, so the unused end
  // stays 32-byte aligned.
  if (capacity_ - bump_ >= block_size) {
    Header* header = reinterpret_cast<Header*>(arena_ + bump_);
    bump_ += block_size;
    return header;
  }
  // Split the smallest larger free block; the upper halves go to the free
  // lists below it.
  for (int larger = size_class + 1; larger < kClasses; ++larger) {
    FreeBlock* block = free_[larger];
    if (block == nullptr) continue;
    free_[larger] = block->next;
    uint8_t* base = reinterpret_cast<uint8_t*>(block);
    for (int c = larger - 1; c >= size_class; --c) {
      FreeBlock* upper = reinterpret_cast<FreeBlock*>(base + (size_t{1} << (c + kMinShift)));
      upper->magic = 0;
      upper->next = free_[c];
      free_[c] = upper;
    }
    return reinterpret_cast<Header*>(base);
  }
  return nullptr;
}

void* BoundedPool::Allocate(size_t size) {
  const int size_class = arena_ == nullptr ? -1 : ClassFor(size);
  Header* header = size_class < 0 ? nullptr : Take(size_class);
  if (header == nullptr) {
    ++failures_;
    return nullptr;
  }
  header->size_class = static_cast<uint32_t>(size_class);
  header->magic = kMagic;
  in_use_ += size_t{1} << (size_class + kMinShift);
  if (in_use_ > high_water_) high_water_ = in_use_;
  return header + 1;
}

void* BoundedPool::AllocateZeroed(size_t count, size_t size) {
  if (size != 0 && count > SIZE_MAX / size) return nullptr;
  void* block = Allocate(count * size);
  if (block != nullptr) std::memset(block, 0, count * size);
  return block;
}

void* BoundedPool::Reallocate(void* block, size_t size) {
  if (block == nullptr) return Allocate(size);
  Header* header = static_cast<Header*>(block) - 1;
  const size_t capacity = (size_t{1} << (header->size_class + kMinShift)) - sizeof(Header);
  if (size <= capacity) return block;
  void* grown = Allocate(size);
  if (grown == nullptr) return nullptr;
  std::memcpy(grown, block, capacity);
  Free(block);
  return grown;
}

void BoundedPool::Free(void* block) {
  if (block == nullptr) return;
  Header* header = static_cast<Header*>(block) - 1;
  if (header->magic != kMagic) return;  // not ours or freed twice: leak it rather than corrupt
  const int size_class = static_cast<int>(header->size_class);
  in_use_ -= size_t{1} << (size_class + kMinShift);
  FreeBlock* free_block = reinterpret_cast<FreeBlock*>(header);
  free_block->magic = 0;
  free_block->next = free_[size_class];
  free_[size_class] = free_block;
}

void BoundedPool::Reset() {
  if (arena_ != nullptr && bump_ > 0) madvise(arena_, bump_, MADV_DONTNEED);
  bump_ = 0;
  in_use_ = 0;
  high_water_ = 0;
  for (FreeBlock*& head : free_) head = nullptr;
}

}  // namespace dotproxy::http
