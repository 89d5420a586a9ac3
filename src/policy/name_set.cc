#include "dotproxy/policy/name_set.h"

#include <sys/mman.h>

#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "dotproxy/dns/message.h"

namespace dotproxy::policy {

absl::Status TextToWireName(std::string_view text, uint8_t* out, size_t& length) {
  if (text == ".") {
    out[0] = 0;
    length = 1;
    return absl::OkStatus();
  }
  if (!text.empty() && text.back() == '.') text.remove_suffix(1);
  if (text.empty()) return absl::InvalidArgumentError("empty name");
  size_t at = 0;
  while (true) {
    const size_t dot = text.find('.');
    const std::string_view label = text.substr(0, dot);
    if (label.empty()) return absl::InvalidArgumentError("empty label (two dots in a row?)");
    if (label.size() > 63) return absl::InvalidArgumentError("label longer than 63 bytes");
    if (at + 1 + label.size() + 1 > dns::kMaxNameLength) {
      return absl::InvalidArgumentError("name longer than 255 bytes on the wire");
    }
    out[at++] = static_cast<uint8_t>(label.size());
    for (const char c : label) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_';
      if (!ok) {
        return absl::InvalidArgumentError(
            absl::StrCat("character '", absl::string_view(&c, 1), "' not allowed in a name"));
      }
      out[at++] = dns::AsciiLower(static_cast<uint8_t>(c));
    }
    if (dot == std::string_view::npos) break;
    text.remove_prefix(dot + 1);
  }
  out[at++] = 0;
  length = at;
  return absl::OkStatus();
}

std::string WireNameToText(std::span<const uint8_t> wire) {
  std::string text;
  for (size_t i = 0; i < wire.size() && wire[i] != 0; i += 1 + wire[i]) {
    if (!text.empty()) text += '.';
    text.append(reinterpret_cast<const char*>(wire.data() + i + 1),
                std::min<size_t>(wire[i], wire.size() - i - 1));
  }
  return text.empty() ? "." : text;
}

uint64_t NameSet::Hash(std::span<const uint8_t> name) {
  // A multiply-xorshift over 8-byte words (the tail zero-padded), then a
  // final avalanche: a few ns for a typical name.
  constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
  uint64_t h = name.size() * kMul;
  size_t i = 0;
  for (; i + 8 <= name.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, name.data() + i, 8);
    h = (h ^ word) * kMul;
    h ^= h >> 29;
  }
  if (i < name.size()) {
    uint64_t word = 0;
    std::memcpy(&word, name.data() + i, name.size() - i);
    h = (h ^ word) * kMul;
    h ^= h >> 29;
  }
  h ^= h >> 32;
  h *= 0xD6E8FEB86659FD93ull;
  h ^= h >> 32;
  return h;
}

NameSet::Slot* NameSet::AllocateSlots(size_t count) {
  constexpr size_t kHugePage = size_t{2} << 20;
  const size_t bytes = count * sizeof(Slot);
  void* memory = nullptr;
  if (bytes >= kHugePage) {
    memory = std::aligned_alloc(kHugePage, (bytes + kHugePage - 1) / kHugePage * kHugePage);
    // A hint: without THP (or with it off) plain pages serve as well.
    if (memory != nullptr) (void)::madvise(memory, bytes, MADV_HUGEPAGE);
  } else {
    memory = std::malloc(bytes);
  }
  if (memory == nullptr) throw std::bad_alloc();  // control thread, at build
  Slot* slots = static_cast<Slot*>(memory);
  for (size_t i = 0; i < count; ++i) new (&slots[i]) Slot();
  return slots;
}

uint32_t& NameSet::Insert(std::span<const uint8_t> name) {
  filter_.clear();  // Seal() again after the last Insert
  if ((size_ + 1) * 4 > capacity_ * 3) Grow();
  const uint64_t hash = Hash(name);
  const uint32_t tag = static_cast<uint32_t>(hash >> 32) | 1;
  size_t i = static_cast<size_t>(hash) & mask_;
  for (;; i = (i + 1) & mask_) {
    Slot& slot = slots_[i];
    if (slot.tag == 0) break;
    if (slot.tag == tag && SameName(slot.name, name)) return slot.value;
  }
  Slot& slot = slots_[i];
  slot.tag = tag;
  slot.name = static_cast<uint32_t>(arena_.size());
  arena_.push_back(static_cast<uint8_t>(name.size()));
  arena_.insert(arena_.end(), name.begin(), name.end());
  slot.value = kNoValue;
  ++size_;
  return slot.value;
}

void NameSet::Grow() {
  const size_t old_capacity = capacity_;
  capacity_ = capacity_ == 0 ? 64 : capacity_ * 2;
  std::unique_ptr<Slot[], FreeSlots> old = std::move(slots_);
  slots_.reset(AllocateSlots(capacity_));
  mask_ = capacity_ - 1;
  for (size_t o = 0; o < old_capacity; ++o) {
    const Slot& slot = old[o];
    if (slot.tag == 0) continue;
    const uint8_t* stored = arena_.data() + slot.name;
    const uint64_t hash = Hash({stored + 1, stored[0]});
    size_t i = static_cast<size_t>(hash) & mask_;
    while (slots_[i].tag != 0) i = (i + 1) & mask_;
    slots_[i] = slot;
  }
}

}  // namespace dotproxy::policy

namespace dotproxy::policy {

void NameSet::Seal() {
  arena_.shrink_to_fit();
  filter_.clear();
  // Small sets live in the caches anyway.
  if (size_ < 4096) return;
  size_t words = 1;
  while (words * 8 < size_) words *= 2;  // a word for every 8 names or fewer
  filter_.assign(words, 0);
  filter_mask_ = words - 1;
  for (size_t i = 0; i < capacity_; ++i) {
    if (slots_[i].tag == 0) continue;
    const uint8_t* stored = arena_.data() + slots_[i].name;
    const uint64_t hash = Hash({stored + 1, stored[0]});
    filter_[(hash >> 40) & filter_mask_] |= FilterBits(hash);
  }
}

}  // namespace dotproxy::policy
