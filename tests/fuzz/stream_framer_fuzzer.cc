// Fuzz target "stream_framer": dns::StreamFramer fed a byte stream in
// pieces, as TCP segments and TLS records arrive. The piece sizes come from
// the input; the messages framed must be exactly those a one-pass reading of
// the whole stream finds, up to the first one over the size limit, and the
// buffer must never fill up without a message to hand out.
//
// Input: [0] bit 0: the upstream framer (2 * (65535 + 2) bytes, messages up
// to 65535) else a TCP client's (4 * (1024 + 2), up to 1024); [1..8] seed of
// the piece sizes; then the stream.

#include <algorithm>
#include <cstring>
#include <span>
#include <vector>

#include "dotproxy/dns/stream_framer.h"
#include "tests/fuzz/fuzz_check.h"

namespace dns = dotproxy::dns;

namespace {

constexpr size_t kControlBytes = 9;

struct Expected {
  size_t offset;  // of the message, after its prefix
  size_t length;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kControlBytes) return 0;
  const bool upstream = data[0] & 1;
  // upstream::Connection and frontend::TcpClients.
  const size_t max_length = upstream ? 65535 : 1024;
  const size_t capacity = upstream ? 2 * (65535 + 2) : 4 * (1024 + 2);
  uint64_t seed = 0;
  std::memcpy(&seed, data + 1, sizeof seed);
  seed |= 1;  // xorshift needs a nonzero state
  const std::span<const uint8_t> stream(data + kControlBytes, size - kControlBytes);

  // The reference: one pass over the whole stream.
  std::vector<Expected> expected;
  bool too_large = false;
  size_t tail = 0;  // where the unframed rest begins
  while (true) {
    if (stream.size() - tail < 2) break;
    const size_t length = size_t{stream[tail]} << 8 | stream[tail + 1];
    if (length > max_length) {
      too_large = true;
      break;
    }
    if (stream.size() - tail - 2 < length) break;
    expected.push_back({tail + 2, length});
    tail += 2 + length;
  }

  dns::StreamFramer framer(capacity);
  size_t fed = 0;
  size_t next = 0;  // index into `expected`
  bool saw_too_large = false;
  // Bounded: every round feeds at least one byte or ends.
  while (!saw_too_large) {
    std::span<uint8_t> space = framer.WritableSpace();
    if (fed == stream.size()) break;
    // Full with no whole message in it: a stalled connection.
    FUZZ_CHECK(!space.empty());
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    // Mostly small pieces (a byte at a time included), sometimes large ones.
    size_t piece = (seed & 0x700) == 0 ? 1 + seed % 70000 : 1 + seed % 300;
    piece = std::min({piece, space.size(), stream.size() - fed});
    std::memcpy(space.data(), stream.data() + fed, piece);
    framer.Commit(piece);
    fed += piece;
    std::span<uint8_t> message;
    while (true) {
      const auto result = framer.NextMessage(max_length, message);
      if (result == dns::StreamFramer::Next::kNeedMore) break;
      if (result == dns::StreamFramer::Next::kTooLarge) {
        FUZZ_CHECK(too_large && next == expected.size());
        saw_too_large = true;
        break;
      }
      FUZZ_CHECK(next < expected.size());
      const Expected& want = expected[next++];
      FUZZ_CHECK(message.size() == want.length);
      FUZZ_CHECK(std::memcmp(message.data(), stream.data() + want.offset, want.length) == 0);
      // The caller may patch the message in place (the ID, the question).
      if (!message.empty()) message[0] ^= 0xff;
    }
    framer.Compact();
  }
  FUZZ_CHECK(next == expected.size());
  FUZZ_CHECK(saw_too_large == too_large);
  if (!too_large) FUZZ_CHECK(framer.buffered() == stream.size() - tail);
  return 0;
}
