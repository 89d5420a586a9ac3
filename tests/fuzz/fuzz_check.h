#pragma once
// Helpers shared by the fuzz targets in tests/fuzz/: an always-on check that
// aborts (so libFuzzer, and the replay driver, report the input), and a
// walker that tells whether bytes are one whole DNS message.

#include <cstdio>
#include <cstdlib>
#include <span>

#include "dotproxy/dns/message.h"

// Unlike assert(), active in every build type.
#define FUZZ_CHECK(condition)                                                      \
  do {                                                                             \
    if (!(condition)) {                                                            \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__,   \
                   #condition);                                                    \
      std::abort();                                                                \
    }                                                                              \
  } while (0)

namespace dotproxy::fuzz {

// What WalkMessage found.
struct MessageShape {
  unsigned opt_records = 0;  // OPT RRs in the additional section
  size_t first_opt = 0;      // offset of the first, 0 if none
};

// Whether `wire` is exactly a header, QDCOUNT questions and AN+NS+AR
// records, nothing left over (names may be compressed: pointers are not
// followed).
inline bool WalkMessage(std::span<const uint8_t> wire, MessageShape* shape = nullptr) {
  if (wire.size() < dns::kHeaderSize) return false;
  const uint8_t* h = wire.data();
  size_t pos = dns::kHeaderSize;
  for (unsigned i = 0; i < dns::header::QdCount(h); ++i) {
    pos = dns::SkipName(wire, pos);
    if (pos == 0 || pos + 4 > wire.size()) return false;
    pos += 4;
  }
  const unsigned before_additional = dns::header::AnCount(h) + dns::header::NsCount(h);
  const unsigned total = before_additional + dns::header::ArCount(h);
  MessageShape found;
  for (unsigned i = 0; i < total; ++i) {
    const size_t start = pos;
    pos = dns::SkipRecord(wire, pos);
    if (pos == 0) return false;
    if (i >= before_additional && wire[start] == 0 &&
        dns::ReadU16(&wire[start + 1]) == dns::kTypeOpt) {
      if (found.opt_records++ == 0) found.first_opt = start;
    }
  }
  if (shape != nullptr) *shape = found;
  return pos == wire.size();
}

// Calls `visit(code, data, length)` for each option of the OPT RR at `opt`
// (REQUIRES: a record WalkMessage accepted). Returns false when the options
// do not add up to RDLENGTH.
template <typename Visit>
bool ForEachOption(std::span<const uint8_t> wire, size_t opt, Visit visit) {
  size_t pos = opt + 11;
  const size_t end = pos + dns::ReadU16(&wire[opt + 9]);
  while (pos < end) {
    if (end - pos < 4) return false;
    const uint16_t code = dns::ReadU16(&wire[pos]);
    const size_t length = dns::ReadU16(&wire[pos + 2]);
    if (end - pos - 4 < length) return false;
    visit(code, &wire[pos + 4], length);
    pos += 4 + length;
  }
  return true;
}

}  // namespace dotproxy::fuzz
