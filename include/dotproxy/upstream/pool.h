#pragma once
// A shard's upstreams: for each, its connections (up to a cap, opened on
// demand), its health (failures, latency EWMA, probes while unhealthy) and
// its reconnect backoff. The pool decides which connection gets a query:
// healthy before unhealthy, better priority first, lowest expected latency,
// a connection below its in-flight cap (siblings open when every one is at
// it). It owns the connections and is their observer; it reports answers
// and lost queries to the AnswerSink (the forwarder), and implements the
// QueryRouter the forwarder sends through. Health probes are its own
// queries: they never take a forwarder slot.
//
// Shard thread only. Connections and ID tables are made at construction.
//
// After a reload a shard runs two pools for a while (see PoolSet): the new
// one takes new queries, the retiring one lets its queries in flight finish
// and then closes. A pool's `tag` (0 or 1) is in every connection index and
// upstream number it hands out, and a generation's pools (one per upstream
// group: forward zones) number theirs one after the other (PoolNumbering),
// so a completion or a Binding names its pool.

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dotproxy/config/config.h"
#include "dotproxy/dns/edns.h"
#include "dotproxy/io/clock.h"
#include "dotproxy/io/reactor.h"
#include "dotproxy/metrics/stats.h"
#include "dotproxy/tls/client.h"
#include "dotproxy/upstream/connection.h"
#include "dotproxy/upstream/health.h"
#include "dotproxy/upstream/id_table.h"
#include "dotproxy/upstream/router.h"

namespace dotproxy::upstream {

struct PoolSettings {
  ConnectionSettings connection;
  size_t max_inflight_per_connection = 100;
  int max_connections_per_upstream = 4;
  // A probe unanswered after this is abandoned (the next one backs off).
  std::chrono::milliseconds probe_timeout{2000};
  dns::UpstreamQueryOptions query_options;
  // Answers through this pool may be cached (Binding::cache_answers): a
  // forward zone's `cache` setting.
  bool cache_answers = true;
};

// Where a pool's numbers start inside its generation (see PoolSet): a
// generation's pools, one per upstream group, number their upstreams and
// connections one after the other, so that a tagged number names its pool.
struct PoolNumbering {
  uint32_t tag = 0;              // the generation: 0 or 1
  uint32_t first_connection = 0;
  int first_upstream = 0;
};

class UpstreamPool final : public QueryRouter, public ConnectionObserver {
 public:
  // Connection indices carry the tag from this bit up; upstream numbers
  // (Binding::upstream, exclude) from kUpstreamTagShift up.
  static constexpr uint32_t kConnectionTagShift = 23;
  static constexpr int kUpstreamTagShift = 16;
  static uint32_t TagOfConnection(uint32_t index) { return index >> kConnectionTagShift; }
  static uint32_t TagOfUpstream(int upstream) {
    return static_cast<uint32_t>(upstream) >> kUpstreamTagShift;
  }

  // `upstream_stats` is indexed by UpstreamConfig::metrics_slot (or the
  // position when unassigned) and outlives the pool; so do `upstreams`.
  UpstreamPool(std::span<const config::UpstreamConfig> upstreams, const PoolSettings& settings,
               io::Reactor& reactor, const io::LoopClock& clock,
               const tls::ClientContext& tls_context, metrics::ShardStats& stats,
               metrics::UpstreamStats* upstream_stats, int shard_index,
               PoolNumbering numbering = {});
  ~UpstreamPool() override;

  uint32_t tag() const { return tag_; }
  size_t upstream_count() const { return upstreams_.size(); }
  // The address and transport of `upstream` (a tagged number), for dnstap;
  // false when it is not this pool's.
  bool Describe(int upstream, const sockaddr** address, bool* tls, bool* udp) const;
  // This proxy's end of connection `index` (a tagged number); null when
  // unknown or not this pool's.
  const sockaddr* LocalAddress(uint32_t index) const;
  // After a reload: takes no new queries (the PoolSet stops sending them),
  // sends no probes and opens nothing; each connection closes once its
  // queries are answered, released or (at `deadline`) lost, which reports
  // them to the sink for a retry on the new pool. Gauges are left to the
  // new pool.
  void Retire(io::Clock::time_point deadline);
  bool retiring() const { return retiring_; }
  // Retired and nothing left: every connection closed and recycled (no
  // operation points into the pool), no probe out. Safe to destroy.
  bool Quiescent() const;

  void set_sink(AnswerSink* sink) { sink_ = sink; }

  // Opens one connection per upstream so the first queries find it ready.
  void Start();
  // Routed by the shard: a completion of connection `index`.
  void OnCompletion(uint32_t index, const io::Completion& completion);
  // End of the loop iteration: one TLS write per connection with queries.
  void Flush();
  // Setup deadlines, idle connections, background reconnects, probes.
  void RunTimers(bool draining);
  // At exit: shut every socket so upstreams see the close at once.
  void Shutdown();

  // QueryRouter
  bool Send(uint32_t token, std::span<uint8_t> query, int exclude, bool allow_excluded,
            Binding& binding) override;
  void Release(uint32_t token, const Binding& binding) override;
  void NoteTimeout(const Binding& binding, bool counts_against_upstream) override;
  // A pool is one group: the query does not matter.
  bool CanSendElsewhere(std::span<const uint8_t> /*query*/, int exclude) override {
    return CanSendElsewhere(exclude);
  }
  bool AnyAlive(std::span<const uint8_t> /*query*/) const override { return AnyAlive(); }
  bool CanSendElsewhere(int exclude);
  bool AnyAlive() const;

  const HealthTracker& health() const { return health_; }
  const Connection& connection(uint32_t index) const { return *connections_[index]; }
  size_t connection_count() const { return connections_.size(); }

 private:
  // Probe tokens carry this bit (forwarder tokens are slot indices < 2^24).
  static constexpr uint32_t kProbeToken = 0x80000000u;
  // A TC=1 retry over a UDP upstream's TCP connection is bound there under
  // this bit | the UDP connection's position in its upstream << 16 | the
  // query's UDP ID; the forwarder's binding stays on the UDP connection.
  static constexpr uint32_t kFallbackToken = 0x40000000u;
  static uint32_t FallbackToken(uint32_t channel, uint16_t id) {
    return kFallbackToken | channel << 16 | id;
  }
  static uint32_t FallbackChannel(uint32_t token) { return (token >> 16) & 0x3fff; }
  static uint16_t FallbackUdpId(uint32_t token) { return static_cast<uint16_t>(token); }

  struct Upstream {
    UpstreamTarget target;
    std::string spec;  // as configured, for logs
    config::Transport transport = config::Transport::kTls;
    std::vector<uint32_t> connections;
    // udp://: the plain TCP connection TC=1 answers are retried on, opened
    // on demand and kept (not in `connections`: queries never pick it).
    uint32_t fallback = kNoConnection;
    uint32_t next_channel = 0;  // udp://: round robin over the sockets
    bool counted_unhealthy = false;  // this pool holds one of the slot's unhealthy_views
    // Connection-level failures back off per upstream, not per connection.
    int connect_failures = 0;
    io::Clock::time_point retry_at{};
    bool reconnect_pending = false;  // reconnect in the background when backoff ends
    io::Clock::time_point last_failure_log{};
    io::Clock::time_point last_health_log{};
    int health_logs_suppressed = 0;
    bool logged_first_connect = false;
    // The outstanding health probe, if any.
    bool probe_outstanding = false;
    Binding probe;
    io::Clock::time_point probe_sent_at{};
  };

  // ConnectionObserver (only its connections call these).
  void OnReady(Connection& connection) override;
  void OnMessage(Connection& connection, std::span<uint8_t> message) override;
  void OnQueryFailed(Connection& connection, uint32_t token, bool upstream_failed,
                     std::string_view detail) override;
  void OnClosed(Connection& connection, CloseReason reason, std::string_view detail,
                std::span<const uint32_t> lost) override;

  bool Usable(int upstream) const;
  Connection* Acquire(int upstream);
  bool SendOn(int upstream, uint32_t token, std::span<uint8_t> query, Binding& binding);
  void Unbind(const Binding& binding);
  void Answered(Connection& connection, int upstream, uint16_t id, io::Clock::time_point sent_at);
  void Connect(Connection& connection);
  void UpstreamFailed(int upstream, std::string_view reason);
  void NoteHealth(int upstream, bool changed);
  void SendProbe(int upstream);
  Connection* AcquireDatagram(int upstream);
  void RetryOverTcp(Connection& connection, int upstream, uint32_t token,
                    std::span<const uint8_t> answer, const dns::ResponseInfo& info);
  void OnFallbackAnswer(Connection& fallback, int upstream, uint32_t fallback_token,
                        std::span<uint8_t> answer, const dns::ResponseInfo& info);
  void LoseFallback(int upstream, uint32_t fallback_token, bool failure);
  // The UDP connection a fallback token names, or null when the token is
  // out of range (a socket count changed by a reload).
  Connection* FallbackOrigin(int upstream, uint32_t fallback_token);
  void DropFallbacksOf(const Connection& connection, int upstream);
  void ReleaseFallback(Connection& connection, int upstream, uint16_t id);
  void OnProbeAnswer(Connection& connection, int upstream, std::span<uint8_t> answer,
                     const dns::ResponseInfo& info);

  // Upstream numbers and connection indices as handed out (tagged) and as
  // used inside (positions). Local*() return -1 / kNoConnection for another
  // pool's values.
  int Tagged(int u) const {
    return static_cast<int>(tag_ << kUpstreamTagShift) | (first_upstream_ + u);
  }
  int LocalUpstream(int upstream) const;
  uint32_t LocalConnection(uint32_t index) const;
  void SetGauge(std::atomic<uint64_t>& gauge, uint64_t value) {
    if (!retiring_) metrics::Set(gauge, value);
  }
  // Adds or withdraws this pool's view of `upstream` as unhealthy in the
  // shared slot and sets the slot's `healthy` from all the views.
  void CountUnhealthy(int upstream, bool unhealthy);

  PoolSettings settings_;
  uint32_t tag_ = 0;
  uint32_t first_connection_ = 0;
  int first_upstream_ = 0;
  bool retiring_ = false;
  io::Clock::time_point retire_deadline_{};
  io::Reactor& reactor_;
  const io::LoopClock& clock_;
  const tls::ClientContext& tls_context_;
  metrics::ShardStats& stats_;
  int shard_index_;
  AnswerSink* sink_ = nullptr;
  FastRng rng_;
  HealthTracker health_;
  std::vector<Upstream> upstreams_;
  std::vector<std::unique_ptr<Connection>> connections_;  // grouped by upstream
  // ". IN NS" as sent upstream (padded like every query).
  uint8_t probe_query_[64 + dns::kUpstreamQueryGrowth];
  size_t probe_length_ = 0;
  uint16_t probe_question_length_ = 0;
  uint8_t probe_wire_[64 + dns::kUpstreamQueryGrowth];  // scratch: Send rewrites the ID
  uint8_t fallback_wire_[kMaxDatagramQuery];             // scratch: a TC=1 retry
};

}  // namespace dotproxy::upstream
