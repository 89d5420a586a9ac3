#pragma once
// DNS-over-TLS plaintext (RFC 7858 §3.3: the DNS-over-TCP framing of RFC
// 1035 §4.2.2) as a StreamProtocol: queries reassembled by a StreamFramer,
// answers length-prefixed into a fixed buffer, every query on stream 0.
// The buffers are the TLS room's, fixed for the slot's life.

#include <cstring>

#include "dotproxy/dns/stream_framer.h"
#include "dotproxy/frontend/client_ref.h"
#include "dotproxy/frontend/stream_protocol.h"

namespace dotproxy::frontend {

class DotProtocol final : public StreamProtocol {
 public:
  DotProtocol(std::span<uint8_t> in, std::span<uint8_t> out) : framer_(in), out_(out) {}

  void Reset() override {
    framer_.Clear();
    out_end_ = 0;
  }
  std::span<uint8_t> InputSpace() override { return framer_.WritableSpace(); }
  Intake CommitInput(size_t n, Host& host) override {
    framer_.Commit(n);
    std::span<uint8_t> message;
    // A read holds up to ~200 minimal queries (4 KiB): the client's limit is
    // checked per query, and the rest wait here.
    while (!host.AtQueryLimit()) {
      const auto next = framer_.NextMessage(kMaxQuerySize, message);
      if (next == dns::StreamFramer::Next::kNeedMore) break;
      if (next == dns::StreamFramer::Next::kTooLarge) return Intake::kError;
      if (!host.OnQuery(message, 0)) return Intake::kClosed;
    }
    framer_.Compact();
    return Intake::kOk;
  }
  bool mid_message() const override { return !framer_.empty(); }
  bool holds_query() const override { return framer_.HasMessage(); }

  std::span<uint8_t> BeginAnswer(uint32_t, size_t max_length) override {
    if (out_.size() - out_end_ < 2 + max_length) return {};
    return out_.subspan(out_end_ + 2, max_length);
  }
  void CommitAnswer(uint32_t, size_t length) override {
    if (length == 0) return;
    dns::WriteLengthPrefix(out_.data() + out_end_, length);
    out_end_ += 2 + length;
  }
  std::span<const uint8_t> Output() override { return out_.first(out_end_); }
  void Consumed(size_t n) override {
    std::memmove(out_.data(), out_.data() + n, out_end_ - n);
    out_end_ -= n;
  }

 private:
  dns::StreamFramer framer_;
  std::span<uint8_t> out_;
  size_t out_end_ = 0;
};

// A TLS room slot's plaintext buffers in its region (tls_listeners.cc):
// queries, then answers, each starting on a page.
namespace tls_slot {
constexpr size_t kPageSize = 4096;
constexpr size_t kInCapacity = 4 * (kMaxQuerySize + 2);
constexpr size_t kInSlot = (kInCapacity + kPageSize - 1) / kPageSize * kPageSize;
constexpr size_t kOutSlot =
    (StreamProtocol::kOutCapacity + kPageSize - 1) / kPageSize * kPageSize;
constexpr size_t kSlotBytes = kInSlot + kOutSlot;
}  // namespace tls_slot

}  // namespace dotproxy::frontend
