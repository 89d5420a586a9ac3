#pragma once
// Per-connection map from upstream query ID to the shard's query slot.
//
// Each upstream connection owns one table, so IDs only need to be unique per
// connection (RFC 7766 §7: responses on a stream are matched by ID). IDs are
// chosen at random among the free ones so an off-path observer of the
// plaintext side learns nothing from them, and so a stale or forged answer is
// unlikely to hit a live slot. One owner thread (the shard); no locks.

#include <sys/random.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace dotproxy::upstream {

// xoshiro128**: a fast non-cryptographic PRNG, seeded from the kernel. Good
// enough for ID spreading (the TLS channel provides integrity).
class FastRng {
 public:
  FastRng() {
    if (getrandom(state_, sizeof(state_), 0) != sizeof(state_) ||
        (state_[0] | state_[1] | state_[2] | state_[3]) == 0) {
      state_[0] = 0x9e3779b9u;
      state_[1] = 0x243f6a88u;
      state_[2] = 0xb7e15162u;
      state_[3] = 0x85a308d3u;
    }
  }
  uint32_t Next() {
    const uint32_t result = Rotl(state_[1] * 5, 7) * 9;
    const uint32_t t = state_[1] << 9;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = Rotl(state_[3], 11);
    return result;
  }

 private:
  static uint32_t Rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }
  uint32_t state_[4];
};

class IdTable {
 public:
  static constexpr uint32_t kFree = UINT32_MAX;
  static constexpr size_t kIds = 65536;

  IdTable() : slots_(new uint32_t[kIds]) { Clear(); }

  // Binds a random free ID to `slot` and returns it in `id`. Returns false
  // only when the table is full.
  bool Insert(uint32_t slot, FastRng& rng, uint16_t& id) {
    if (size_ == kIds) return false;
    // With the in-flight caps used here (hundreds per connection) a random
    // probe almost always hits a free ID; bound the probes, then scan.
    for (int attempt = 0; attempt < 16; ++attempt) {
      const uint16_t candidate = static_cast<uint16_t>(rng.Next());
      if (slots_[candidate] == kFree) return Bind(candidate, slot, id);
    }
    for (uint32_t candidate = rng.Next() & 0xffff, n = 0; n < kIds; ++n) {
      const uint16_t c = static_cast<uint16_t>(candidate + n);
      if (slots_[c] == kFree) return Bind(c, slot, id);
    }
    return false;
  }

  // Returns the slot bound to `id`, or kFree.
  uint32_t Lookup(uint16_t id) const { return slots_[id]; }

  void Erase(uint16_t id) {
    if (slots_[id] != kFree) {
      slots_[id] = kFree;
      --size_;
    }
  }

  void Clear() {
    for (size_t i = 0; i < kIds; ++i) slots_[i] = kFree;
    size_ = 0;
  }

  size_t size() const { return size_; }

 private:
  bool Bind(uint16_t id_value, uint32_t slot, uint16_t& id) {
    slots_[id_value] = slot;
    ++size_;
    id = id_value;
    return true;
  }

  std::unique_ptr<uint32_t[]> slots_;
  size_t size_ = 0;
};

}  // namespace dotproxy::upstream
