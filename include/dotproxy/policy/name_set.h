#pragma once
// Domain names as lower-case wire bytes, and NameSet: a set of such names
// with one 32-bit value each, for the local data, block and allow lists.
//
// A NameSet is built on the control thread (Insert grows it) and then only
// read (Find), by any number of shard threads at once: nothing in Find
// writes or allocates. Layout: an open-addressing table (linear probing,
// power-of-two size, load at most 3/4) of 12-byte slots {32-bit hash tag,
// arena offset, value}; the names themselves live once in one byte arena
// as [length][wire name], so a tag match is confirmed by one memcmp.
//
//   NameSet set;
//   uint8_t wire[dns::kMaxNameLength]; size_t length;
//   if (TextToWireName("ads.example", wire, length).ok()) set.Insert({wire, length}) = 7;
//   const uint32_t* value = set.Find({wire, length}, NameSet::Hash({wire, length}));

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace dotproxy::policy {

// Parses a domain name in presentation form ("Ads.Example.", "example",
// "." for the root) into lower-case uncompressed wire form. Refuses empty
// labels, labels over 63 bytes, names over 255 wire bytes, and bytes other
// than letters, digits, '-' and '_' (no escapes: list files never need
// them). `out` holds at least dns::kMaxNameLength bytes.
absl::Status TextToWireName(std::string_view text, uint8_t* out, size_t& length);

// Presentation form of a wire name (for logs and tests): "ads.example".
std::string WireNameToText(std::span<const uint8_t> wire);

class NameSet {
 public:
  static constexpr uint32_t kNoValue = UINT32_MAX;

  // Hash of a lower-case wire name (8 bytes at a time). Stable within the
  // process; not keyed: names are the operator's, only lookups are the
  // clients'.
  static uint64_t Hash(std::span<const uint8_t> name);

  // Build time. The value of `name` (kNoValue when it is new), to be set
  // by the caller. REQUIRES: `name` is lower-case wire form.
  uint32_t& Insert(std::span<const uint8_t> name);

  // Query time: the value of `name`, or null. `hash` is Hash(name).
  const uint32_t* Find(std::span<const uint8_t> name, uint64_t hash) const {
    if (capacity_ == 0) return nullptr;
    if (!filter_.empty()) {
      const uint64_t bits = FilterBits(hash);
      if ((filter_[(hash >> 40) & filter_mask_] & bits) != bits) return nullptr;
    }
    const uint32_t tag = static_cast<uint32_t>(hash >> 32) | 1;  // 0 marks an empty slot
    for (size_t i = static_cast<size_t>(hash) & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.tag == 0) return nullptr;
      if (slot.tag == tag && SameName(slot.name, name)) return &slot.value;
    }
  }

  // Starts loading what Find(…, hash) will read (the filter word and the
  // first slot), so that the lookups of a name's suffixes wait for memory
  // once, together, rather than one after the other.
  void Prefetch(uint64_t hash) const {
    if (capacity_ == 0) return;
    if (!filter_.empty()) __builtin_prefetch(&filter_[(hash >> 40) & filter_mask_]);
    __builtin_prefetch(&slots_[static_cast<size_t>(hash) & mask_]);
  }

  size_t size() const { return size_; }
  // Bytes held: the slot table and the name arena.
  size_t MemoryBytes() const {
    return capacity_ * sizeof(Slot) + arena_.capacity() + filter_.capacity() * sizeof(uint64_t);
  }
  // After the last Insert: gives back the arena's spare capacity and builds
  // the filter that turns most misses away before the table is touched.
  void Seal();

 private:
  struct Slot {
    uint32_t tag = 0;   // upper hash bits | 1; 0: empty
    uint32_t name = 0;  // offset of [length][bytes] in arena_
    uint32_t value = kNoValue;
  };
  bool SameName(uint32_t offset, std::span<const uint8_t> name) const {
    const uint8_t* stored = arena_.data() + offset;
    return stored[0] == name.size() && std::memcmp(stored + 1, name.data(), name.size()) == 0;
  }
  void Grow();
  // The slot table: transparent huge pages when it spans several (a
  // million names is 24 MiB: 4 KiB pages would cost a TLB miss per probe).
  struct FreeSlots {
    void operator()(Slot* slots) const { std::free(slots); }
  };
  static Slot* AllocateSlots(size_t count);

  // A blocked Bloom filter (one 64-bit word per name, three bits, about 8
  // bits a name): 1 MiB for a million names stays in the CPU caches where
  // the 24 MiB table does not, and most query names are in no list.
  static uint64_t FilterBits(uint64_t hash) {
    return (uint64_t{1} << ((hash >> 20) & 63)) | (uint64_t{1} << ((hash >> 26) & 63)) |
           (uint64_t{1} << ((hash >> 32) & 63));
  }
  std::vector<uint64_t> filter_;
  size_t filter_mask_ = 0;

  std::unique_ptr<Slot[], FreeSlots> slots_;
  size_t capacity_ = 0;
  std::vector<uint8_t> arena_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace dotproxy::policy
