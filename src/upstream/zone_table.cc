#include "dotproxy/upstream/zone_table.h"

#include <cstring>

namespace dotproxy::upstream {
namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
constexpr uint64_t kFnvPrime = 0x100000001b3ull;
constexpr int kMaxLabels = 127;       // a 255-byte name of one-letter labels
constexpr size_t kMaxWireName = 255;  // RFC 1035 §2.3.4

// RFC 4343: ASCII letters compare without case; every other byte (label
// lengths are <= 63, below 'A') is itself.
inline uint8_t Fold(uint8_t byte) {
  return static_cast<uint8_t>(byte >= 'A' && byte <= 'Z' ? byte | 0x20 : byte);
}

// Extends the hash of a suffix by the label in front of it (its length
// byte and letters).
inline uint64_t HashLabel(uint64_t hash, const uint8_t* label) {
  const uint8_t length = label[0];
  for (size_t i = 0; i <= length; ++i) hash = (hash ^ Fold(label[i])) * kFnvPrime;
  return hash;
}

inline size_t SlotOf(uint64_t hash, size_t mask) {
  hash ^= hash >> 29;
  hash *= 0xbf58476d1ce4e5b9ull;
  hash ^= hash >> 32;
  return static_cast<size_t>(hash) & mask;
}

bool HasLabelCount(const uint64_t (&mask)[2], int count) {
  return (mask[count >> 6] >> (count & 63)) & 1;
}

// Label starts of a wire name without its root label; false when
// malformed (or longer than the protocol allows).
bool SplitLabels(std::span<const uint8_t> name, uint8_t (&starts)[kMaxLabels], int& labels,
                 size_t& end) {
  labels = 0;
  size_t pos = 0;
  while (true) {
    if (pos >= name.size() || pos >= kMaxWireName) return false;
    const uint8_t length = name[pos];
    if (length == 0) break;
    if (length > 63 || labels == kMaxLabels) return false;
    starts[labels++] = static_cast<uint8_t>(pos);
    pos += 1 + size_t{length};
  }
  end = pos;
  return true;
}

}  // namespace

void ZoneTable::Add(std::string_view name, uint32_t group) {
  // To wire format, lower case: "corp.example" -> 4corp7example.
  std::string wire;
  size_t start = 0;
  while (start <= name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string_view::npos) dot = name.size();
    const size_t length = dot - start;
    if (length == 0 || length > 63) return;  // REQUIRES: a normalized name
    wire.push_back(static_cast<char>(length));
    for (size_t i = start; i < dot; ++i) wire.push_back(static_cast<char>(Fold(name[i])));
    start = dot + 1;
  }
  if (wire.empty() || wire.size() >= kMaxWireName) return;
  wire.push_back('\0');
  uint8_t starts[kMaxLabels];
  int labels = 0;
  size_t end = 0;
  const auto* bytes = reinterpret_cast<const uint8_t*>(wire.data());
  if (!SplitLabels({bytes, wire.size()}, starts, labels, end)) return;
  uint64_t hash = kFnvOffset;
  for (int i = labels - 1; i >= 0; --i) hash = HashLabel(hash, bytes + starts[i]);

  if ((zone_count_ + 1) * 2 > slots_.size()) Grow();
  const auto offset = static_cast<uint32_t>(names_.size());
  names_.append(wire.data(), end);
  if (!Insert(hash, offset, static_cast<uint16_t>(end), group)) {
    names_.resize(offset);  // already there: the first group stays
    return;
  }
  label_counts_[labels >> 6] |= uint64_t{1} << (labels & 63);
  ++zone_count_;
}

bool ZoneTable::Insert(uint64_t hash, uint32_t offset, uint16_t length, uint32_t group) {
  const size_t mask = slots_.size() - 1;
  for (size_t i = SlotOf(hash, mask);; i = (i + 1) & mask) {
    Slot& slot = slots_[i];
    if (slot.name_length == 0) {
      slot = {hash, offset, length, group};
      return true;
    }
    if (slot.hash == hash && slot.name_length == length &&
        std::memcmp(names_.data() + slot.name_offset, names_.data() + offset, length) == 0) {
      return false;
    }
  }
}

void ZoneTable::Grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.empty() ? 16 : old.size() * 2, Slot{});
  for (const Slot& slot : old) {
    if (slot.name_length != 0) Insert(slot.hash, slot.name_offset, slot.name_length, slot.group);
  }
}

uint32_t ZoneTable::Find(std::span<const uint8_t> name) const {
  if (zone_count_ == 0) return kRootGroup;
  uint8_t starts[kMaxLabels];
  int labels = 0;
  size_t end = 0;
  if (!SplitLabels(name, starts, labels, end)) return kRootGroup;
  // Every suffix's hash, the shortest first (each extends the next).
  uint64_t hashes[kMaxLabels];
  uint64_t hash = kFnvOffset;
  for (int i = labels - 1; i >= 0; --i) {
    hash = HashLabel(hash, name.data() + starts[i]);
    hashes[i] = hash;
  }
  const size_t mask = slots_.size() - 1;
  for (int i = 0; i < labels; ++i) {  // the longest suffix first
    if (!HasLabelCount(label_counts_, labels - i)) continue;
    const size_t length = end - starts[i];
    const uint8_t* suffix = name.data() + starts[i];
    for (size_t s = SlotOf(hashes[i], mask);; s = (s + 1) & mask) {
      const Slot& slot = slots_[s];
      if (slot.name_length == 0) break;
      if (slot.hash != hashes[i] || slot.name_length != length) continue;
      const auto* stored = reinterpret_cast<const uint8_t*>(names_.data() + slot.name_offset);
      size_t b = 0;
      while (b < length && Fold(suffix[b]) == stored[b]) ++b;
      if (b == length) return slot.group;
    }
  }
  return kRootGroup;
}

}  // namespace dotproxy::upstream
