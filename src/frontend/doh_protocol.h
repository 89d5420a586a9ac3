#pragma once
// The DoH listener's plaintext protocol on a TLS connection (RFC 8484 over
// HTTP/2): the StreamProtocol of TlsClients connections accepted on a
// --listen-https listener. A thin adapter: http::DohServerSession parses and
// frames; this class gives it the room's buffers (decrypted input, output
// to encrypt, one answer being written) and turns its stream ids into the
// room's `stream`. One per connection slot, made when the room opens;
// nothing allocates after construction. Shard thread only.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "dotproxy/frontend/stream_protocol.h"
#include "dotproxy/http/doh_server.h"
#include "dotproxy/metrics/stats.h"

namespace dotproxy::frontend {

class DohProtocol final : public StreamProtocol, private http::DohQuerySink {
 public:
  // Decrypted bytes taken per read. Plaintext to write is gathered in the
  // room's answer buffer for the slot (`out`, StreamProtocol::kOutCapacity):
  // many answers' frames go out in one TLS record.
  static constexpr size_t kInputBytes = 16 * 1024;
  // The largest DNS message: an answer is written here, then copied into
  // the session's pool (it is framed later, as flow control allows).
  static constexpr size_t kAnswerBytes = 65535;

  // `options.max_query_bytes` is set to kMaxQuerySize here; `options.stats`
  // is copied (a struct of references), so it may be a temporary. `out` is
  // borrowed for the protocol's life.
  DohProtocol(http::DohServerOptions options, std::span<uint8_t> out);

  void Reset() override;
  std::span<uint8_t> InputSpace() override { return {input_.get(), kInputBytes}; }
  Intake CommitInput(size_t n, Host& host) override;
  bool mid_message() const override { return session_.requests_incomplete() > 0; }

  std::span<uint8_t> BeginAnswer(uint32_t stream, size_t max_length) override;
  void CommitAnswer(uint32_t stream, size_t length) override;
  void QueryDone(uint32_t stream) override;

  std::span<const uint8_t> Output() override;
  void Consumed(size_t n) override;

  const http::DohServerSession& session() const { return session_; }
  // The codec's counters bound to the shard's doh_* rows.
  static http::DohServerStats StatsOf(metrics::ShardStats& stats);

 private:
  void OnDohQuery(int32_t stream_id, std::span<uint8_t> wire) override;

  http::DohServerSession session_;
  bool started_ = false;
  Host* host_ = nullptr;  // during CommitInput only
  // The room closed the connection from inside CommitInput (an answer
  // given at once that failed): nothing more goes up, and a Reset() asked
  // for meanwhile waits until nghttp2 has returned (it would free the
  // session under its own callback).
  bool host_closed_ = false;
  bool reset_pending_ = false;
  std::unique_ptr<uint8_t[]> input_;
  std::span<uint8_t> output_;
  size_t output_begin_ = 0;
  size_t output_end_ = 0;
  std::unique_ptr<uint8_t[]> answer_;
};

}  // namespace dotproxy::frontend
