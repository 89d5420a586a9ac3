#include "src/frontend/doh_protocol.h"

#include "dotproxy/frontend/doh_protocol.h"

#include <cstring>

#include "dotproxy/frontend/client_ref.h"

namespace dotproxy::frontend {
namespace {

http::DohServerOptions WithQueryLimit(http::DohServerOptions options) {
  options.max_query_bytes = kMaxQuerySize;
  return options;
}

}  // namespace

static_assert(kDohClientBytes == DohProtocol::kInputBytes + DohProtocol::kAnswerBytes +
                                     100 * kMaxQuerySize + 512 * 1024,
              "kDohClientBytes follows the buffers and the default DohServerOptions");

// Buffers are not value-initialised: their pages are committed only as used.
DohProtocol::DohProtocol(http::DohServerOptions options, std::span<uint8_t> out)
    : session_(WithQueryLimit(std::move(options))),
      input_(new uint8_t[kInputBytes]),
      output_(out),
      answer_(new uint8_t[kAnswerBytes]) {}

StreamProtocolFactory DohProtocolFactory(metrics::ShardStats& stats) {
  return [&stats](std::span<uint8_t> out) -> std::unique_ptr<StreamProtocol> {
    const http::DohServerStats counters = DohProtocol::StatsOf(stats);
    http::DohServerOptions options;
    options.stats = &counters;
    return std::make_unique<DohProtocol>(std::move(options), out);
  };
}

http::DohServerStats DohProtocol::StatsOf(metrics::ShardStats& stats) {
#define DOTPROXY_DOH_BIND(name, help) stats.name,
  return http::DohServerStats{DOTPROXY_DOH_SERVER_COUNTERS(DOTPROXY_DOH_BIND)};
#undef DOTPROXY_DOH_BIND
}

void DohProtocol::Reset() {
  if (host_ != nullptr) {
    reset_pending_ = true;
    return;
  }
  reset_pending_ = false;
  session_.Reset();
  output_begin_ = output_end_ = 0;
  // Start fails only when the pool could not be reserved: such a slot
  // refuses its connections (CommitInput reports an error).
  started_ = session_.Start(this).ok();
}

StreamProtocol::Intake DohProtocol::CommitInput(size_t n, Host& host) {
  if (!started_) return Intake::kError;
  host_ = &host;
  host_closed_ = false;
  const http::DohServerSession::ReceiveResult result =
      session_.Receive({input_.get(), n});
  host_ = nullptr;
  if (reset_pending_) Reset();
  if (host_closed_) return Intake::kClosed;
  if (result == http::DohServerSession::ReceiveResult::kClose) return Intake::kError;
  // Framed now: what the read produced (SETTINGS and PING acks), and a
  // connection error nghttp2 found inside a frame (DATA on stream 0, a bad
  // HPACK block), which shows only once its GOAWAY is framed; a session
  // that is over makes the room send it, then close.
  Output();
  if (result == http::DohServerSession::ReceiveResult::kGoingAway) return Intake::kDone;
  return session_.alive() ? Intake::kOk : Intake::kError;
}

void DohProtocol::OnDohQuery(int32_t stream_id, std::span<uint8_t> wire) {
  // Once the connection is closed, later queries of the same read are not
  // handed up (the session still counts them in flight: it is reset).
  if (host_ == nullptr || host_closed_) return;
  if (!host_->OnQuery(wire, static_cast<uint32_t>(stream_id))) host_closed_ = true;
}

std::span<uint8_t> DohProtocol::BeginAnswer(uint32_t /*stream*/, size_t max_length) {
  if (max_length > kAnswerBytes) max_length = kAnswerBytes;
  return {answer_.get(), max_length};
}

void DohProtocol::CommitAnswer(uint32_t stream, size_t length) {
  // A stream the client reset, or one of a session already ended: a no-op
  // (counted by the session as a late answer).
  if (length > 0) session_.Answer(static_cast<int32_t>(stream), {answer_.get(), length});
}

void DohProtocol::QueryDone(uint32_t stream) { session_.QueryDone(static_cast<int32_t>(stream)); }

std::span<const uint8_t> DohProtocol::Output() {
  if (output_begin_ > 0 && output_begin_ == output_end_) output_begin_ = output_end_ = 0;
  if (output_end_ < output_.size() && session_.has_output()) {
    if (output_begin_ > 0) {
      std::memmove(output_.data(), output_.data() + output_begin_, output_end_ - output_begin_);
      output_end_ -= output_begin_;
      output_begin_ = 0;
    }
    output_end_ += session_.WriteOutput(output_.subspan(output_end_));
  }
  return {output_.data() + output_begin_, output_end_ - output_begin_};
}

void DohProtocol::Consumed(size_t n) {
  output_begin_ += std::min(n, output_end_ - output_begin_);
}

}  // namespace dotproxy::frontend
