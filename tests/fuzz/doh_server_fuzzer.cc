// Fuzz target "doh_server": http::DohServerSession (the DoH listener's
// HTTP/2 codec) fed a client's bytes in pieces, as TLS records arrive. The
// target writes the client connection preface itself, so that mutations
// reach nghttp2's frame parsing and the session's request handling (headers,
// GET ?dns= decoding, POST bodies, resets) instead of dying at the preface.
// Every query handed up is answered (every other one) or left unanswered,
// then ended, as the forwarder would; the output is drained after each
// piece. Checked: streams and queries in flight stay within the stream
// slots, every query handed up is a client's (odd stream id) DNS query
// (QR=0, at least a header, at most max_query_bytes), and after Reset
// nothing is in flight and answers are no-ops. The pool's bound holds by
// construction (nghttp2 gets NOMEM past it; ASan sees any overrun).
//
// Input: [0..7] seed of the piece sizes; then the bytes after the preface.

#include <algorithm>
#include <cstring>
#include <span>
#include <vector>

#include "dotproxy/http/doh_server.h"
#include "tests/fuzz/fuzz_check.h"

namespace http = dotproxy::http;
namespace dns = dotproxy::dns;

namespace {

constexpr size_t kControlBytes = 8;
constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

struct Sink final : http::DohQuerySink {
  void OnDohQuery(int32_t stream_id, std::span<uint8_t> wire) override {
    FUZZ_CHECK(stream_id > 0 && (stream_id & 1) == 1);  // client-initiated
    FUZZ_CHECK(wire.size() >= dns::kHeaderSize && wire.size() <= max_query_bytes);
    FUZZ_CHECK(!dns::header::IsResponse(wire.data()));
    pending.push_back(stream_id);
    if (answer.size() < wire.size()) answer.resize(wire.size());
    std::memcpy(answer.data(), wire.data(), wire.size());
    answer_length = wire.size();
  }
  size_t max_query_bytes = 0;
  std::vector<int32_t> pending;
  std::vector<uint8_t> answer;
  size_t answer_length = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kControlBytes) return 0;
  uint64_t seed = 0;
  std::memcpy(&seed, data, sizeof seed);
  seed |= 1;
  const std::span<const uint8_t> stream(data + kControlBytes, size - kControlBytes);

  http::DohServerOptions options;
  options.max_concurrent_streams = 8;
  options.pool_bytes = 256 * 1024;
  http::DohServerSession session(options);
  Sink sink;
  sink.max_query_bytes = options.max_query_bytes;
  FUZZ_CHECK(session.Start(&sink).ok());
  std::vector<uint8_t> out(16 * 1024);
  auto drain = [&] {
    for (int i = 0; i < 64 && session.WriteOutput(out) == out.size(); ++i) {
    }
  };
  drain();
  bool open = session.Receive({reinterpret_cast<const uint8_t*>(kPreface), sizeof kPreface - 1}) ==
              http::DohServerSession::ReceiveResult::kOk;
  unsigned handed = 0;
  for (size_t fed = 0; open && fed < stream.size();) {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    const size_t piece = std::min<size_t>(stream.size() - fed, 1 + seed % 97);
    open = session.Receive(stream.subspan(fed, piece)) == http::DohServerSession::ReceiveResult::kOk;
    fed += piece;
    FUZZ_CHECK(session.streams_in_use() <= options.max_concurrent_streams);
    FUZZ_CHECK(session.queries_in_flight() <= options.max_concurrent_streams);
    // The forwarder's side: answer every other query (patched to a
    // response, as an upstream's answer would be), end them all.
    for (const int32_t id : sink.pending) {
      if (++handed % 2 == 0 && sink.answer_length >= dns::kHeaderSize) {
        sink.answer[2] |= 0x80;  // QR
        session.Answer(id, {sink.answer.data(), sink.answer_length});
      }
      session.QueryDone(id);
    }
    sink.pending.clear();
    FUZZ_CHECK(session.queries_in_flight() == 0);
    drain();
    if (!session.alive()) break;
  }
  session.Reset();
  FUZZ_CHECK(session.queries_in_flight() == 0);
  // Answers for streams of the ended session are no-ops.
  FUZZ_CHECK(!session.Answer(1, {sink.answer.data(), sink.answer_length}));
  return 0;
}
