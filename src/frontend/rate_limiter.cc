#include "dotproxy/frontend/rate_limiter.h"

#include <netinet/in.h>

#include <algorithm>
#include <cstring>

namespace dotproxy::frontend {
namespace {

// The top `bits` of a 64-bit word.
uint64_t TopBits(int bits) {
  if (bits <= 0) return 0;
  if (bits >= 64) return ~uint64_t{0};
  return ~uint64_t{0} << (64 - bits);
}

uint64_t LoadBigEndian64(const uint8_t* bytes) {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = value << 8 | bytes[i];
  return value;
}

// Marks IPv4 keys so that they never equal an IPv6 prefix.
constexpr uint64_t kV4Tag = 0xffff'0000'0000'0000ull;

uint64_t Mix(uint64_t high, uint64_t low) {
  uint64_t x = high * 0x9e3779b97f4a7c15ull ^ low;
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 29;
  return x;
}

}  // namespace

RateLimiter::RateLimiter(const RateLimitSettings& settings, std::atomic<uint64_t>* evictions)
    : settings_(settings),
      exempt_(settings.exempt),
      interval_ns_(1'000'000'000 / std::max<uint32_t>(1, settings.qps)),
      tolerance_ns_(interval_ns_ *
                    (static_cast<int64_t>(settings.burst == 0 ? settings.qps : settings.burst) - 1)),
      v4_mask_(TopBits(settings.v4_prefix) >> 32),
      v6_high_mask_(TopBits(settings.v6_prefix)),
      v6_low_mask_(TopBits(settings.v6_prefix - 64)),
      table_(new Entry[kEntries]),
      evictions_(evictions) {}

RateLimiter::Entry& RateLimiter::Find(uint64_t high, uint64_t low, int64_t now_ns) {
  const size_t start = Mix(high, low) & (kEntries - 1);
  Entry* victim = nullptr;
  for (size_t i = 0; i < kProbe; ++i) {
    Entry& entry = table_[(start + i) & (kEntries - 1)];
    if (entry.arrival_ns != 0 && entry.key_high == high && entry.key_low == low) return entry;
    if (victim == nullptr || entry.arrival_ns < victim->arrival_ns) victim = &entry;
  }
  // Still above its rate: its budget starts over.
  if (victim->arrival_ns > now_ns && evictions_ != nullptr) {
    evictions_->store(evictions_->load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }
  *victim = Entry{high, low, 0, 0, 0};
  return *victim;
}

RateVerdict RateLimiter::Check(const sockaddr* source, int64_t now_ns) {
  uint64_t high = 0, low = 0;
  if (source->sa_family == AF_INET) {
    uint32_t address = 0;
    std::memcpy(&address, &reinterpret_cast<const sockaddr_in*>(source)->sin_addr, 4);
    high = kV4Tag;
    low = ntohl(address) & v4_mask_;
  } else if (source->sa_family == AF_INET6) {
    const uint8_t* bytes = reinterpret_cast<const sockaddr_in6*>(source)->sin6_addr.s6_addr;
    if (IN6_IS_ADDR_V4MAPPED(reinterpret_cast<const in6_addr*>(bytes))) {
      high = kV4Tag;
      low = (uint64_t{bytes[12]} << 24 | uint64_t{bytes[13]} << 16 | uint64_t{bytes[14]} << 8 |
             bytes[15]) & v4_mask_;
    } else {
      high = LoadBigEndian64(bytes) & v6_high_mask_;
      low = LoadBigEndian64(bytes + 8) & v6_low_mask_;
    }
  } else {
    return RateVerdict::kAllow;
  }
  if (!settings_.exempt.empty() && exempt_.Allows(source)) return RateVerdict::kAllow;
  Entry& entry = Find(high, low, now_ns);
  // GCRA: the query conforms when it is at most `tolerance` early.
  const int64_t arrival = std::max(entry.arrival_ns, now_ns);
  if (arrival - now_ns <= tolerance_ns_) {
    entry.arrival_ns = arrival + interval_ns_;
    return RateVerdict::kAllow;
  }
  ++entry.over;
  return settings_.slip != 0 && entry.over % settings_.slip == 0 ? RateVerdict::kSlip
                                                                  : RateVerdict::kDrop;
}

}  // namespace dotproxy::frontend
