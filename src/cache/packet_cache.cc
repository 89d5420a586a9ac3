#include "dotproxy/cache/packet_cache.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#include "src/cache/question_hash.h"

namespace dotproxy::cache {
namespace {

static_assert(std::is_trivially_destructible_v<uint64_t>);

// REQUIRES: entries <= kMaxCacheEntries (so this cannot overflow).
size_t TableSizeFor(size_t entries) {
  size_t size = 16;
  while (size < entries * 2) size <<= 1;
  return size;
}

// The MINIMUM of the SOA whose RDATA is answer[rdata, end), if that RDATA is
// what RFC 1035 §3.3.13 says: MNAME and RNAME, each ending inside it, then
// exactly five 32-bit fields (SERIAL .. MINIMUM, big-endian).
bool SoaMinimum(std::span<const uint8_t> answer, size_t rdata, size_t end, uint32_t& minimum) {
  const std::span<const uint8_t> through_rdata = answer.first(end);  // names cannot run past it
  size_t pos = dns::SkipName(through_rdata, rdata);                  // MNAME
  if (pos == 0) return false;
  pos = dns::SkipName(through_rdata, pos);  // RNAME
  if (pos == 0 || end - pos != 20) return false;
  minimum = dns::ReadU32(&answer[end - 4]);
  return true;
}

size_t WholePages(size_t bytes) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

}  // namespace

void MakeKey(const uint8_t* message, uint16_t question_length, bool has_edns, bool dnssec_ok,
             CacheKey& key) {
  key.question = {message + dns::kHeaderSize, question_length};
  key.flags = static_cast<uint8_t>((dns::header::RecursionDesired(message) ? kKeyRd : 0) |
                                   (dns::header::CheckingDisabled(message) ? kKeyCd : 0) |
                                   (dnssec_ok ? kKeyDo : 0) | (has_edns ? kKeyEdns : 0));
  key.hash = HashQuestion(key.question, key.flags, ProcessHashSeed());
}

void PacketCache::Mapping::Unmap() {
  if (address != nullptr) munmap(address, bytes);
  address = nullptr;
  bytes = 0;
}

int PacketCache::Map(Mapping& mapping, size_t bytes) {
  if (bytes == 0) return 0;
  void* address = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (address == MAP_FAILED) return errno;
  mapping.address = address;  // unmapped by the caller also when populating fails
  mapping.bytes = bytes;
  // A hint only: fails (EINVAL) on kernels without transparent huge pages.
  madvise(address, bytes, MADV_HUGEPAGE);
  // Fault it all in now (MADV_POPULATE_WRITE, Linux 5.14+): the cache's
  // memory is committed at start, as the operator sized it, and zeroing
  // fresh pages does not land on the query path while the cache fills.
  // EINVAL: an older kernel without it; pages then fault in on first use.
  // ENOMEM, EFAULT, EHWPOISON ...: the memory is not there; say so now.
  if (madvise(address, bytes, MADV_POPULATE_WRITE) != 0 && errno != EINVAL) return errno;
  return 0;
}

size_t PacketCache::MemoryBytes(size_t entries) {
  if (entries == 0) return 0;
  if (entries > kMaxCacheEntries) return SIZE_MAX;
  return WholePages(entries * sizeof(Entry)) + WholePages(entries * kMaxCachedAnswer) +
         WholePages(TableSizeFor(entries) * sizeof(uint64_t));
}

PacketCache::PacketCache(const CacheConfig& config, Unallocated) : config_(config) {}

absl::Status PacketCache::Allocate() {
  const size_t entries = config_.entries;
  if (entries == 0) return absl::OkStatus();
  const size_t table_size = TableSizeFor(entries);
  // Zero-filled by the kernel: a zero Entry is a free one, a zero cell empty.
  int error = Map(entries_mapping_, WholePages(entries * sizeof(Entry)));
  if (error == 0) error = Map(wire_mapping_, WholePages(entries * kMaxCachedAnswer));
  if (error == 0) error = Map(table_mapping_, WholePages(table_size * sizeof(uint64_t)));
  if (error != 0) {
    entries_mapping_.Unmap();
    wire_mapping_.Unmap();
    table_mapping_.Unmap();
    const size_t mib = (MemoryBytes(entries) + (size_t{1} << 20) - 1) >> 20;
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cannot commit %d MiB for %d cache entries: %s", mib, entries, std::strerror(error)));
  }
  entries_ = static_cast<Entry*>(entries_mapping_.address);
  wire_ = static_cast<uint8_t*>(wire_mapping_.address);
  table_ = static_cast<uint64_t*>(table_mapping_.address);
  table_mask_ = table_size - 1;
  capacity_ = entries;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PacketCache>> PacketCache::Create(const CacheConfig& config) {
  if (config.entries > kMaxCacheEntries) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d cache entries per shard is more than the %d one cache can index", config.entries,
        kMaxCacheEntries));
  }
  if (const int error = ProcessHashSeed().error; error != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot seed the cache hash: getrandom: ", std::strerror(error)));
  }
  std::unique_ptr<PacketCache> cache(new (std::nothrow) PacketCache(config, Unallocated{}));
  if (cache == nullptr) {
    return absl::ResourceExhaustedError("cannot allocate the packet cache object");
  }
  if (absl::Status status = cache->Allocate(); !status.ok()) return status;
  return cache;
}

PacketCache::PacketCache(const CacheConfig& config) : config_(config) {
  // Failure leaves capacity_ 0: Find misses, Insert refuses.
  if (config.entries <= kMaxCacheEntries && ProcessHashSeed().error == 0) (void)Allocate();
}

bool PacketCache::Matches(uint32_t entry, const CacheKey& key) {
  const Entry& e = entries_[entry];
  return e.hash == key.hash && e.flags == key.flags &&
         dns::QuestionsMatch({Wire(entry) + dns::kHeaderSize, e.question_length}, key.question);
}

size_t PacketCache::Probe(const CacheKey& key, bool& found) {
  size_t cell = key.hash & table_mask_;
  const uint32_t tag = Tag(key.hash);
  while (table_[cell] != 0) {
    // The tag filters out other keys without touching their entries.
    if (CellTag(table_[cell]) == tag && Matches(CellEntry(table_[cell]), key)) {
      found = true;
      return cell;
    }
    cell = (cell + 1) & table_mask_;
  }
  found = false;
  return cell;
}

void PacketCache::IndexRemove(uint32_t entry) {
  size_t cell = entries_[entry].hash & table_mask_;
  while (table_[cell] == 0 || CellEntry(table_[cell]) != entry) {
    if (table_[cell] == 0) return;  // not indexed
    cell = (cell + 1) & table_mask_;
  }
  // Backward-shift deletion keeps linear probing chains intact without
  // tombstones.
  size_t hole = cell;
  size_t next = (hole + 1) & table_mask_;
  while (table_[next] != 0) {
    const size_t home = entries_[CellEntry(table_[next])].hash & table_mask_;
    const bool movable = (hole <= next) ? (home <= hole || home > next) : (home <= hole && home > next);
    if (movable) {
      table_[hole] = table_[next];
      hole = next;
    }
    next = (next + 1) & table_mask_;
  }
  table_[hole] = 0;
}

Found PacketCache::Find(const CacheKey& key, uint32_t now) {
  Found result;
  if (capacity_ == 0) return result;
  bool found = false;
  const size_t cell = Probe(key, found);
  if (!found) return result;
  const uint32_t entry = CellEntry(table_[cell]);
  Entry& e = entries_[entry];
  result.entry = entry;
  if (now < e.expires_at) {
    e.referenced = true;
    result.freshness = Freshness::kFresh;
    // Last tenth of the TTL: refresh before it expires.
    result.prefetch_due = !e.prefetching && e.ttl >= 10 && (e.expires_at - now) * 10 <= e.ttl;
  } else if (now < e.stale_until) {
    result.freshness = Freshness::kStale;
  }
  return result;
}

size_t PacketCache::Serve(uint32_t entry, std::span<uint8_t> out, uint16_t id,
                          std::span<const uint8_t> question, size_t limit, uint32_t now,
                          bool stale) {
  const Entry& e = entries_[entry];
  if (out.size() < e.length || question.size() != e.question_length) return 0;
  uint8_t* wire = out.data();
  std::memcpy(wire, Wire(entry), e.length);
  dns::header::SetId(wire, id);
  std::memcpy(wire + dns::kHeaderSize, question.data(), question.size());
  const uint32_t age = now > e.inserted_at ? now - e.inserted_at : 0;
  for (uint16_t i = 0; i < e.ttl_count; ++i) {
    uint8_t* ttl = wire + e.ttl_offsets[i];
    const uint32_t original = dns::ReadU32(ttl);
    dns::WriteU32(ttl, stale ? config_.stale_ttl : (original > age ? original - age : 0));
  }
  size_t length = e.length;
  if (length > limit) length = dns::TruncateResponse(out, length, limit);
  return length;
}

uint32_t PacketCache::CacheTtl(std::span<const uint8_t> answer, uint16_t* ttl_offsets,
                               uint16_t& ttl_count) const {
  ttl_count = 0;
  const uint8_t* h = answer.data();
  if (dns::header::IsTruncated(h)) return 0;  // never cache partial answers
  const dns::Rcode rcode = dns::header::GetRcode(h);
  if (rcode == dns::Rcode::kServFail) return config_.servfail_ttl;
  if (rcode != dns::Rcode::kNoError && rcode != dns::Rcode::kNxDomain) return 0;

  size_t pos = dns::kHeaderSize + dns::UncompressedNameLength(answer, dns::kHeaderSize) + 4;
  const unsigned answers = dns::header::AnCount(h);
  const unsigned authority = dns::header::NsCount(h);
  const unsigned total = answers + authority + dns::header::ArCount(h);
  uint32_t min_ttl = UINT32_MAX;
  uint32_t negative_ttl = UINT32_MAX;  // from the SOA (RFC 2308 §5)
  for (unsigned i = 0; i < total; ++i) {
    const size_t start = pos;
    const size_t fixed = dns::SkipName(answer, pos);
    if (fixed == 0) return 0;
    pos = dns::SkipRecord(answer, start);
    if (pos == 0) return 0;
    const uint16_t type = dns::ReadU16(&answer[fixed]);
    if (type == dns::kTypeOpt) continue;  // its "TTL" is flags, not time
    if (ttl_count == kMaxTtlOffsets) return 0;
    ttl_offsets[ttl_count++] = static_cast<uint16_t>(fixed + 4);
    const uint32_t ttl = dns::ReadU32(&answer[fixed + 4]);
    if (i < answers + authority) min_ttl = std::min(min_ttl, ttl);
    // A malformed SOA (RDLENGTH < 22, names running past the RDATA, bytes
    // left over) gives no negative TTL: its "MINIMUM" would be whatever
    // bytes sit there (its own TTL or RDLENGTH when RDLENGTH < 4). We do
    // not fall back to the SOA's TTL alone: an upstream that sends a broken
    // SOA is not one whose NXDOMAIN/NODATA we want to pin for up to
    // negative_max_ttl; with no usable SOA the answer is not cached
    // (RFC 2308 §5), which costs only a round trip per query.
    uint32_t minimum = 0;
    if (i >= answers && i < answers + authority && type == dns::kTypeSoa &&
        SoaMinimum(answer, fixed + 10 /* TYPE CLASS TTL RDLENGTH */, pos, minimum)) {
      negative_ttl = std::min(ttl, minimum);
    }
  }
  uint32_t ttl;
  if (rcode == dns::Rcode::kNxDomain || answers == 0) {
    if (negative_ttl == UINT32_MAX) return 0;  // no SOA: do not cache (RFC 2308 §5)
    ttl = std::min(negative_ttl, config_.negative_max_ttl);
  } else {
    ttl = std::min(min_ttl, config_.max_ttl);
  }
  ttl = std::max(ttl, config_.min_ttl);
  return std::min(ttl, config_.max_ttl);
}

uint32_t PacketCache::TakeFreeEntry() {
  if (used_ < capacity_) return used_++;
  // CLOCK: skip (and clear) recently used entries, evict the first other.
  while (true) {
    Entry& e = entries_[clock_hand_];
    const uint32_t candidate = clock_hand_;
    clock_hand_ = (clock_hand_ + 1) % static_cast<uint32_t>(capacity_);
    if (e.in_use && e.referenced) {
      e.referenced = false;
      continue;
    }
    if (e.in_use) {
      IndexRemove(candidate);
      e.in_use = false;
      ++counters_.evictions;
      --counters_.entries;
    }
    return candidate;
  }
}

bool PacketCache::Insert(const CacheKey& key, std::span<const uint8_t> answer, uint32_t now) {
  if (capacity_ == 0 || answer.size() > kMaxCachedAnswer) return false;
  uint16_t offsets[kMaxTtlOffsets];
  uint16_t count = 0;
  const uint32_t ttl = CacheTtl(answer, offsets, count);
  if (ttl == 0) return false;

  bool found = false;
  size_t cell = Probe(key, found);
  // A brief upstream SERVFAIL must not replace a real (maybe stale) answer:
  // that answer is what serve-stale falls back to.
  if (found && dns::header::GetRcode(answer.data()) == dns::Rcode::kServFail) return false;
  uint32_t entry;
  if (found) {
    entry = CellEntry(table_[cell]);  // refresh in place
  } else {
    const uint64_t evictions = counters_.evictions;
    entry = TakeFreeEntry();
    // An eviction may have shifted cells (backward-shift deletion): only
    // then is the insertion point stale.
    if (counters_.evictions != evictions) cell = Probe(key, found);
    table_[cell] = MakeCell(entry, key.hash);
    ++counters_.entries;
  }
  Entry& e = entries_[entry];
  e.hash = key.hash;
  e.flags = key.flags;
  e.inserted_at = now;
  e.ttl = ttl;
  e.expires_at = now + ttl;
  e.stale_until = e.expires_at + config_.stale_window;
  e.length = static_cast<uint16_t>(answer.size());
  e.question_length = static_cast<uint16_t>(key.question.size());
  e.ttl_count = count;
  e.in_use = true;
  e.referenced = false;
  e.prefetching = false;
  std::memcpy(e.ttl_offsets, offsets, count * sizeof(uint16_t));
  uint8_t* wire = Wire(entry);
  std::memcpy(wire, answer.data(), answer.size());
  // The operator's bounds apply to what clients are told too, not only to
  // how long the entry lives (like Unbound's cache-min/max-ttl): each RR's
  // TTL is clamped. Within the bounds, RRs keep their own TTLs.
  const bool negative = dns::header::GetRcode(wire) == dns::Rcode::kNxDomain ||
                        dns::header::AnCount(wire) == 0;
  const uint32_t cap = negative ? std::min(config_.max_ttl, config_.negative_max_ttl) : config_.max_ttl;
  for (uint16_t i = 0; i < count; ++i) {
    uint8_t* field = wire + offsets[i];
    dns::WriteU32(field, std::min(std::max(dns::ReadU32(field), config_.min_ttl), cap));
  }
  return true;
}

void PacketCache::MarkPrefetching(uint32_t entry) { entries_[entry].prefetching = true; }

void PacketCache::PrefetchDone(const CacheKey& key) {
  if (capacity_ == 0) return;
  bool found = false;
  const size_t cell = Probe(key, found);
  if (found) entries_[CellEntry(table_[cell])].prefetching = false;
}

}  // namespace dotproxy::cache
