#include "dotproxy/cache/packet_cache.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "src/cache/question_hash.h"

namespace dotproxy::cache {
namespace {

using Bytes = std::vector<uint8_t>;

void U16(Bytes& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v >> 8));
  b.push_back(static_cast<uint8_t>(v));
}
void U32(Bytes& b, uint32_t v) {
  U16(b, static_cast<uint16_t>(v >> 16));
  U16(b, static_cast<uint16_t>(v));
}

Bytes Query(const std::string& label, uint16_t id = 0x1111, uint16_t qtype = 1) {
  Bytes q = {static_cast<uint8_t>(id >> 8), static_cast<uint8_t>(id), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
  q.push_back(static_cast<uint8_t>(label.size()));
  for (char c : label) q.push_back(static_cast<uint8_t>(c));
  q.push_back(4);
  for (char c : std::string("test")) q.push_back(static_cast<uint8_t>(c));
  q.push_back(0);
  U16(q, qtype);
  U16(q, 1);
  return q;
}

size_t QuestionLength(const Bytes& q) { return dns::UncompressedNameLength(q, 12) + 4; }

// An answer with `ttls.size()` A records, or NXDOMAIN with a SOA when empty.
Bytes Answer(const Bytes& query, std::vector<uint32_t> ttls, uint8_t rcode = 0,
             uint32_t soa_ttl = 600, uint32_t soa_minimum = 60) {
  Bytes a(query.begin(), query.end());
  a[2] |= 0x80;
  a[3] = static_cast<uint8_t>(0x80 | rcode);
  a[7] = static_cast<uint8_t>(ttls.size());
  for (uint32_t ttl : ttls) {
    a.insert(a.end(), {0xc0, 12});
    U16(a, 1);
    U16(a, 1);
    U32(a, ttl);
    U16(a, 4);
    a.insert(a.end(), {192, 0, 2, 1});
  }
  if (ttls.empty() && rcode != 2) {
    a[9] = 1;  // NSCOUNT: SOA
    a.insert(a.end(), {0xc0, 12});
    U16(a, dns::kTypeSoa);
    U16(a, 1);
    U32(a, soa_ttl);
    U16(a, 2 + 20);
    a.insert(a.end(), {0, 0});  // MNAME, RNAME: root
    U32(a, 1);                   // serial
    U32(a, 2);                   // refresh
    U32(a, 3);                   // retry
    U32(a, 4);                   // expire
    U32(a, soa_minimum);         // minimum
  }
  return a;
}

CacheConfig SmallCache(size_t entries = 8) {
  CacheConfig config;
  config.entries = entries;
  return config;
}

std::unique_ptr<PacketCache> MustCreate(const CacheConfig& config) {
  absl::StatusOr<std::unique_ptr<PacketCache>> cache = PacketCache::Create(config);
  if (!cache.ok()) {
    ADD_FAILURE() << cache.status();
    std::abort();
  }
  return *std::move(cache);
}

TEST(PacketCacheTest, MissThenHitWithClientIdCaseAndAgedTtl) {
  std::unique_ptr<PacketCache> owned = MustCreate(SmallCache());
  PacketCache& cache = *owned;
  Bytes query = Query("www");
  CacheKey key;
  MakeKey(query.data(), static_cast<uint16_t>(QuestionLength(query)), false, false, key);
  EXPECT_EQ(cache.Find(key, 100).freshness, Freshness::kMiss);
  ASSERT_TRUE(cache.Insert(key, Answer(query, {300, 200}), 100));

  Bytes client = Query("WwW", 0xbeef);  // 0x20 case
  CacheKey client_key;
  MakeKey(client.data(), static_cast<uint16_t>(QuestionLength(client)), false, false, client_key);
  EXPECT_EQ(client_key.hash, key.hash);
  const Found found = cache.Find(client_key, 150);
  ASSERT_EQ(found.freshness, Freshness::kFresh);
  uint8_t out[1500];
  const size_t n = cache.Serve(found.entry, out, 0xbeef, client_key.question, 512, 150, false);
  ASSERT_GT(n, 0u);
  EXPECT_EQ(dns::header::Id(out), 0xbeef);
  EXPECT_EQ(0, std::memcmp(out + 12, client.data() + 12, QuestionLength(client)));
  const size_t first_ttl = 12 + QuestionLength(client) + 2 + 4;
  EXPECT_EQ(dns::ReadU32(out + first_ttl), 250u);
  EXPECT_EQ(dns::ReadU32(out + first_ttl + 16), 150u);
}

TEST(PacketCacheTest, KeyIncludesTypeAndDnssecBits) {
  std::unique_ptr<PacketCache> owned = MustCreate(SmallCache());
  PacketCache& cache = *owned;
  Bytes a = Query("x", 1, 1);
  Bytes aaaa = Query("x", 1, 28);
  CacheKey key_a, key_aaaa, key_a_do;
  MakeKey(a.data(), static_cast<uint16_t>(QuestionLength(a)), false, false, key_a);
  MakeKey(aaaa.data(), static_cast<uint16_t>(QuestionLength(aaaa)), false, false, key_aaaa);
  MakeKey(a.data(), static_cast<uint16_t>(QuestionLength(a)), true, true, key_a_do);
  ASSERT_TRUE(cache.Insert(key_a, Answer(a, {60}), 0));
  EXPECT_EQ(cache.Find(key_a, 1).freshness, Freshness::kFresh);
  EXPECT_EQ(cache.Find(key_aaaa, 1).freshness, Freshness::kMiss);
  EXPECT_EQ(cache.Find(key_a_do, 1).freshness, Freshness::kMiss);
}

TEST(PacketCacheTest, ExpiresThenServesStaleWithinWindow) {
  CacheConfig config = SmallCache();
  config.stale_window = 100;
  std::unique_ptr<PacketCache> owned = MustCreate(config);
  PacketCache& cache = *owned;
  Bytes q = Query("s");
  CacheKey key;
  MakeKey(q.data(), static_cast<uint16_t>(QuestionLength(q)), false, false, key);
  ASSERT_TRUE(cache.Insert(key, Answer(q, {60}), 0));
  EXPECT_EQ(cache.Find(key, 59).freshness, Freshness::kFresh);
  const Found stale = cache.Find(key, 60);
  ASSERT_EQ(stale.freshness, Freshness::kStale);
  uint8_t out[1500];
  const size_t n = cache.Serve(stale.entry, out, 7, key.question, 512, 60, true);
  ASSERT_GT(n, 0u);
  EXPECT_EQ(dns::ReadU32(out + 12 + QuestionLength(q) + 6), 30u);  // RFC 8767 TTL
  EXPECT_EQ(cache.Find(key, 160).freshness, Freshness::kMiss);
}

TEST(PacketCacheTest, NegativeAnswersUseSoaMinimumWithCap) {
  CacheConfig config = SmallCache();
  config.negative_max_ttl = 30;
  std::unique_ptr<PacketCache> owned = MustCreate(config);
  PacketCache& cache = *owned;
  Bytes q = Query("nx");
  uint16_t offsets[kMaxTtlOffsets];
  uint16_t count;
  EXPECT_EQ(cache.CacheTtl(Answer(q, {}, 3, 600, 20), offsets, count), 20u);
  EXPECT_EQ(cache.CacheTtl(Answer(q, {}, 3, 10, 20), offsets, count), 10u);
  EXPECT_EQ(cache.CacheTtl(Answer(q, {}, 3, 600, 900), offsets, count), 30u);  // capped
  EXPECT_EQ(count, 1u);
}

TEST(PacketCacheTest, PositiveTtlIsMinimumClampedByPolicy) {
  CacheConfig config = SmallCache();
  config.min_ttl = 10;
  config.max_ttl = 100;
  std::unique_ptr<PacketCache> owned = MustCreate(config);
  PacketCache& cache = *owned;
  Bytes q = Query("p");
  uint16_t offsets[kMaxTtlOffsets];
  uint16_t count;
  EXPECT_EQ(cache.CacheTtl(Answer(q, {50, 40}), offsets, count), 40u);
  EXPECT_EQ(count, 2u);
  EXPECT_EQ(cache.CacheTtl(Answer(q, {5}), offsets, count), 10u);
  EXPECT_EQ(cache.CacheTtl(Answer(q, {5000}), offsets, count), 100u);
}

TEST(PacketCacheTest, ServfailBrieflyTruncatedAndRefusedNever) {
  std::unique_ptr<PacketCache> owned = MustCreate(SmallCache());
  PacketCache& cache = *owned;
  Bytes q = Query("f");
  uint16_t offsets[kMaxTtlOffsets];
  uint16_t count;
  EXPECT_EQ(cache.CacheTtl(Answer(q, {}, 2), offsets, count), 5u);
  EXPECT_EQ(cache.CacheTtl(Answer(q, {}, 5), offsets, count), 0u);
  Bytes truncated = Answer(q, {60});
  truncated[2] |= 0x02;
  EXPECT_EQ(cache.CacheTtl(truncated, offsets, count), 0u);
  Bytes no_soa = Answer(q, {60});
  no_soa[7] = 0;  // NODATA without SOA
  no_soa.resize(q.size());
  EXPECT_EQ(cache.CacheTtl(no_soa, offsets, count), 0u);
}

TEST(PacketCacheTest, ServfailDoesNotReplaceAnAnswer) {
  std::unique_ptr<PacketCache> owned = MustCreate(SmallCache());
  PacketCache& cache = *owned;
  Bytes q = Query("keep");
  CacheKey key;
  MakeKey(q.data(), static_cast<uint16_t>(QuestionLength(q)), false, false, key);
  ASSERT_TRUE(cache.Insert(key, Answer(q, {60}), 0));
  EXPECT_FALSE(cache.Insert(key, Answer(q, {}, 2), 70));
  EXPECT_EQ(cache.Find(key, 70).freshness, Freshness::kStale);
}

TEST(PacketCacheTest, BoundedWithClockEviction) {
  std::unique_ptr<PacketCache> owned = MustCreate(SmallCache(4));
  PacketCache& cache = *owned;
  std::vector<Bytes> queries;
  for (int i = 0; i < 20; ++i) queries.push_back(Query("n" + std::to_string(i)));
  for (const Bytes& q : queries) {
    CacheKey key;
    MakeKey(q.data(), static_cast<uint16_t>(QuestionLength(q)), false, false, key);
    ASSERT_TRUE(cache.Insert(key, Answer(q, {60}), 0));
  }
  EXPECT_EQ(cache.counters().entries, 4u);
  EXPECT_EQ(cache.counters().evictions, 16u);
  int present = 0;
  for (const Bytes& q : queries) {
    CacheKey key;
    MakeKey(q.data(), static_cast<uint16_t>(QuestionLength(q)), false, false, key);
    if (cache.Find(key, 1).freshness == Freshness::kFresh) ++present;
  }
  EXPECT_EQ(present, 4);
}

TEST(PacketCacheTest, RecentlyUsedEntrySurvivesEviction) {
  std::unique_ptr<PacketCache> owned = MustCreate(SmallCache(2));
  PacketCache& cache = *owned;
  Bytes hot = Query("hot"), a = Query("a"), b = Query("b");
  CacheKey k_hot, k_a, k_b;
  MakeKey(hot.data(), static_cast<uint16_t>(QuestionLength(hot)), false, false, k_hot);
  MakeKey(a.data(), static_cast<uint16_t>(QuestionLength(a)), false, false, k_a);
  MakeKey(b.data(), static_cast<uint16_t>(QuestionLength(b)), false, false, k_b);
  ASSERT_TRUE(cache.Insert(k_hot, Answer(hot, {60}), 0));
  ASSERT_TRUE(cache.Insert(k_a, Answer(a, {60}), 0));
  ASSERT_EQ(cache.Find(k_hot, 1).freshness, Freshness::kFresh);  // referenced
  ASSERT_TRUE(cache.Insert(k_b, Answer(b, {60}), 1));
  EXPECT_EQ(cache.Find(k_hot, 1).freshness, Freshness::kFresh);
  EXPECT_EQ(cache.Find(k_a, 1).freshness, Freshness::kMiss);
}

TEST(PacketCacheTest, PrefetchDueInLastTenthOnce) {
  std::unique_ptr<PacketCache> owned = MustCreate(SmallCache());
  PacketCache& cache = *owned;
  Bytes q = Query("pf");
  CacheKey key;
  MakeKey(q.data(), static_cast<uint16_t>(QuestionLength(q)), false, false, key);
  ASSERT_TRUE(cache.Insert(key, Answer(q, {100}), 0));
  EXPECT_FALSE(cache.Find(key, 80).prefetch_due);
  Found found = cache.Find(key, 91);
  ASSERT_TRUE(found.prefetch_due);
  cache.MarkPrefetching(found.entry);
  EXPECT_FALSE(cache.Find(key, 92).prefetch_due);  // one refresh in flight per key
  cache.PrefetchDone(key);
  EXPECT_TRUE(cache.Find(key, 93).prefetch_due);
}

TEST(PacketCacheTest, TruncatesHitToClientLimit) {
  std::unique_ptr<PacketCache> owned = MustCreate(SmallCache());
  PacketCache& cache = *owned;
  Bytes q = Query("big");
  CacheKey key;
  MakeKey(q.data(), static_cast<uint16_t>(QuestionLength(q)), false, false, key);
  std::vector<uint32_t> ttls(40, 60);  // 40 A records: > 512 bytes
  ASSERT_TRUE(cache.Insert(key, Answer(q, ttls), 0));
  const Found found = cache.Find(key, 1);
  uint8_t out[1500];
  const size_t n = cache.Serve(found.entry, out, 1, key.question, 512, 1, false);
  EXPECT_LE(n, 512u);
  EXPECT_TRUE(dns::header::IsTruncated(out));
  const size_t full = cache.Serve(found.entry, out, 1, key.question, 1232, 1, false);
  EXPECT_GT(full, 512u);
  EXPECT_FALSE(dns::header::IsTruncated(out));
}

TEST(PacketCacheTest, ZeroCapacityCachesNothing) {
  std::unique_ptr<PacketCache> owned = MustCreate(SmallCache(0));
  PacketCache& cache = *owned;
  Bytes q = Query("z");
  CacheKey key;
  MakeKey(q.data(), static_cast<uint16_t>(QuestionLength(q)), false, false, key);
  EXPECT_FALSE(cache.Insert(key, Answer(q, {60}), 0));
  EXPECT_EQ(cache.Find(key, 0).freshness, Freshness::kMiss);
}

}  // namespace
}  // namespace dotproxy::cache

namespace dotproxy::cache {
namespace {

TEST(PacketCacheTest, ServedTtlsRespectConfiguredBounds) {
  CacheConfig config = SmallCache();
  config.min_ttl = 30;
  config.max_ttl = 100;
  std::unique_ptr<PacketCache> owned = MustCreate(config);
  PacketCache& cache = *owned;
  Bytes q = Query("clamp");
  CacheKey key;
  MakeKey(q.data(), static_cast<uint16_t>(QuestionLength(q)), false, false, key);
  ASSERT_TRUE(cache.Insert(key, Answer(q, {5000, 10, 60}), 0));
  const Found found = cache.Find(key, 5);
  ASSERT_EQ(found.freshness, Freshness::kFresh);
  uint8_t out[1500];
  ASSERT_GT(cache.Serve(found.entry, out, 1, key.question, 1232, 5, false), 0u);
  const size_t first_ttl = 12 + QuestionLength(q) + 6;
  EXPECT_EQ(dns::ReadU32(out + first_ttl), 95u);       // 5000 capped at 100, aged 5
  EXPECT_EQ(dns::ReadU32(out + first_ttl + 16), 25u);  // 10 raised to 30, aged 5
  EXPECT_EQ(dns::ReadU32(out + first_ttl + 32), 55u);  // within bounds: its own
}

}  // namespace
}  // namespace dotproxy::cache

namespace dotproxy::cache {
namespace {

// QNAME + QTYPE + QCLASS of `name` (labels split at '.', bytes as given).
Bytes Question(const std::string& name, uint16_t qtype = 1) {
  Bytes q;
  size_t start = 0;
  while (start < name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    q.push_back(static_cast<uint8_t>(dot - start));
    for (size_t i = start; i < dot; ++i) q.push_back(static_cast<uint8_t>(name[i]));
    start = dot + 1;
  }
  q.push_back(0);
  U16(q, qtype);
  U16(q, 1);
  return q;
}

// Key 00 01 .. 0f, the SipHash paper's test key.
HashSeed TestSeed() {
  HashSeed seed;
  for (int i = 7; i >= 0; --i) seed.k0 = seed.k0 << 8 | static_cast<uint64_t>(i);
  for (int i = 15; i >= 8; --i) seed.k1 = seed.k1 << 8 | static_cast<uint64_t>(i);
  return seed;
}

// Expected values from an independent SipHash-1-3 (a few lines of Python,
// itself checked against the paper's SipHash-2-4 vectors) over the
// lower-cased question followed by the flags byte. The names cover every
// split of the message into 8-byte words (question of 7, 8, 9, 13, 16 ...
// bytes), so the tail handling is pinned.
TEST(QuestionHashTest, MatchesReferenceSipHash13) {
  const HashSeed seed = TestSeed();
  EXPECT_EQ(HashQuestion(Question("WwW.Example.COM"), 9, seed), 0xc6a60458dac2c5cbull);
  EXPECT_EQ(HashQuestion(Question("a"), 0, seed), 0x3df82519bb606c1full);
  EXPECT_EQ(HashQuestion(Question("AbCdEfG"), 1, seed), 0xe02601bb74f4fc6eull);
  EXPECT_EQ(HashQuestion(Question("x.y"), 15, seed), 0x5e6a6bb1e24186adull);
  EXPECT_EQ(HashQuestion(Question("q12345.bench.test"), 9, seed), 0xa42a56718502f827ull);
  EXPECT_EQ(HashQuestion(Question("Ab"), 9, seed), 0xc454addbebad9d4full);
  EXPECT_EQ(HashQuestion(Question("ABCDEFGHIJ"), 9, seed), 0x99be8a7972ee5d3cull);
  EXPECT_EQ(HashQuestion(Question("@AZ[`az{\xc1\xda\x80\xff"), 9, seed), 0x13d60d0427ab71ddull);
}

// The word-at-a-time lowering must agree with the byte-wise rule for every
// byte value at every position of a word: A-Z fold, nothing else does
// ('@', '[', 0xc1 vs 0xe1 stay distinct), and QTYPE/QCLASS are not folded.
TEST(QuestionHashTest, FoldsExactlyAsciiLettersOfTheName) {
  const HashSeed seed = TestSeed();
  for (size_t position = 0; position < 9; ++position) {
    for (int c = 1; c < 256; ++c) {
      if (c == '.') continue;
      std::string name = "abcdefghi";
      name[position] = static_cast<char>(c);
      std::string folded = name;
      const bool upper = c >= 'A' && c <= 'Z';
      if (upper) folded[position] = static_cast<char>(c + 32);
      std::string flipped = name;  // the case bit flipped, whatever the byte
      flipped[position] = static_cast<char>(c ^ 0x20);
      const uint64_t h = HashQuestion(Question(name), 0, seed);
      EXPECT_EQ(h, HashQuestion(Question(folded), 0, seed)) << position << " " << c;
      const bool letter = upper || (c >= 'a' && c <= 'z');
      if (flipped[position] != '.' && flipped[position] != 0) {
        EXPECT_EQ(h == HashQuestion(Question(flipped), 0, seed), letter) << position << " " << c;
      }
    }
  }
  EXPECT_NE(HashQuestion(Question("a", 0x41), 0, seed), HashQuestion(Question("a", 0x61), 0, seed));
}

TEST(QuestionHashTest, DifferentSeedsHashTheSameKeyDifferently) {
  const Bytes question = Question("www.example.com");
  HashSeed a = TestSeed();
  HashSeed b = a;
  b.k1 ^= 1;
  EXPECT_NE(HashQuestion(question, 9, a), HashQuestion(question, 9, b));

  const HashSeed& process = ProcessHashSeed();
  EXPECT_EQ(process.error, 0);
  EXPECT_TRUE(process.k0 != 0 || process.k1 != 0);
  EXPECT_EQ(&process, &ProcessHashSeed());  // read once
  EXPECT_NE(HashQuestion(question, 9, process), HashQuestion(question, 9, a));
}

// The index hash before the keyed one (packet_cache.cc at 3225d6c).
uint64_t UnkeyedFnv1a(std::span<const uint8_t> question, uint8_t flags) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < question.size(); ++i) {
    uint8_t c = question[i];
    if (i < question.size() - 4 && c >= 'A' && c <= 'Z') c += 32;
    h = (h ^ c) * 0x100000001b3ull;
  }
  h = (h ^ flags) * 0x100000001b3ull;
  return h ^ (h >> 29);
}

// Names a client could compute offline to share one cell under the old
// unkeyed hash: they must all be cached and found, and under the keyed hash
// their cells scatter like any names' (before: all 256 in one cell).
TEST(PacketCacheTest, NamesCollidingUnderUnkeyedHashAllHitAndScatter) {
  constexpr size_t kEntries = 1024;
  constexpr uint64_t kTableMask = 2 * kEntries - 1;  // the index table's size for kEntries
  std::unique_ptr<PacketCache> owned = MustCreate(SmallCache(kEntries));
  PacketCache& cache = *owned;
  std::vector<Bytes> queries;
  for (int i = 0; queries.size() < 256; ++i) {
    Bytes q = Query("c" + std::to_string(i));
    const std::span<const uint8_t> question(q.data() + 12, QuestionLength(q));
    if ((UnkeyedFnv1a(question, kKeyRd) & kTableMask) == 0x2a) queries.push_back(std::move(q));
  }
  std::set<uint64_t> cells;
  for (const Bytes& q : queries) {
    CacheKey key;
    MakeKey(q.data(), static_cast<uint16_t>(QuestionLength(q)), false, false, key);
    ASSERT_EQ(key.flags, kKeyRd);
    cells.insert(key.hash & kTableMask);
    ASSERT_TRUE(cache.Insert(key, Answer(q, {60}), 0));
  }
  for (const Bytes& q : queries) {
    CacheKey key;
    MakeKey(q.data(), static_cast<uint16_t>(QuestionLength(q)), false, false, key);
    EXPECT_EQ(cache.Find(key, 1).freshness, Freshness::kFresh);
  }
  EXPECT_EQ(cache.counters().entries, queries.size());
  // 256 keys in 2048 cells: ~241 distinct expected; 1 before.
  EXPECT_GT(cells.size(), 200u);
}

}  // namespace
}  // namespace dotproxy::cache

namespace dotproxy::cache {
namespace {

// Caps this (forked) process's address space so that mmap fails with
// ENOMEM whatever the machine's memory and overcommit policy.
void LimitAddressSpace(size_t bytes) {
  const rlimit limit = {bytes, bytes};
  if (setrlimit(RLIMIT_AS, &limit) != 0) std::_Exit(2);
}

// Before: the constructor's new[] threw std::bad_alloc (uncaught on a shard
// thread: abort). Now Create says what it could not have, as a Status.
TEST(PacketCacheDeathTest, CreateReportsMemoryItCannotCommit) {
  EXPECT_EXIT(
      {
        LimitAddressSpace(size_t{1} << 30);
        CacheConfig config = SmallCache(1000000);  // ~1.4 GB
        absl::StatusOr<std::unique_ptr<PacketCache>> cache = PacketCache::Create(config);
        std::fprintf(stderr, "%s\n", cache.status().ToString().c_str());
        std::_Exit(cache.status().code() == absl::StatusCode::kResourceExhausted ? 0 : 1);
      },
      testing::ExitedWithCode(0),
      "^RESOURCE_EXHAUSTED: cannot commit " +
          std::to_string((PacketCache::MemoryBytes(1000000) + (1 << 20) - 1) >> 20) +
          " MiB for 1000000 cache entries: Cannot allocate memory\n$");
}

// The constructor callers have not yet left behind must not throw either.
TEST(PacketCacheDeathTest, DeprecatedConstructorGivesAnEmptyCacheWhenMemoryIsShort) {
  EXPECT_EXIT(
      {
        LimitAddressSpace(size_t{1} << 30);
        PacketCache cache(SmallCache(1000000));
        Bytes q = Query("m");
        CacheKey key;
        MakeKey(q.data(), static_cast<uint16_t>(QuestionLength(q)), false, false, key);
        const bool cached = cache.Insert(key, Answer(q, {60}), 0);
        cache.PrefetchDone(key);
        std::_Exit(cache.capacity() == 0 && !cached ? 0 : 1);
      },
      testing::ExitedWithCode(0), "");
}

TEST(PacketCacheTest, CreateRejectsMoreEntriesThanOneIndexHolds) {
  const absl::StatusOr<std::unique_ptr<PacketCache>> cache =
      PacketCache::Create(SmallCache(kMaxCacheEntries + 1));
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PacketCache::MemoryBytes(kMaxCacheEntries + 1), SIZE_MAX);
}

// Field `key` of /proc/self/status, in bytes.
size_t ProcStatusBytes(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoull(line.substr(key.size() + 1)) * 1024;
  }
  return 0;
}

// MemoryBytes is what Create maps, and all of it is resident once Create
// returns (populated, not left to fault in on the query path).
TEST(PacketCacheTest, MemoryBytesIsWhatCreateCommits) {
  EXPECT_EQ(PacketCache::MemoryBytes(0), 0u);
  constexpr size_t kEntries = 10000;
  const size_t expected = PacketCache::MemoryBytes(kEntries);
  EXPECT_GT(expected, kEntries * kMaxCachedAnswer);
  const size_t size_before = ProcStatusBytes("VmSize");
  const size_t resident_before = ProcStatusBytes("RssAnon");
  std::unique_ptr<PacketCache> cache = MustCreate(SmallCache(kEntries));
  const size_t mapped = ProcStatusBytes("VmSize") - size_before;
  const size_t resident = ProcStatusBytes("RssAnon") - resident_before;
  // The PacketCache object itself may grow the heap by a little.
  EXPECT_GE(mapped, expected);
  EXPECT_LE(mapped, expected + (size_t{1} << 20));
  EXPECT_GE(resident, expected);
  EXPECT_LE(resident, expected + (size_t{1} << 20));
}

}  // namespace
}  // namespace dotproxy::cache

namespace dotproxy::cache {
namespace {

// A negative answer to `query` (NXDOMAIN, or NODATA when `rcode` is 0) whose
// one authority record is a SOA (TTL 600) with `rdata` as its RDATA, then an
// OPT record (so that bytes follow the SOA, as in most real answers).
Bytes NegativeWithSoa(const Bytes& query, const Bytes& rdata, uint8_t rcode = 3) {
  Bytes a(query.begin(), query.end());
  a[2] |= 0x80;
  a[3] = static_cast<uint8_t>(0x80 | rcode);
  a[9] = 1;  // NSCOUNT
  a.insert(a.end(), {0xc0, 12});
  U16(a, dns::kTypeSoa);
  U16(a, 1);
  U32(a, 600);
  U16(a, static_cast<uint16_t>(rdata.size()));
  a.insert(a.end(), rdata.begin(), rdata.end());
  a[11] = 1;  // ARCOUNT: OPT
  a.push_back(0);
  U16(a, dns::kTypeOpt);
  U16(a, 1232);
  U32(a, 0);
  U16(a, 0);
  return a;
}

// SERIAL, REFRESH, RETRY, EXPIRE = 1, 2, 3, 4, then MINIMUM; the first
// `count` of those five fields.
Bytes SoaFields(uint32_t minimum, int count = 5) {
  Bytes b;
  const uint32_t fields[] = {1, 2, 3, 4, minimum};
  for (int i = 0; i < count; ++i) U32(b, fields[i]);
  return b;
}

Bytes Concat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The SOA's MINIMUM is read only from a well-formed RDATA. Before, it was
// the 4 bytes before the record's end whatever RDLENGTH said: with
// RDLENGTH 2 that was RDLENGTH itself and the names (0x00020000 = 131072,
// so TTL 600), with four fields EXPIRE (4).
TEST(PacketCacheTest, SoaWithMalformedRdataGivesNoNegativeTtl) {
  std::unique_ptr<PacketCache> cache = MustCreate(SmallCache());
  const Bytes q = Query("soa");
  const Bytes root_names = {0, 0};            // MNAME, RNAME: root
  const Bytes pointer_names = {0xc0, 12, 0xc0, 12};  // both compressed to the QNAME
  uint16_t offsets[kMaxTtlOffsets];
  uint16_t count;
  // Well formed: MINIMUM (20) < TTL (600), plain or compressed names; NXDOMAIN and NODATA.
  EXPECT_EQ(cache->CacheTtl(NegativeWithSoa(q, Concat(root_names, SoaFields(20))), offsets, count), 20u);
  EXPECT_EQ(cache->CacheTtl(NegativeWithSoa(q, Concat(pointer_names, SoaFields(20))), offsets, count),
            20u);
  EXPECT_EQ(cache->CacheTtl(NegativeWithSoa(q, Concat(root_names, SoaFields(20)), 0), offsets, count),
            20u);

  const Bytes malformed[] = {
      {},                                      // RDLENGTH 0
      root_names,                              // RDLENGTH 2: no fields at all
      Concat(root_names, SoaFields(20, 4)),    // no MINIMUM
      Concat(root_names, Bytes(19, 0)),        // RDLENGTH 21
      Concat(Concat(root_names, SoaFields(20)), {0}),  // a byte left over
      Concat({30, 'x', 0}, SoaFields(20)),     // MNAME runs past the RDATA (RDLENGTH 23)
      {0, 0xc0},                               // RNAME's pointer cut by the RDATA's end
  };
  for (const Bytes& rdata : malformed) {
    SCOPED_TRACE(rdata.size());
    EXPECT_EQ(cache->CacheTtl(NegativeWithSoa(q, rdata), offsets, count), 0u);
    EXPECT_EQ(cache->CacheTtl(NegativeWithSoa(q, rdata, 0), offsets, count), 0u);
    CacheKey key;
    MakeKey(q.data(), static_cast<uint16_t>(QuestionLength(q)), false, false, key);
    EXPECT_FALSE(cache->Insert(key, NegativeWithSoa(q, rdata), 0));
  }
}

}  // namespace
}  // namespace dotproxy::cache
