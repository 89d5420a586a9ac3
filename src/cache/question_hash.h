#pragma once
// The packet cache's key hash: SipHash-1-3 under a per-process random seed
// over the lower-cased QNAME, QTYPE, QCLASS and the key flags. Private to
// src/cache (tests include it to hash under chosen seeds).
//
// Keyed because clients choose the names: with an unkeyed hash anyone can
// compute offline names that share one index and make every later lookup
// walk their cluster. Any thread may call these; the seed is read once.

#include <cstdint>
#include <span>

namespace dotproxy::cache {

struct HashSeed {
  uint64_t k0 = 0;
  uint64_t k1 = 0;
  int error = 0;  // errno of getrandom(2) when the seed could not be read
};

// The process's seed, read with getrandom(2) on first use (thread-safe).
// When `error` != 0 the seed is zero: PacketCache::Create() refuses to
// build a cache then, so a predictable seed is never used for lookups.
const HashSeed& ProcessHashSeed();

// SipHash-1-3 (Aumasson & Bernstein) of `question` (QNAME + QTYPE + QCLASS,
// uncompressed) with ASCII A-Z in the QNAME lowered (RFC 4343), then
// `flags`. REQUIRES: question.size() >= 5.
uint64_t HashQuestion(std::span<const uint8_t> question, uint8_t flags, const HashSeed& seed);

}  // namespace dotproxy::cache
