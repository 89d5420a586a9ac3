#pragma once
// Per-shard DNS packet cache: whole wire answers, served by copy and patch.
//
// Keyed by the lower-cased QNAME, QTYPE, QCLASS and the query bits that
// change the answer (RD, CD, DO, and whether the client spoke EDNS, since an
// answer to a non-EDNS client carries no OPT). EDNS cookies and padding are
// not in the key. A hit copies the stored answer and patches the client's
// ID, the client's question bytes (0x20 case) and the TTLs, aged by the time
// spent in cache at offsets computed once at insert. All memory is taken
// by Create() (entries, index, answer storage); nothing allocates per
// query. Eviction is CLOCK (approximate LRU). One owner thread: no locks.
// Memory: PacketCache::MemoryBytes(entries), committed by Create(): 1416 to
// 1432 bytes per entry (1232 answer storage + 168 entry record + 16 to 32
// index), e.g. 142 MB for 100000 entries.
//
//   auto cache = cache::PacketCache::Create(config);  // at shard start
//   if (!cache.ok()) return cache.status();
//   cache::CacheKey key;
//   cache::MakeKey(query, info, key);
//   auto found = cache.Find(key, now_s);
//   if (found.freshness == Freshness::kFresh) len = cache.Serve(found.entry, ...);

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "dotproxy/dns/message.h"

namespace dotproxy::cache {

struct CacheConfig {
  size_t entries = 0;                 // this shard's share of --cache-size
  uint32_t min_ttl = 0;               // seconds; answers live at least this long
  uint32_t max_ttl = 86400;           // and at most this long
  uint32_t negative_max_ttl = 3600;   // NXDOMAIN/NODATA cap (RFC 2308 §5)
  uint32_t servfail_ttl = 5;          // upstream SERVFAIL, briefly (RFC 2308 §7.1)
  uint32_t stale_window = 86400;      // serve-stale window past expiry (RFC 8767)
  uint32_t stale_ttl = 30;            // TTL of stale answers (RFC 8767 §4)
};

// Largest answer kept; larger ones (rare, and TCP-bound anyway) are not cached.
inline constexpr size_t kMaxCachedAnswer = 1232;
// RRs whose TTL is patched on a hit; answers with more are not cached.
inline constexpr size_t kMaxTtlOffsets = 64;
// Most entries one cache holds: entry numbers are 32-bit, and the index
// (at least two cells per entry, a power of two) must stay within 2^32
// cells so that its bits never overlap the tag's (see PacketCache::Tag).
inline constexpr size_t kMaxCacheEntries = size_t{1} << 31;

struct CacheKey {
  // Keyed with a per-process random seed (src/cache/question_hash.h): the
  // index comes from the low bits, the tag from the high 32.
  uint64_t hash = 0;
  uint8_t flags = 0;  // kKeyRd | kKeyCd | kKeyDo | kKeyEdns
  std::span<const uint8_t> question;  // borrowed: QNAME + QTYPE + QCLASS as sent
};

inline constexpr uint8_t kKeyRd = 1;
inline constexpr uint8_t kKeyCd = 2;
inline constexpr uint8_t kKeyDo = 4;
inline constexpr uint8_t kKeyEdns = 8;

// Builds the key of a query (its header at `message`, question right after).
// `question` must stay valid while the key is used.
void MakeKey(const uint8_t* message, uint16_t question_length, bool has_edns, bool dnssec_ok,
             CacheKey& key);

enum class Freshness : uint8_t { kMiss, kFresh, kStale };

struct Found {
  Freshness freshness = Freshness::kMiss;
  uint32_t entry = 0;
  // A fresh hit in the last tenth of its TTL with no refresh running yet:
  // the caller should refresh it in the background (then MarkPrefetching).
  bool prefetch_due = false;
};

struct CacheCounters {
  uint64_t evictions = 0;
  uint64_t entries = 0;
};

class PacketCache {
 public:
  // Builds a cache of `config.entries` entries and commits all of its memory
  // (MemoryBytes) now, so that it cannot run out later on the query path.
  // Control plane: call at shard start. Errors: kInvalidArgument when
  // entries > kMaxCacheEntries; kResourceExhausted ("cannot commit N MiB for
  // M cache entries: <strerror>") when the memory cannot be had;
  // kUnavailable when the hash seed could not be read (getrandom(2)).
  static absl::StatusOr<std::unique_ptr<PacketCache>> Create(const CacheConfig& config);
  // A reload: new TTL bounds and stale policy for what is stored and served
  // from now on; the entries (and their count) are kept.
  void SetPolicy(const CacheConfig& policy) {
    const size_t entries = config_.entries;
    config_ = policy;
    config_.entries = entries;
  }

  // Bytes a cache of `entries` entries commits: entry records, the index and
  // answer storage, each rounded up to whole pages (what Create maps). 0 for
  // 0 entries; SIZE_MAX above kMaxCacheEntries (no such cache is built).
  static size_t MemoryBytes(size_t entries);

  // Deprecated: use Create(), which reports failure. Kept until src/shard
  // switches. When the memory cannot be had this does not throw: it leaves a
  // cache with capacity() 0, which caches nothing.
  explicit PacketCache(const CacheConfig& config);
  PacketCache(const PacketCache&) = delete;
  PacketCache& operator=(const PacketCache&) = delete;

  Found Find(const CacheKey& key, uint32_t now);

  // Writes entry `entry` into `out` for a client: `id`, the client's
  // `question` bytes, TTLs aged to `now` (or stale_ttl when `stale`), cut to
  // `limit` bytes with TC=1 if larger. Returns the length (0 if `out` is too
  // small).
  size_t Serve(uint32_t entry, std::span<uint8_t> out, uint16_t id,
               std::span<const uint8_t> question, size_t limit, uint32_t now, bool stale);

  // Caches `answer` (a response to the query `key` describes) according to
  // the TTL policy. Returns false when the answer is not cacheable.
  bool Insert(const CacheKey& key, std::span<const uint8_t> answer, uint32_t now);

  void MarkPrefetching(uint32_t entry);
  // Clears the refresh mark of the entry for `key`, if still cached.
  void PrefetchDone(const CacheKey& key);

  const CacheCounters& counters() const { return counters_; }
  size_t capacity() const { return capacity_; }

  // The TTL the policy gives `answer`, or 0 when it must not be cached.
  // Also fills `ttl_offsets` (count in `ttl_count`). Exposed for tests.
  uint32_t CacheTtl(std::span<const uint8_t> answer, uint16_t* ttl_offsets,
                    uint16_t& ttl_count) const;

 private:
  struct Entry {
    uint64_t hash = 0;
    uint32_t inserted_at = 0;
    uint32_t expires_at = 0;
    uint32_t stale_until = 0;
    uint32_t ttl = 0;
    uint16_t length = 0;
    uint16_t question_length = 0;
    uint16_t ttl_count = 0;
    uint8_t flags = 0;
    bool in_use = false;
    bool referenced = false;
    bool prefetching = false;
    uint16_t ttl_offsets[kMaxTtlOffsets];
  };

  uint8_t* Wire(uint32_t entry) { return wire_ + size_t{entry} * kMaxCachedAnswer; }
  // The cell index is hash & table_mask_ (the low bits; the table has at
  // most 2^32 cells), the tag the high 32 bits: no bit serves both, so keys
  // sharing a cell still differ in tag but for chance (2^-32).
  static uint32_t Tag(uint64_t hash) { return static_cast<uint32_t>(hash >> 32); }
  static uint64_t MakeCell(uint32_t entry, uint64_t hash) {
    return uint64_t{Tag(hash)} << 32 | (entry + 1);
  }
  static uint32_t CellEntry(uint64_t cell) { return static_cast<uint32_t>(cell) - 1; }
  static uint32_t CellTag(uint64_t cell) { return static_cast<uint32_t>(cell >> 32); }
  bool Matches(uint32_t entry, const CacheKey& key);
  // Index of the table cell holding `key`'s entry, or the empty cell where
  // it would go.
  size_t Probe(const CacheKey& key, bool& found);
  void IndexRemove(uint32_t entry);
  uint32_t TakeFreeEntry();

  // Anonymous mapping, transparent huge pages requested (a large cache is
  // read at random, and 4 KiB pages would make every lookup a TLB miss),
  // populated at construction.
  struct Mapping {
    void* address = nullptr;
    size_t bytes = 0;
    void Unmap();
    ~Mapping() { Unmap(); }
  };
  // Maps `bytes` (whole pages) zero-filled into `mapping` and faults them
  // in. Returns 0 or the errno of the step that failed.
  static int Map(Mapping& mapping, size_t bytes);

  // A cache with no memory yet (capacity_ 0) ...
  struct Unallocated {};
  PacketCache(const CacheConfig& config, Unallocated);
  // ... gets `config_.entries` entries' worth here.
  absl::Status Allocate();

  CacheConfig config_;
  size_t capacity_ = 0;
  Mapping entries_mapping_;
  Mapping wire_mapping_;
  Mapping table_mapping_;
  Entry* entries_ = nullptr;
  uint8_t* wire_ = nullptr;  // capacity_ * kMaxCachedAnswer
  // Index cells: high 32 bits a hash tag, low 32 bits entry index + 1;
  // 0 = empty. Linear probing.
  uint64_t* table_ = nullptr;
  size_t table_mask_ = 0;
  uint32_t used_ = 0;   // entries ever handed out (prefix of entries_)
  uint32_t clock_hand_ = 0;
  CacheCounters counters_;
};

}  // namespace dotproxy::cache
