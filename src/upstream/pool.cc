#include "dotproxy/upstream/pool.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "dotproxy/control/log.h"
#include "dotproxy/upstream/backoff.h"

namespace dotproxy::upstream {
namespace {

using control::Log;
using control::Severity;
using metrics::Bump;
using metrics::Set;

constexpr auto kFailureLogInterval = std::chrono::seconds(10);
constexpr auto kHealthLogInterval = std::chrono::seconds(5);
// Consecutive failures an upstream is left with by a total outage.
constexpr int kOutageFailureCap = 3;

std::vector<int> Priorities(std::span<const config::UpstreamConfig> upstreams) {
  std::vector<int> priorities;
  for (const auto& upstream : upstreams) priorities.push_back(upstream.priority);
  return priorities;
}

}  // namespace

UpstreamPool::UpstreamPool(std::span<const config::UpstreamConfig> upstreams,
                           const PoolSettings& settings, io::Reactor& reactor,
                           const io::LoopClock& clock, const tls::ClientContext& tls_context,
                           metrics::ShardStats& stats, metrics::UpstreamStats* upstream_stats,
                           int shard_index, PoolNumbering numbering)
    : settings_(settings),
      tag_(numbering.tag),
      first_connection_(numbering.first_connection),
      first_upstream_(numbering.first_upstream),
      reactor_(reactor),
      clock_(clock),
      tls_context_(tls_context),
      stats_(stats),
      shard_index_(shard_index),
      health_(Priorities(upstreams), HealthPolicy{}),
      upstreams_(upstreams.size()) {
  // A UDP slot comes free only after its send completed: room for a
  // batch being sent beside a full window.
  settings_.connection.datagram_slots = 2 * settings_.max_inflight_per_connection + 16;
  // A DoH stream slot comes free when its stream closes: the cap plus
  // room for probes.
  settings_.connection.http_streams = settings_.max_inflight_per_connection + 16;
  for (size_t u = 0; u < upstreams.size(); ++u) {
    const config::UpstreamConfig& config = upstreams[u];
    Upstream& upstream = upstreams_[u];
    upstream.target.address = &config.address;
    upstream.target.policy = &config.peer;
    upstream.target.doh_path = &config.doh_path;
    upstream.target.stats = &upstream_stats[
        config.metrics_slot == config::UpstreamConfig::kPositionSlot ? u : config.metrics_slot];
    upstream.spec = config.spec;
    upstream.transport = config.transport;
    // A new pool sees every upstream healthy; the slot says so unless
    // another pool of this shard (a sibling group) sees it unhealthy.
    Set(upstream.target.stats->healthy, upstream.target.stats->unhealthy_views == 0 ? 1 : 0);
    const ConnectionKind kind = config.transport == config::Transport::kUdp ? ConnectionKind::kUdp
                                : config.transport == config::Transport::kTcp
                                    ? ConnectionKind::kTcp
                                : config.transport == config::Transport::kHttps
                                    ? ConnectionKind::kHttps
                                    : ConnectionKind::kTls;
    auto add = [&](ConnectionKind k) {
      const auto local = static_cast<uint32_t>(connections_.size());
      connections_.push_back(std::make_unique<Connection>(
          tag_ << kConnectionTagShift | (first_connection_ + local), static_cast<int>(u), upstream.target,
          settings_.connection, reactor_, clock_, tls_context_, rng_,
          static_cast<ConnectionObserver&>(*this), stats_, k));
      return local;
    };
    for (int c = 0; c < settings_.max_connections_per_upstream; ++c) {
      upstream.connections.push_back(add(kind));
    }
    if (kind == ConnectionKind::kUdp) upstream.fallback = add(ConnectionKind::kTcp);
  }
  // A probe asks for the root NS set; any matching answer proves the
  // upstream serves again.
  static constexpr uint8_t kProbe[] = {0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
                                       0, 0, 2, 0, 1};  // ". IN NS", RD=1
  dns::QueryInfo info;
  dns::ParseQuery(kProbe, info);
  probe_length_ = dns::BuildUpstreamQuery(kProbe, info, settings_.query_options, probe_query_);
  probe_question_length_ = info.question_length;
}

UpstreamPool::~UpstreamPool() {
  for (int u = 0; u < static_cast<int>(upstreams_.size()); ++u) CountUnhealthy(u, false);
}

void UpstreamPool::CountUnhealthy(int u, bool unhealthy) {
  Upstream& upstream = upstreams_[u];
  if (upstream.counted_unhealthy == unhealthy) return;
  upstream.counted_unhealthy = unhealthy;
  metrics::UpstreamStats& slot = *upstream.target.stats;
  slot.unhealthy_views += unhealthy ? 1 : -1;
  Set(slot.healthy, slot.unhealthy_views == 0 ? 1 : 0);
}

void UpstreamPool::Start() {
  for (Upstream& upstream : upstreams_) {
    // UDP sockets cost nothing to open: all of them, for source-port spread.
    const size_t open = upstream.transport == config::Transport::kUdp
                            ? upstream.connections.size() : 1;
    for (size_t c = 0; c < open; ++c) Connect(*connections_[upstream.connections[c]]);
  }
}

bool UpstreamPool::Describe(int upstream, const sockaddr** address, bool* tls, bool* udp) const {
  const int u = LocalUpstream(upstream);
  if (u < 0) return false;
  const Upstream& entry = upstreams_[static_cast<size_t>(u)];
  *address = entry.target.address->get();
  *tls = config::IsEncrypted(entry.transport);
  *udp = entry.transport == config::Transport::kUdp;
  return true;
}

const sockaddr* UpstreamPool::LocalAddress(uint32_t index) const {
  const uint32_t local = LocalConnection(index);
  return local == kNoConnection ? nullptr : connections_[local]->local_address();
}

int UpstreamPool::LocalUpstream(int upstream) const {
  if (upstream < 0 || TagOfUpstream(upstream) != tag_) return -1;
  const int u = (upstream & ((1 << kUpstreamTagShift) - 1)) - first_upstream_;
  return u >= 0 && u < static_cast<int>(upstreams_.size()) ? u : -1;
}

uint32_t UpstreamPool::LocalConnection(uint32_t index) const {
  if (index == kNoConnection || TagOfConnection(index) != tag_) return kNoConnection;
  const uint32_t local = (index & ((1u << kConnectionTagShift) - 1)) - first_connection_;
  // Below first_connection_ wraps around: out of range too.
  return local < connections_.size() ? local : kNoConnection;
}

void UpstreamPool::OnCompletion(uint32_t index, const io::Completion& completion) {
  if (const uint32_t local = LocalConnection(index); local != kNoConnection) {
    connections_[local]->OnCompletion(completion);
  }
}

void UpstreamPool::Retire(io::Clock::time_point deadline) {
  retiring_ = true;
  retire_deadline_ = deadline;
  for (int u = 0; u < static_cast<int>(upstreams_.size()); ++u) {
    Upstream& upstream = upstreams_[u];
    if (upstream.probe_outstanding) {
      Release(kProbeToken | static_cast<uint32_t>(u), upstream.probe);
      upstream.probe_outstanding = false;
    }
    upstream.reconnect_pending = false;
    CountUnhealthy(u, false);  // the new generation's view replaces this one
  }
}

bool UpstreamPool::Quiescent() const {
  if (!retiring_) return false;
  for (const auto& connection : connections_) {
    if (connection->state() != ConnectionState::kIdle) return false;
  }
  return true;
}

void UpstreamPool::Flush() {
  for (auto& connection : connections_) connection->Flush();
}

void UpstreamPool::Shutdown() {
  for (auto& connection : connections_) connection->ShutdownSocket();
}

// An upstream can take a query when one of its connections is (being) set
// up and below its in-flight cap, or when it may open another one.
bool UpstreamPool::Usable(int u) const {
  const Upstream& upstream = upstreams_[u];
  bool can_open = false;
  for (uint32_t index : upstream.connections) {
    const Connection& connection = *connections_[index];
    if (connection.alive()) {
      if (connection.in_flight() < settings_.max_inflight_per_connection &&
          connection.accepting()) {
        return true;
      }
    } else if (connection.state() == ConnectionState::kIdle) {
      can_open = true;
    }
  }
  return can_open && clock_.now() >= upstream.retry_at;
}

Connection* UpstreamPool::Acquire(int u) {
  if (upstreams_[u].transport == config::Transport::kUdp) return AcquireDatagram(u);
  const Upstream& upstream = upstreams_[u];
  const size_t cap = settings_.max_inflight_per_connection;
  // A verified connection first, then one being set up, then a new one.
  for (uint32_t index : upstream.connections) {
    Connection& connection = *connections_[index];
    if (connection.state() == ConnectionState::kReady && connection.in_flight() < cap &&
        connection.accepting()) {
      return &connection;
    }
  }
  for (uint32_t index : upstream.connections) {
    Connection& connection = *connections_[index];
    if (connection.alive() && connection.in_flight() < cap && connection.accepting()) {
      return &connection;
    }
  }
  if (clock_.now() < upstream.retry_at) return nullptr;
  for (uint32_t index : upstream.connections) {
    Connection& connection = *connections_[index];
    if (connection.state() != ConnectionState::kIdle) continue;
    Connect(connection);
    return connection.alive() ? &connection : nullptr;
  }
  return nullptr;
}

void UpstreamPool::Connect(Connection& connection) {
  if (auto status = connection.Connect(); !status.ok()) {
    UpstreamFailed(connection.upstream(),
                   std::string_view(status.message().data(), status.message().size()));
  }
}

bool UpstreamPool::Send(uint32_t token, std::span<uint8_t> query, int exclude, bool allow_excluded,
                        Binding& binding) {
  // An upstream number of the other pool (a query retried across a
  // reload) excludes nothing here.
  exclude = LocalUpstream(exclude);
  int u = health_.Select([this](int i) { return Usable(i); }, exclude, rng_.Next());
  if (u < 0 && allow_excluded && exclude >= 0 && Usable(exclude)) u = exclude;
  if (u < 0) return false;
  return SendOn(u, token, query, binding);
}

bool UpstreamPool::SendOn(int u, uint32_t token, std::span<uint8_t> query, Binding& binding) {
  Connection* connection = Acquire(u);
  uint16_t id = 0;
  if (connection == nullptr || !connection->Queue(token, query, id)) return false;
  binding = {Tagged(u), connection->index(), id, settings_.cache_answers};
  health_.AddInFlight(u);
  Bump(upstreams_[u].target.stats->in_flight);
  Bump(upstreams_[u].target.stats->queries);
  return true;
}

void UpstreamPool::Unbind(const Binding& binding) {
  const int u = LocalUpstream(binding.upstream);
  if (u < 0) return;
  health_.RemoveInFlight(u);
  metrics::Drop(upstreams_[u].target.stats->in_flight);
}

void UpstreamPool::Release(uint32_t token, const Binding& binding) {
  const uint32_t local = LocalConnection(binding.connection);
  if (local == kNoConnection) return;
  Connection& connection = *connections_[local];
  if (connection.Lookup(binding.id) == token) {
    if (connection.kind() == ConnectionKind::kUdp) {
      ReleaseFallback(connection, connection.upstream(), binding.id);
    }
    connection.Erase(binding.id);
  }
  Unbind(binding);
}

void UpstreamPool::NoteTimeout(const Binding& binding, bool counts_against_upstream) {
  const int u = LocalUpstream(binding.upstream);
  if (u < 0) return;
  if (counts_against_upstream) {
    Bump(upstreams_[u].target.stats->timeouts);
    NoteHealth(u, health_.RecordFailure(u, clock_.now()));
  }
  if (const uint32_t local = LocalConnection(binding.connection); local != kNoConnection) {
    connections_[local]->NoteTimeout();
  }
}

bool UpstreamPool::CanSendElsewhere(int exclude) {
  return health_.Select([this](int i) { return Usable(i); }, LocalUpstream(exclude),
                        rng_.Next()) >= 0;
}

bool UpstreamPool::AnyAlive() const {
  // The queries' own connections: a udp:// upstream's TCP fallback takes
  // only its TC=1 retries, so it alone does not make waiting worthwhile.
  for (const Upstream& upstream : upstreams_) {
    for (const uint32_t c : upstream.connections) {
      if (connections_[c]->alive()) return true;
    }
  }
  return false;
}

void UpstreamPool::OnReady(Connection& connection) {
  Upstream& upstream = upstreams_[connection.upstream()];
  if (upstream.connect_failures > 0 || !upstream.logged_first_connect) {
    Log(Severity::kInfo, "shard %d: upstream %s: %s (%s)", shard_index_, upstream.spec,
        upstream.logged_first_connect ? "connected again" : "connected", connection.Describe());
    upstream.logged_first_connect = true;
  }
  // connect_failures is reset by the first answer, not here: an upstream
  // that completes TLS but never answers must keep backing off.
  upstream.reconnect_pending = false;
}

void UpstreamPool::OnMessage(Connection& connection, std::span<uint8_t> message) {
  dns::ResponseInfo info;
  if (!dns::ParseResponse(message, info)) {
    Bump(stats_.upstream_malformed);
    return;
  }
  const uint32_t token = connection.Lookup(info.id);
  if (token == IdTable::kFree) {
    Bump(stats_.upstream_unknown_id);
    return;
  }
  const int u = connection.upstream();
  if (token & kProbeToken) {
    OnProbeAnswer(connection, u, message, info);  // even truncated, it proves the upstream
    return;
  }
  if (token & kFallbackToken) {
    OnFallbackAnswer(connection, u, token, message, info);
    return;
  }
  if (connection.kind() == ConnectionKind::kUdp && dns::header::IsTruncated(message.data())) {
    RetryOverTcp(connection, u, token, message, info);
    return;
  }
  int keepalive = -1;
  const AnswerSink::Outcome outcome = sink_->OnAnswer(token, message, info, &keepalive);
  if (outcome.verdict != AnswerSink::Verdict::kAccepted) return;  // counted by the sink
  if (keepalive >= 0) connection.NoteKeepalive(keepalive);
  Answered(connection, u, info.id, outcome.sent_at);
}

// An answer matched its query (or probe): free the ID and the in-flight
// share, and let it count for the upstream's health and latency.
void UpstreamPool::Answered(Connection& connection, int u, uint16_t id,
                            io::Clock::time_point sent_at) {
  connection.Erase(id);
  connection.NoteAnswered();
  Unbind({Tagged(u), connection.index(), id});
  Upstream& upstream = upstreams_[u];
  upstream.connect_failures = 0;
  const auto latency =
      std::chrono::duration_cast<std::chrono::microseconds>(clock_.now() - sent_at);
  NoteHealth(u, health_.RecordAnswer(u, latency, clock_.now()));
  Bump(upstream.target.stats->answers);
  upstream.target.stats->response_time.Record(latency);
  SetGauge(upstream.target.stats->latency_us,
      static_cast<uint64_t>(health_.get(u).latency_ewma_ms * 1000));
}

void UpstreamPool::OnProbeAnswer(Connection& connection, int u, std::span<uint8_t> answer,
                                 const dns::ResponseInfo& info) {
  Upstream& upstream = upstreams_[u];
  const std::span<const uint8_t> asked(probe_query_ + dns::kHeaderSize, probe_question_length_);
  const std::span<const uint8_t> answered(answer.data() + dns::kHeaderSize, info.question_length);
  if (!dns::QuestionsMatch(asked, answered)) {
    Bump(stats_.upstream_question_mismatch);
    return;
  }
  upstream.probe_outstanding = false;
  Answered(connection, u, info.id, upstream.probe_sent_at);
}

void UpstreamPool::OnClosed(Connection& connection, CloseReason reason, std::string_view detail,
                            std::span<const uint32_t> lost) {
  const int u = connection.upstream();
  const bool failure = IsFailure(reason);
  if (failure && !retiring_) UpstreamFailed(u, detail);
  // Queries bound to this connection are retried once (elsewhere when
  // possible) or fail now rather than at their deadline.
  for (uint32_t token : lost) {
    if (token & kFallbackToken) {
      LoseFallback(u, token, failure);
      continue;
    }
    Unbind({Tagged(u), connection.index(), 0});
    if (token & kProbeToken) {
      upstreams_[u].probe_outstanding = false;
      continue;
    }
    sink_->OnQueryLost(token, Tagged(u), failure);
  }
  if (connection.kind() == ConnectionKind::kUdp) DropFallbacksOf(connection, u);
}

// A DoH query failed on a connection that stays up: retried once (elsewhere
// when possible) or failed now, as a query lost with its connection.
void UpstreamPool::OnQueryFailed(Connection& connection, uint32_t token, bool upstream_failed,
                                 std::string_view detail) {
  const int u = connection.upstream();
  Unbind({Tagged(u), connection.index(), 0});
  if (upstream_failed) {
    NoteHealth(u, health_.RecordFailure(u, clock_.now()));
    Upstream& upstream = upstreams_[u];
    const auto now = clock_.now();
    if (now - upstream.last_failure_log >= kFailureLogInterval) {
      upstream.last_failure_log = now;
      Log(Severity::kWarning, "shard %d: upstream %s: query failed: %s", shard_index_,
          upstream.spec, std::string(detail));
    }
  }
  if (token & kProbeToken) {
    upstreams_[u].probe_outstanding = false;
    return;
  }
  if (token & kFallbackToken) {  // not made on DoH connections; for completeness
    LoseFallback(u, token, upstream_failed);
    return;
  }
  sink_->OnQueryLost(token, Tagged(u), upstream_failed);
}

void UpstreamPool::UpstreamFailed(int u, std::string_view reason) {
  Upstream& upstream = upstreams_[u];
  const auto now = clock_.now();
  Bump(stats_.upstream_connect_failures);
  Bump(upstream.target.stats->connect_failures);
  ++upstream.connect_failures;
  // With another upstream up, this one can wait; with none, every query
  // fails until one is back, so try again soon (OutageBackoffDelay). The
  // fast retries of an outage do not pile up failures: when another
  // upstream comes back first, this one's backoff starts again from a few
  // failures, not from the 10 s cap.
  if (AnyAlive()) {
    upstream.retry_at = now + BackoffDelay(upstream.connect_failures, rng_.Next());
  } else {
    upstream.connect_failures = std::min(upstream.connect_failures, kOutageFailureCap);
    upstream.retry_at = now + OutageBackoffDelay(upstream.connect_failures, rng_.Next());
  }
  upstream.reconnect_pending = true;
  if (upstream.connect_failures == 1 || now - upstream.last_failure_log >= kFailureLogInterval) {
    Log(Severity::kWarning, "shard %d: upstream %s: %s (failure %d, retry in %d ms)", shard_index_,
        upstream.spec, std::string(reason), upstream.connect_failures,
        static_cast<int>(
            std::chrono::duration_cast<std::chrono::milliseconds>(upstream.retry_at - now).count()));
    upstream.last_failure_log = now;
  }
  NoteHealth(u, health_.RecordFailure(u, now));
}

void UpstreamPool::NoteHealth(int u, bool changed) {
  if (!changed) return;
  Upstream& upstream = upstreams_[u];
  const UpstreamHealth& health = health_.get(u);
  const auto now = clock_.now();
  if (!retiring_) CountUnhealthy(u, health.state != HealthState::kHealthy);
  // Rate-limited: a flapping upstream must not flood the log.
  if (now - upstream.last_health_log < kHealthLogInterval) {
    ++upstream.health_logs_suppressed;
    return;
  }
  Log(Severity::kWarning,
      "shard %d: upstream %s is now %s (%d consecutive failures, latency %.1f ms%s)", shard_index_,
      upstream.spec, ToString(health.state), health.consecutive_failures, health.latency_ewma_ms,
      upstream.health_logs_suppressed > 0
          ? absl::StrCat(", ", upstream.health_logs_suppressed, " changes not logged")
          : std::string());
  upstream.last_health_log = now;
  upstream.health_logs_suppressed = 0;
}

void UpstreamPool::SendProbe(int u) {
  Upstream& upstream = upstreams_[u];
  if (upstream.probe_outstanding || !Usable(u)) return;
  Bump(stats_.probes);
  std::memcpy(probe_wire_, probe_query_, probe_length_);
  if (!SendOn(u, kProbeToken | static_cast<uint32_t>(u), {probe_wire_, probe_length_},
              upstream.probe)) {
    return;
  }
  upstream.probe_outstanding = true;
  upstream.probe_sent_at = clock_.now();
}

void UpstreamPool::RunTimers(bool draining) {
  for (auto& connection : connections_) connection->CheckTimers();
  const auto now = clock_.now();
  if (retiring_) {
    // A connection goes once nothing waits on it; at the deadline the
    // rest go too, and their queries are retried on the new pool.
    for (auto& connection : connections_) {
      if (connection->alive() && (connection->in_flight() == 0 || now >= retire_deadline_)) {
        connection->Close(CloseReason::kRetired, "retired by a configuration reload");
      }
    }
    return;
  }
  for (int u = 0; u < static_cast<int>(upstreams_.size()); ++u) {
    Upstream& upstream = upstreams_[u];
    if (upstream.probe_outstanding &&
        (draining || now - upstream.probe_sent_at >= settings_.probe_timeout)) {
      Release(kProbeToken | static_cast<uint32_t>(u), upstream.probe);
      upstream.probe_outstanding = false;
    }
    if (draining) continue;
    // After a failure, keep trying in the background (with backoff) so the
    // upstream is ready again as soon as it comes back.
    if (upstream.reconnect_pending && now >= upstream.retry_at) {
      upstream.reconnect_pending = false;
      bool any_open = false;
      for (uint32_t index : upstream.connections) {
        if (connections_[index]->state() != ConnectionState::kIdle) any_open = true;
      }
      if (!any_open) Connect(*connections_[upstream.connections.front()]);
    }
    if (health_.ProbeDue(u, now)) {
      // No healthy upstream at all: probe at the shortest interval.
      health_.ProbeSent(u, now, /*fast=*/!health_.AnyHealthy());
      SendProbe(u);
    }
  }
}

}  // namespace dotproxy::upstream
