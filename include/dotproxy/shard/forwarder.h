#pragma once
// What happens to one query, from the moment a front end hands it over to
// its one reply: parse and validate, local error answers, cache hit (copy
// and patch straight into the reply buffer), dispatch to the upstream pool,
// waiting for connection capacity, the answer's way back (question check,
// cache insert, client ID and 0x20 case restored, truncation), retry once
// elsewhere on timeout or connection loss, serve-stale (RFC 8767) when
// upstreams fail, prefetch of entries near expiry, SERVFAIL at the
// deadline. It owns no sockets: it replies through the Replier and sends
// through the QueryRouter. Shard thread only; nothing allocates per query.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <atomic>
#include <span>

#include "dotproxy/cache/packet_cache.h"
#include "dotproxy/dns/edns.h"
#include "dotproxy/dns/message.h"
#include "dotproxy/dnstap/tap.h"
#include "dotproxy/frontend/client_ref.h"
#include "dotproxy/frontend/rate_limiter.h"
#include "dotproxy/io/clock.h"
#include "dotproxy/io/standing_queue.h"
#include "dotproxy/metrics/stats.h"
#include "dotproxy/policy/tables.h"
#include "dotproxy/shard/query_table.h"
#include "dotproxy/upstream/router.h"

namespace dotproxy::shard {

struct ForwarderSettings {
  std::chrono::milliseconds query_timeout{2000};
  // Retrying elsewhere needs somewhere else: with one upstream a query keeps
  // its whole deadline on its first attempt.
  bool retry_on_timeout = false;
  uint16_t edns_udp_size = 1232;  // advertised in the replies we build
  // Largest UDP answer, whatever the client advertises (DNS Flag Day 2020):
  // a client's limit is min(its EDNS size or 512, this, kMaxUdpReply).
  uint16_t max_udp_size = 1232;
  dns::UpstreamQueryOptions query_options;
  size_t max_inflight = 16384;
  // RFC 8482: ANY over UDP answered here with a synthesized HINFO.
  bool minimal_any = true;
  // A query waiting for upstream capacity is shed once it has waited
  // (since it was read) max_wait, or overload_wait while the wait queue
  // stands (io::StandingQueue): dropped over UDP (the client retries after
  // its own timeout, as Unbound's request list and dnsdist do under
  // overload), SERVFAIL over TCP (a stream cannot lose a query silently).
  // While the queue stands, waiting queries are also dispatched newest
  // first, so the ones answered keep a latency near the unloaded one and
  // the capacity stays busy (adaptive LIFO, as in Facebook's "Fail at
  // Scale"); a burst that drains in time is served first come, first
  // served.
  io::StandingQueueSettings queue_wait;
  // Local answers and blocklists, asked before the cache; null: none.
  // Borrowed from the Config in force (which outlives these settings).
  const policy::Tables* policy = nullptr;
};

class Forwarder final : public frontend::QuerySink, public upstream::AnswerSink {
 public:
  // `cache` may be null (caching off). Everything borrowed outlives this.
  Forwarder(const ForwarderSettings& settings, const io::LoopClock& clock,
            frontend::Replier& replier, upstream::QueryRouter& router,
            cache::PacketCache* cache, metrics::ShardStats& stats);

  // QuerySink: a query from a client.
  void OnQuery(std::span<uint8_t> wire, const frontend::ClientRef& client) override;

  // AnswerSink: the pool's reports.
  Outcome OnAnswer(uint32_t token, std::span<uint8_t> answer, const dns::ResponseInfo& info,
                   int* keepalive) override;
  void OnQueryLost(uint32_t token, int upstream, bool upstream_failed) override;

  // A reload: new timeouts, retry and EDNS policy for queries from now on
  // (max_inflight sized the table at start and is kept).
  void UpdateSettings(const ForwarderSettings& settings) {
    const size_t max_inflight = settings_.max_inflight;
    settings_ = settings;
    settings_.max_inflight = max_inflight;
    wait_queue_.set_settings(settings_.queue_wait);
  }

  // Asked before anything is answered (cache hits too); null: no limit.
  // Borrowed; replaced on reload.
  void set_rate_limiter(frontend::RateLimiter* limiter) { rate_limiter_ = limiter; }
  // dnstap of client and upstream messages; null: off. Borrowed.
  void set_dnstap(dnstap::Tap* tap) { tap_ = tap; }

  // Before the end-of-iteration flush: queries that waited for capacity.
  void DispatchWaiting();
  // Attempt and final deadlines.
  void RunTimers(bool draining);
  // Stop: prefetches have no client waiting, drop them now.
  void BeginDrain();
  // At exit: SERVFAIL whatever is still in flight.
  void FailAll();

  size_t in_flight() const { return table_.in_use(); }
  // The earliest deadline, or time_point::max() when nothing waits.
  io::Clock::time_point NextDeadline() const;
  const QueryTable& table() const { return table_; }

 private:
  // True when a slot took the query (QueryDone comes at its release).
  bool Accept(std::span<uint8_t> wire, const frontend::ClientRef& client);
  // `received`: the loop time the client's query was read, for the
  // query_duration histogram.
  void ReplyError(std::span<const uint8_t> query, const dns::QueryInfo& info, dns::Rcode rcode,
                  const frontend::ClientRef& client, io::Clock::time_point received);
  // Over the rate limit: true when the query is finished (dropped, slipped
  // or refused).
  bool Limited(std::span<const uint8_t> query, const dns::QueryInfo& info,
               const frontend::ClientRef& client);
  // Local data or a blocklist decides the answer: true when the query is
  // finished (answered here).
  bool AnswerFromPolicy(std::span<const uint8_t> query, const dns::QueryInfo& info,
                        const frontend::ClientRef& client);
  bool ServeFromCache(uint32_t entry, const frontend::ClientRef& client, uint16_t id,
                      std::span<const uint8_t> question, size_t udp_limit, bool stale,
                      io::Clock::time_point received);
  // A reply left for `client`: its time since `received`, by source.
  void ObserveReply(const frontend::ClientRef& client, metrics::AnswerSource source,
                    io::Clock::time_point received);
  // When a slot's query was read (set at allocation: a reload that changes
  // the query timeout does not move it).
  io::Clock::time_point ReceivedAt(const QuerySlot& slot) const { return slot.received_at; }
  uint16_t UdpLimit(const dns::QueryInfo& info) const;
  // Sends the open reply's first `length` bytes (0: abandons it), through
  // dnstap when on.
  void CommitReply(const frontend::ClientRef& client, std::span<const uint8_t> reply,
                   size_t length, io::Clock::time_point received);
  // dnstap events (forwarder_dnstap.cc); callers test tap_ first, so that
  // with dnstap off a hook costs one predictable branch. `query_time`:
  // when the query was read or sent, for responses.
  void TapClient(dnstap::MessageType type, const frontend::ClientRef& client,
                 std::span<const uint8_t> wire, io::Clock::time_point query_time);
  void TapUpstream(dnstap::MessageType type, const upstream::Binding& binding,
                   std::span<const uint8_t> wire, io::Clock::time_point query_time);
  void StartPrefetch(std::span<const uint8_t> query, const dns::QueryInfo& info);
  bool TryServeStale(QuerySlot& slot);
  // Sends the slot upstream (first attempt or retry); false when nothing
  // could take it.
  bool Dispatch(uint32_t index, int exclude, bool allow_excluded);
  // Dispatch, else wait for capacity while upstreams live, else SERVFAIL.
  void DispatchOrWait(uint32_t index, int exclude, bool allow_excluded,
                      std::atomic<uint64_t>& fail_counter);
  // Drops (UDP) or fails (TCP) queries that waited past the queue's bound.
  void ShedWaiting();
  void Unbind(uint32_t index);
  void Release(uint32_t index);
  void Fail(uint32_t index, std::atomic<uint64_t>& counter);
  void MakeSlotKey(const QuerySlot& slot, cache::CacheKey& key) const;
  // The slot's query as sent upstream: the router picks its group by it.
  std::span<const uint8_t> SlotQuery(uint32_t index) const {
    return {table_[index].query, table_[index].query_length};
  }

  ForwarderSettings settings_;
  const io::LoopClock& clock_;
  frontend::Replier& replier_;
  upstream::QueryRouter& router_;
  cache::PacketCache* cache_;
  frontend::RateLimiter* rate_limiter_ = nullptr;
  dnstap::Tap* tap_ = nullptr;
  metrics::ShardStats& stats_;
  QueryTable table_;
  bool draining_ = false;
  // Whether the capacity wait queue stands (settings_.queue_wait).
  io::StandingQueue wait_queue_;
};

}  // namespace dotproxy::shard
