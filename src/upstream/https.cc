// The DNS-over-HTTPS side of Connection (kind kHttps, RFC 8484): queries
// become HTTP/2 streams of the connection's http::DohClient; TLS, health and
// the ID table are the DoT ones.
//
// The pool keeps seeing DNS IDs: a query still binds a random free ID in
// the connection's table, the stream carries ID 0 (RFC 8484 §4.1: caches
// see identical requests), and the bound ID is written back into the
// answer before the pool reads it. The stream's tag in the codec is that
// ID, so an answer, a failure or a cancel finds its query in O(1).

#include <cstring>

#include "absl/strings/str_cat.h"
#include "dotproxy/upstream/connection.h"

namespace dotproxy::upstream {

using metrics::Bump;

bool Connection::QueueStream(uint32_t token, std::span<uint8_t> query, uint16_t& id) {
  if (!doh_->started() || doh_->going_away() || query.size() < dns::kHeaderSize) return false;
  if (!ids_.Insert(token, rng_, id)) return false;
  // Written into the caller's copy as on every transport (dnstap, retries
  // read it); the stream's copy gets ID 0.
  dns::header::SetId(query.data(), id);
  if (!doh_->Submit(id, query)) {
    ids_.Erase(id);
    return false;
  }
  last_activity_ = clock_.now();
  return true;
}

// Decrypted bytes go straight to the codec; finished streams come back
// through OnResponse before Receive returns.
void Connection::ReadStreams() {
  bool goaway_counted = doh_->going_away();
  while (state_ == ConnectionState::kReady) {
    const int n = session_.Read({doh_in_.get(), kDohReadChunk});
    if (n == 0) break;
    if (n < 0) {
      if (session_.error().empty()) {
        Bump(stats_.upstream_closed);
        Close(CloseReason::kPeerClosed, "TLS close_notify from upstream");
      } else {
        Close(CloseReason::kBroken, absl::StrCat("TLS: ", session_.error()));
      }
      return;
    }
    if (!doh_->Receive({doh_in_.get(), static_cast<size_t>(n)})) {
      Close(CloseReason::kBroken, doh_->error());
      return;
    }
    if (!goaway_counted && doh_->going_away()) {
      goaway_counted = true;
      Bump(target_.stats->goaways);
    }
  }
  if (CloseIfSessionEnded()) return;
  // TLS output of the reads (key updates) goes now; HTTP/2 output (SETTINGS
  // and PING acks, WINDOW_UPDATEs) waits for this iteration's one write.
  StartSend();
}

// End of the loop iteration: every frame nghttp2 has (new streams' HEADERS
// and DATA, acks, window updates) in one TLS write.
void Connection::FlushStreams() {
  if (state_ != ConnectionState::kReady || !doh_->WantsWrite()) return;
  doh_out_.clear();
  if (!doh_->Drain(doh_out_)) {
    Close(CloseReason::kBroken, doh_->error());
    return;
  }
  if (state_ != ConnectionState::kReady || doh_out_.empty()) return;
  if (!session_.Write(doh_out_)) {
    Close(CloseReason::kBroken, absl::StrCat("TLS write: ", session_.error()));
    return;
  }
  StartSend();
  CloseIfSessionEnded();
}

// Going away (the server's GOAWAY, or stream IDs ran out) with nothing
// left to finish (its last stream answered, or cancelled by a timeout): an
// orderly close, like a DoT upstream closing an idle connection. A session
// with nothing more to read or write otherwise is a connection error the
// server made (a bad frame, HPACK, flow control): nghttp2 queues its own
// GOAWAY and from then on reads and sends nothing, without failing a call.
// Left open, the connection would look ready while its streams and every
// new one waited for their deadlines; closed, its queries are lost now and
// retried elsewhere.
bool Connection::CloseIfSessionEnded() {
  if (state_ != ConnectionState::kReady || !doh_->started()) return false;
  if (doh_->going_away() && (doh_->active() == 0 || doh_->Finished())) {
    Bump(stats_.upstream_closed);
    Close(CloseReason::kPeerClosed, "HTTP/2 GOAWAY from upstream");
    return true;
  }
  if (!doh_->Finished()) return false;
  Close(CloseReason::kBroken, "HTTP/2 session ended by a protocol error");
  return true;
}

void Connection::OnResponse(uint16_t tag, http::DohClient::Result result, int status,
                            std::span<uint8_t> body) {
  if (result == http::DohClient::Result::kAnswer) {
    // The ID the pool bound for this query, in place of the wire's 0.
    dns::header::SetId(body.data(), tag);
    observer_.OnMessage(*this, body);
    return;
  }
  const uint32_t token = ids_.Lookup(tag);
  if (token == IdTable::kFree) return;  // released meanwhile
  ids_.Erase(tag);
  // A stream refused by GOAWAY was never processed: retried elsewhere
  // without blame. Every other ending is the upstream failing this query.
  const bool refused = result == http::DohClient::Result::kRefused;
  if (!refused) Bump(target_.stats->http_errors);
  const std::string detail =
      result == http::DohClient::Result::kHttpStatus
          ? absl::StrCat("HTTP status ", status)
          : absl::StrCat("HTTP/2: ", http::DohClient::ToString(result));
  observer_.OnQueryFailed(*this, token, !refused, detail);
}

}  // namespace dotproxy::upstream
