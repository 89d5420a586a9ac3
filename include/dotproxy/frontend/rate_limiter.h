#pragma once
// Per-client rate limiting: a client is its source address cut to a prefix
// (24 bits for IPv4, 56 for IPv6 by default, as Knot Resolver and BIND's
// RRL count them), allowed `qps` queries per second plus `burst` at once.
// The forwarder asks before it answers anything, cache hits included.
//
// One per shard, single-threaded, fixed-size and allocation-free after
// construction: a table of kEntries 32-byte entries (2 MiB) indexed by a
// hash of the prefix, probed over kProbe slots. The budget is GCRA (the
// "virtual scheduling" form of a token bucket): an entry keeps only the
// theoretical arrival time of the client's next query. A prefix not in the
// table takes the probed entry with the earliest arrival time: a client
// idle for a second has its full budget anyway, so evicting it loses
// nothing; an entry still above its rate is evicted only when every probed
// slot is (counted: a flood of prefixes can refresh a limited client's
// budget, at worst once per kProbe new prefixes landing on its slots).
//
//   RateLimiter limiter(settings);
//   switch (limiter.Check(source, now_ns)) { case kAllow: ...; case kSlip: ... }

#include <sys/socket.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "dotproxy/frontend/acl.h"

namespace dotproxy::frontend {

struct RateLimitSettings {
  uint32_t qps = 0;         // REQUIRES: > 0
  uint32_t burst = 0;       // queries at once; 0: as many as qps
  int v4_prefix = 24;
  int v6_prefix = 56;
  uint32_t slip = 2;        // every slip-th over-limit query is kSlip; 0: never
  std::vector<Cidr> exempt;
};

enum class RateVerdict : uint8_t {
  kAllow,
  kSlip,  // over the limit: answer with TC=1 (UDP) so a spoofed victim can retry over TCP
  kDrop,  // over the limit: no answer (UDP) / REFUSED (TCP)
};

class RateLimiter {
 public:
  static constexpr size_t kEntries = 65536;
  static constexpr size_t kProbe = 4;
  static constexpr size_t kMemoryBytes = kEntries * 32;

  // `evictions` counts entries replaced while still above their rate (see
  // above); borrowed, may be null.
  RateLimiter(const RateLimitSettings& settings, std::atomic<uint64_t>* evictions);

  // One query from `source` (IPv4, IPv6 or IPv4-mapped IPv6) at `now_ns`
  // (a monotonic clock). Exempt sources are always allowed.
  RateVerdict Check(const sockaddr* source, int64_t now_ns);


 private:
  struct Entry {
    uint64_t key_high = 0;
    uint64_t key_low = 0;
    int64_t arrival_ns = 0;  // 0: empty
    uint32_t over = 0;       // over-limit queries, for slip
    uint32_t unused = 0;
  };
  static_assert(sizeof(Entry) == 32);

  Entry& Find(uint64_t high, uint64_t low, int64_t now_ns);

  RateLimitSettings settings_;
  Acl exempt_;
  int64_t interval_ns_;   // 1 s / qps
  int64_t tolerance_ns_;  // (burst - 1) intervals
  uint64_t v4_mask_;
  uint64_t v6_high_mask_, v6_low_mask_;
  std::unique_ptr<Entry[]> table_;
  std::atomic<uint64_t>* evictions_;
};

}  // namespace dotproxy::frontend
