#pragma once
// Which forward zone a query's name falls in: the zone with the longest
// matching suffix, label-wise and case-insensitive (RFC 4343), looked up
// on the name in wire format straight from the query, without allocating.
//
//   ZoneTable table;
//   table.Add("corp.example", 1);   // control side, before sharing
//   table.Add("cluster.local", 2);
//   ...
//   uint32_t group = table.Find(wire_name);  // 0 (the root's) when none
//
// How: one open-addressing hash of every zone, keyed by a hash of its
// wire-format suffix. A lookup hashes every suffix of the name in one pass
// from its last label back (each suffix hash extends the next shorter one,
// so the whole name costs one pass over its bytes), then probes from the
// longest suffix down, skipping label counts no zone has (a 128-bit mask);
// the first hit, confirmed by comparing the bytes, wins. The cost follows
// the name's label count, not the number of zones: thousands of zones
// cost what ten do, bar the cache misses of a larger array.
//
// Built off the shard thread (at start and on reload), then only read:
// safe to share between shards once built.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dotproxy::upstream {

class ZoneTable {
 public:
  static constexpr uint32_t kRootGroup = 0;

  // Adds `name` (text, lower or mixed case, no trailing dot, not the root,
  // as config::NormalizeZoneName leaves it) as a zone served by `group`.
  // A name added twice keeps its first group.
  void Add(std::string_view name, uint32_t group);

  // The group of the longest zone `name` (a wire-format name: length-
  // prefixed labels ending in the root label, uncompressed, as in a
  // question) is in or below; kRootGroup when none. A name that runs past
  // its span or is malformed goes to the root group.
  uint32_t Find(std::span<const uint8_t> name) const;

  size_t size() const { return zone_count_; }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t name_offset = 0;  // into names_; name_length 0: empty slot
    uint16_t name_length = 0;  // wire bytes of the suffix, without the root label
    uint32_t group = 0;
  };

  void Grow();
  bool Insert(uint64_t hash, uint32_t offset, uint16_t length, uint32_t group);

  std::vector<Slot> slots_;  // power-of-two size, at most half full
  std::string names_;        // lower-case wire suffixes, back to back
  // Bit n set: some zone has n labels (1..127).
  uint64_t label_counts_[2] = {0, 0};
  size_t zone_count_ = 0;
};

}  // namespace dotproxy::upstream
