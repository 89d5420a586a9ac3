// The pool's udp:// duties: spreading queries over an upstream's UDP
// sockets, and the TCP fallback of an answer that came back truncated
// (TC=1, RFC 7766 §5 / RFC 1035 §4.2.1): the query is sent again, to the
// same address and port, over the upstream's plain TCP connection, and the
// client gets that answer. The forwarder's binding stays on the UDP
// connection (its ID stays bound there); the TCP side holds a
// FallbackToken naming it, so either side's release or loss finds the other.

#include <cstring>

#include "dotproxy/upstream/pool.h"

namespace dotproxy::upstream {

using metrics::Bump;

// Round robin over the sockets that are open and below the in-flight cap;
// a closed one is reopened (it costs no round trip) unless backing off.
Connection* UpstreamPool::AcquireDatagram(int u) {
  Upstream& upstream = upstreams_[u];
  const size_t count = upstream.connections.size();
  const size_t cap = settings_.max_inflight_per_connection;
  const bool may_open = clock_.now() >= upstream.retry_at;
  for (size_t n = 0; n < count; ++n) {
    const uint32_t index = upstream.connections[(upstream.next_channel + n) % count];
    Connection& connection = *connections_[index];
    if (connection.state() == ConnectionState::kIdle && may_open) Connect(connection);
    if (connection.state() == ConnectionState::kReady && connection.in_flight() < cap) {
      upstream.next_channel = static_cast<uint32_t>((upstream.next_channel + n + 1) % count);
      return &connection;
    }
  }
  return nullptr;
}

void UpstreamPool::RetryOverTcp(Connection& connection, int u, uint32_t token,
                                std::span<const uint8_t> answer, const dns::ResponseInfo& info) {
  const std::span<const uint8_t> sent = connection.SentQuery(info.id);
  if (sent.size() < dns::kHeaderSize) return;
  // The question is checked here, as the forwarder would: a truncated
  // answer to another question must not make us ask again.
  dns::QueryInfo asked_info;
  if (dns::ParseQuery(sent, asked_info) != dns::QueryParse::kOk ||
      !dns::QuestionsMatch({sent.data() + dns::kHeaderSize, asked_info.question_length},
                           {answer.data() + dns::kHeaderSize, info.question_length})) {
    Bump(stats_.upstream_question_mismatch);
    return;
  }
  if (connection.Fallback(info.id) != Connection::kNoFallback) return;  // a duplicate
  Upstream& upstream = upstreams_[u];
  Connection& fallback = *connections_[upstream.fallback];
  if (fallback.state() == ConnectionState::kIdle) Connect(fallback);
  const uint32_t channel = connection.index() - connections_[upstream.connections.front()]->index();
  std::memcpy(fallback_wire_, sent.data(), sent.size());
  uint16_t tcp_id = 0;
  if (!fallback.alive() ||
      !fallback.Queue(FallbackToken(channel, info.id), {fallback_wire_, sent.size()}, tcp_id)) {
    // No TCP to this upstream now: the query is lost here (retried
    // elsewhere or failed at once rather than at its deadline).
    connection.Erase(info.id);
    Unbind({Tagged(u), connection.index(), info.id});
    sink_->OnQueryLost(token, Tagged(u), /*upstream_failed=*/true);
    return;
  }
  connection.SetFallback(info.id, tcp_id);
  Bump(stats_.tc_fallbacks);
  Bump(upstream.target.stats->tc_fallbacks);
}

void UpstreamPool::OnFallbackAnswer(Connection& fallback, int u, uint32_t fallback_token,
                                    std::span<uint8_t> answer, const dns::ResponseInfo& info) {
  Connection* origin = FallbackOrigin(u, fallback_token);
  if (origin == nullptr) return;
  Connection& connection = *origin;
  const uint16_t udp_id = FallbackUdpId(fallback_token);
  const uint32_t token = connection.Lookup(udp_id);
  if (token == IdTable::kFree || (token & kProbeToken) ||
      connection.Fallback(udp_id) != info.id) {
    // The query went meanwhile (answered, timed out, its socket closed).
    fallback.Erase(info.id);
    Bump(stats_.upstream_unknown_id);
    return;
  }
  int keepalive = -1;
  const AnswerSink::Outcome outcome = sink_->OnAnswer(token, answer, info, &keepalive);
  if (outcome.verdict != AnswerSink::Verdict::kAccepted) return;  // counted by the sink
  if (keepalive >= 0) fallback.NoteKeepalive(keepalive);
  fallback.Erase(info.id);
  fallback.NoteAnswered();
  Answered(connection, u, udp_id, outcome.sent_at);
}

Connection* UpstreamPool::FallbackOrigin(int u, uint32_t fallback_token) {
  const Upstream& upstream = upstreams_[u];
  const uint32_t channel = FallbackChannel(fallback_token);
  if (channel >= upstream.connections.size()) return nullptr;
  return connections_[upstream.connections[channel]].get();
}

// The TCP fallback connection closed with this retry on it.
void UpstreamPool::LoseFallback(int u, uint32_t fallback_token, bool failure) {
  Connection* origin = FallbackOrigin(u, fallback_token);
  if (origin == nullptr) return;
  Connection& connection = *origin;
  const uint16_t udp_id = FallbackUdpId(fallback_token);
  const uint32_t token = connection.Lookup(udp_id);
  if (token == IdTable::kFree || connection.Fallback(udp_id) == Connection::kNoFallback) return;
  connection.Erase(udp_id);
  Unbind({Tagged(u), connection.index(), udp_id});
  sink_->OnQueryLost(token, Tagged(u), failure);
}

// A UDP socket closed: the TCP retries of its queries are orphans now (the
// queries were lost with the socket), so their IDs on the fallback
// connection are freed rather than held until an answer that nobody awaits,
// or never. A scan of the ID table: sockets close rarely (reload, shutdown,
// a socket error), never per query.
void UpstreamPool::DropFallbacksOf(const Connection& connection, int u) {
  const Upstream& upstream = upstreams_[u];
  if (upstream.fallback == kNoConnection) return;
  Connection& fallback = *connections_[upstream.fallback];
  if (fallback.in_flight() == 0) return;
  const uint32_t channel = connection.index() - connections_[upstream.connections.front()]->index();
  for (uint32_t id = 0; id < IdTable::kIds; ++id) {
    const uint32_t token = fallback.Lookup(static_cast<uint16_t>(id));
    if (token != IdTable::kFree && (token & kFallbackToken) && !(token & kProbeToken) &&
        FallbackChannel(token) == channel) {
      fallback.Erase(static_cast<uint16_t>(id));
    }
  }
}

// The forwarder let a UDP query go: its TCP retry, if any, goes too.
void UpstreamPool::ReleaseFallback(Connection& connection, int u, uint16_t id) {
  const int tcp_id = connection.Fallback(id);
  if (tcp_id == Connection::kNoFallback) return;
  const Upstream& upstream = upstreams_[u];
  Connection& fallback = *connections_[upstream.fallback];
  const uint32_t channel = connection.index() - connections_[upstream.connections.front()]->index();
  const auto tcp = static_cast<uint16_t>(tcp_id);
  if (fallback.Lookup(tcp) == FallbackToken(channel, id)) fallback.Erase(tcp);
}

}  // namespace dotproxy::upstream
