#include "src/cache/question_hash.h"

#include <sys/random.h>

#include <bit>
#include <cerrno>
#include <cstring>

namespace dotproxy::cache {
namespace {

HashSeed ReadSeed() {
  HashSeed seed;
  uint64_t key[2];
  ssize_t n;
  // 16 bytes never come back short (getrandom(2): up to 256 bytes are
  // atomic); EINTR only while the pool is not yet initialised.
  do {
    n = getrandom(key, sizeof key, 0);
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(sizeof key)) {
    seed.error = n < 0 ? errno : EIO;
    return seed;
  }
  seed.k0 = key[0];
  seed.k1 = key[1];
  return seed;
}

// Eight message bytes as SipHash reads them: little-endian.
inline uint64_t Load64(const uint8_t* p) {
  uint64_t word;
  std::memcpy(&word, p, sizeof word);
  if constexpr (std::endian::native == std::endian::big) word = __builtin_bswap64(word);
  return word;
}

// Lowers ASCII A-Z in the bytes of `word` selected by `mask` (0xff per byte),
// eight at a time; other bytes, 0x80-0xff included, are left alone, exactly
// as a byte-wise `c >= 'A' && c <= 'Z' ? c + 32 : c`. That is AsciiLower in
// src/dns/message.cc (used by dns::QuestionsMatch), and the two must agree:
// questions that match must hash alike. A private copy until dns/ settles
// (another change is under way there); QuestionHashTest pins the rule.
inline uint64_t LowerAscii(uint64_t word, uint64_t mask) {
  constexpr uint64_t kOnes = 0x0101010101010101ull;
  const uint64_t low7 = word & (0x7f * kOnes);
  // Per byte, bit 7 of low7 + (0x80 - c) is set iff low7 >= c; no carry
  // crosses bytes (0x7f + 0x3f < 0x100).
  const uint64_t at_least_a = low7 + (0x80 - 'A') * kOnes;
  const uint64_t above_z = low7 + (0x80 - 'Z' - 1) * kOnes;
  const uint64_t upper = at_least_a & ~above_z & ~word & mask & (0x80 * kOnes);
  return word | (upper >> 2);  // 0x80 >> 2 = 0x20, the case bit
}

// Bytes of the word at message offset `offset` that belong to the QNAME.
inline uint64_t NameMask(size_t offset, size_t name_length) {
  if (offset >= name_length) return 0;
  if (name_length - offset >= 8) return ~uint64_t{0};
  return (uint64_t{1} << (8 * (name_length - offset))) - 1;
}

struct SipState {
  uint64_t v0, v1, v2, v3;

  void Round() {
    v0 += v1;
    v1 = std::rotl(v1, 13);
    v1 ^= v0;
    v0 = std::rotl(v0, 32);
    v2 += v3;
    v3 = std::rotl(v3, 16);
    v3 ^= v2;
    v0 += v3;
    v3 = std::rotl(v3, 21);
    v3 ^= v0;
    v2 += v1;
    v1 = std::rotl(v1, 17);
    v1 ^= v2;
    v2 = std::rotl(v2, 32);
  }
  void Compress(uint64_t m) {  // c = 1
    v3 ^= m;
    Round();
    v0 ^= m;
  }
  uint64_t Finish() {  // d = 3
    v2 ^= 0xff;
    Round();
    Round();
    Round();
    return v0 ^ v1 ^ v2 ^ v3;
  }
};

}  // namespace

const HashSeed& ProcessHashSeed() {
  static const HashSeed seed = ReadSeed();
  return seed;
}

uint64_t HashQuestion(std::span<const uint8_t> question, uint8_t flags, const HashSeed& seed) {
  SipState s{seed.k0 ^ 0x736f6d6570736575ull, seed.k1 ^ 0x646f72616e646f6dull,
             seed.k0 ^ 0x6c7967656e657261ull, seed.k1 ^ 0x7465646279746573ull};
  const uint8_t* q = question.data();
  const size_t n = question.size();
  const size_t name_length = n - 4;
  // The message is question || flags.
  size_t i = 0;
  for (; i + 8 <= n; i += 8) s.Compress(LowerAscii(Load64(q + i), NameMask(i, name_length)));
  const size_t rest = n - i;  // 0..7 question bytes, then flags
  uint64_t last = 0;
  if (rest != 0 && n >= 8) {
    // The word ending at the question's end, shifted down: no variable
    // length copy (a libc call) on the per-query path.
    last = Load64(q + n - 8) >> (8 * (8 - rest));
  } else {
    for (size_t j = 0; j < rest; ++j) last |= uint64_t{q[i + j]} << (8 * j);
  }
  last = LowerAscii(last, NameMask(i, name_length)) | uint64_t{flags} << (8 * rest);
  if (rest == 7) {  // flags completed a word
    s.Compress(last);
    last = 0;
  }
  s.Compress(last | uint64_t{(n + 1) & 0xff} << 56);  // SipHash: length in the top byte
  return s.Finish();
}

}  // namespace dotproxy::cache
