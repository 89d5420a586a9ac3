#pragma once
// Per-shard counters, declared once as lists (name, help) that expand to
// plain struct fields here and to the SIGUSR1 report (stats_format.h).
// Written only by the owning shard (relaxed load+store, no read-modify-write
// on the hot path); read by the control thread when it reports. Every
// failure a client or upstream can cause has a counter here. Rooms get the
// struct by reference and bump the fields they own.
//
// The same lists make the Prometheus exposition (prometheus.h): a row whose
// help ends in "(gauge)" is a gauge, every other row a counter (name_total);
// a name ending in _us is exported in seconds.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>

#include "dotproxy/http/doh_counters.h"

namespace dotproxy::metrics {

#define DOTPROXY_SHARD_COUNTERS(X)                                                   \
  X(udp_queries, "UDP datagrams received")                                          \
  X(tcp_queries, "queries received over client TCP connections")                    \
  X(forwarded, "queries sent to an upstream (retries included)")                     \
  X(answered, "upstream answers delivered to clients")                               \
  X(truncated, "UDP answers truncated to the client's size (TC=1)")                  \
  X(retried, "queries retried on another upstream or connection")                    \
  X(queued_for_capacity, "queries that waited for a connection below its in-flight cap") \
  X(shed_waiting, "queries that waited too long for capacity: dropped (UDP) or SERVFAIL (TCP)") \
  X(shed_intake, "UDP queries dropped unread: they waited too long in the socket's receive buffer") \
  X(intake_overload_began, "times UDP intake began to stand (receive buffers cut)") \
  X(intake_overload_ended, "times UDP intake recovered (receive buffers restored)") \
  X(dropped_response_bit, "client packets with QR=1 dropped")                        \
  X(dropped_acl, "UDP queries from sources outside --allow, dropped")                \
  X(tcp_acl_refused, "TCP connections from sources outside --allow, closed")         \
  X(dropped_short, "client packets too short for a header, dropped")                 \
  X(dropped_oversized, "UDP datagrams larger than the receive buffer, dropped")      \
  X(formerr, "malformed queries answered FORMERR")                                   \
  X(notimp, "non-QUERY opcodes answered NOTIMP")                                     \
  X(badvers, "queries with an EDNS version above 0 answered BADVERS (RFC 6891)")      \
  X(refused_oversized, "queries over the size limit answered REFUSED")               \
  X(rate_limit_dropped, "UDP queries over the client's rate limit, dropped")         \
  X(rate_limit_slipped, "UDP queries over the rate limit answered empty with TC=1")  \
  X(rate_limit_refused, "TCP queries over the client's rate limit answered REFUSED") \
  X(rate_limit_evictions, "rate-limiter entries replaced while still limited")       \
  X(minimal_any, "ANY queries over UDP answered with a synthesized HINFO (RFC 8482)") \
  X(local_answers, "queries answered from local data (hosts_file, [[local]])")      \
  X(blocked, "queries answered by a blocklist (per list: blocklist_hits)")          \
  X(allowlist_overrides, "queries a blocklist matched but the allowlist let through") \
  X(notauth_tsig, "TSIG-signed queries answered NOTAUTH/BADKEY (RFC 8945: no keys here)") \
  X(servfail_timeout, "queries that hit their deadline (SERVFAIL)")                  \
  X(servfail_no_upstream, "queries with no usable upstream (SERVFAIL)")              \
  X(servfail_connection_lost, "queries lost with an upstream connection (SERVFAIL)") \
  X(servfail_overload, "queries refused for lack of a free slot (SERVFAIL)")          \
  X(servfail_shutdown, "queries still in flight at shutdown (SERVFAIL)")             \
  X(upstream_unknown_id, "upstream answers with no matching query ID, discarded")    \
  X(upstream_question_mismatch, "upstream answers for another question, discarded") \
  X(upstream_malformed, "malformed upstream answers, discarded")                     \
  X(upstream_connects, "upstream TLS connections established")                       \
  X(upstream_connect_failures, "upstream connect or TLS handshake failures")         \
  X(upstream_verify_failures, "upstream certificates that failed verification")      \
  X(upstream_closed, "upstream connections closed by the peer")                      \
  X(upstream_idle_closed, "idle upstream connections we closed")                     \
  X(tc_fallbacks, "truncated (TC=1) answers from udp:// upstreams retried over TCP") \
  X(probes, "health probes sent to unhealthy upstreams")                             \
  X(udp_send_errors, "UDP replies the kernel refused")                               \
  X(udp_send_no_buffer, "UDP replies dropped: all send buffers busy")                \
  X(tcp_accepted, "client TCP connections accepted")                                 \
  X(tcp_rejected, "client TCP connections refused at the per-shard cap")             \
  X(tcp_idle_evicted, "idle client TCP connections closed near the cap to make room") \
  X(tcp_idle_closed, "client TCP connections closed for idleness")                   \
  X(tcp_bad_frame, "client TCP connections closed for an oversized frame")           \
  X(tcp_slow_closed, "client TCP connections closed for not reading answers")         \
  X(tcp_message_timeout_closed, "client TCP connections closed with a message incomplete past --tcp-message-timeout") \
  X(tls_queries, "queries received over client TLS connections (DoT and DoH)")     \
  X(tls_accepted, "client TLS connections accepted")                                 \
  X(tls_rejected, "client TLS connections refused at the per-shard cap")             \
  X(tls_acl_refused, "TLS connections from sources outside --allow, closed")         \
  X(tls_handshakes, "client TLS handshakes completed")                               \
  X(tls_resumed, "of which resumed a session by ticket")                            \
  X(tls_handshake_failures, "client TLS handshakes failed (protocol, ALPN, timeout, peer gone)") \
  X(tls_client_cert_refused, "client TLS handshakes refused: no or untrusted client certificate (mTLS)") \
  X(tls_handshake_deferred, "client TLS handshake steps deferred to a later loop iteration by the per-shard budget") \
  X(tls_accept_paused, "times accepting TLS connections paused: the per-shard cap on handshakes in progress was reached") \
  X(tls_handshake_evicted, "stalled client TLS handshakes (older than 1 s) closed at the per-shard cap to let a newcomer in") \
  X(tls_idle_closed, "client TLS connections closed for idleness")                   \
  X(tls_idle_evicted, "idle client TLS connections closed near the cap to make room") \
  X(tls_timeout_closed, "client TLS connections closed with a handshake or message incomplete past --tcp-message-timeout") \
  X(tls_slow_closed, "client TLS connections closed for not reading answers")        \
  X(tls_bad_frame, "client TLS connections closed for an oversized frame")           \
  X(tls_clients, "client TLS connections open (gauge)")                              \
  DOTPROXY_DOH_SERVER_COUNTERS(X)                                                     \
  X(cache_hits, "queries answered from the cache")                                   \
  X(cache_misses, "queries the cache could not answer")                              \
  X(cache_stale_answers, "expired answers served because upstreams failed (RFC 8767)") \
  X(cache_prefetches, "background refreshes of entries near expiry")                 \
  X(cache_evictions, "entries evicted to make room (gauge of a running total)")        \
  X(cache_entries, "entries in the cache (gauge)")                                   \
  X(dnstap_written, "dnstap messages written to the output (counted by the dnstap writer thread)") \
  X(dnstap_dropped, "dnstap messages dropped: the shard's ring was full (writer behind, reader gone)") \
  X(dnstap_lost, "dnstap messages lost in a failed write to the output (reader gone)") \
  X(submit_errors, "io_uring submit/wait calls that failed (not timeouts)")          \
  X(loop_iterations, "event loop iterations (one submit+wait each)")                  \
  X(completions, "io_uring completions processed (completions/iterations = batching)") \
  X(heap_allocations, "operator new calls on this shard's thread")                   \
  X(tls_allocations, "wolfSSL malloc/realloc calls on this shard's thread")

// Per upstream, per shard. The last four are gauges.
#define DOTPROXY_UPSTREAM_COUNTERS(X)                                        \
  X(queries, "queries sent (retries and probes included)")                   \
  X(answers, "answers received and matched")                                 \
  X(timeouts, "queries whose attempt on this upstream timed out")            \
  X(connection_opens, "TLS connections established")                         \
  X(resumptions, "of which resumed a TLS session")                           \
  X(connect_failures, "connect or handshake failures")                       \
  X(verify_failures, "certificate, name or pin verification failures")       \
  X(pin_failures, "of which SPKI pin mismatches")                            \
  X(tc_fallbacks, "truncated UDP answers retried over TCP (udp:// only)")   \
  X(http_errors, "DoH queries failed by HTTP status, content type, body or stream reset (https:// only)") \
  X(goaways, "HTTP/2 GOAWAYs received; the connection finishes its streams and closes (https:// only)") \
  X(healthy, "1 when healthy, 0 when unhealthy (gauge)")                     \
  X(latency_us, "latency EWMA in microseconds (gauge)")                      \
  X(in_flight, "queries in flight (gauge)")                                  \
  X(connections, "TLS connections open and ready (gauge)")

// Single-writer increment: no locked instruction on the hot path.
inline void Bump(std::atomic<uint64_t>& counter, uint64_t n = 1) {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}
// Single-writer decrement, for gauges kept as sums of +1/-1.
inline void Drop(std::atomic<uint64_t>& gauge, uint64_t n = 1) {
  gauge.store(gauge.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
}
inline void Set(std::atomic<uint64_t>& gauge, uint64_t value) {
  gauge.store(value, std::memory_order_relaxed);
}

// A latency histogram with fixed buckets: one shard records (relaxed
// load+store, a walk over 15 bounds, no allocation), the control thread sums
// shards at scrape time. Buckets hold per-bucket counts, not cumulative ones.
struct LatencyHistogram {
  // Upper bounds in microseconds (100 µs .. 5 s); the last bucket is +Inf.
  static constexpr uint64_t kBoundsUs[] = {100,    250,    500,     1000,    2500,
                                           5000,   10000,  25000,   50000,   100000,
                                           250000, 500000, 1000000, 2500000, 5000000};
  static constexpr size_t kBuckets = std::size(kBoundsUs) + 1;

  void Record(std::chrono::microseconds elapsed) {
    const uint64_t us = elapsed.count() > 0 ? static_cast<uint64_t>(elapsed.count()) : 0;
    size_t bucket = 0;
    while (bucket < std::size(kBoundsUs) && us > kBoundsUs[bucket]) ++bucket;
    Bump(buckets[bucket]);
    Bump(sum_us, us);
  }

  std::atomic<uint64_t> buckets[kBuckets] = {};
  std::atomic<uint64_t> sum_us{0};
};

// Labels of ShardStats::query_duration. Transport order is
// frontend::Transport's (forwarder.cc checks it).
inline constexpr std::string_view kTransportNames[] = {"udp", "tcp", "tls"};
// Where a client's answer came from.
enum class AnswerSource : uint8_t { kCache, kUpstream, kStale, kLocal };
inline constexpr std::string_view kAnswerSourceNames[] = {"cache", "upstream", "stale", "local"};

// Per-blocklist hit counters a shard holds, indexed by policy::ListSlot.
inline constexpr size_t kMaxBlocklistSlots = 64;

struct ShardStats {
#define DOTPROXY_DECLARE_COUNTER(name, help) std::atomic<uint64_t> name{0};
  DOTPROXY_SHARD_COUNTERS(DOTPROXY_DECLARE_COUNTER)
#undef DOTPROXY_DECLARE_COUNTER
  // Liveness, for /health and /ready: the loop stores its iteration's time
  // (steady clock, ns since its epoch) once per turn; `serving` is set once
  // the shard has bound its sockets.
  std::atomic<int64_t> loop_heartbeat_ns{0};
  std::atomic<bool> serving{false};
  // Client-observed answer time, from the loop iteration that read the
  // query to the one that replied, by transport and AnswerSource.
  LatencyHistogram query_duration[std::size(kTransportNames)][std::size(kAnswerSourceNames)];
  // Queries answered by each blocklist, by its slot (exported as
  // dotproxy_blocklist_hits_total{list="NAME"}).
  std::atomic<uint64_t> blocklist_hits[kMaxBlocklistSlots] = {};
};

// UpstreamStats per shard: one per upstream configured since start (see
// UpstreamSlots), so that reloads never resize what scrapes read.
inline constexpr size_t kMaxUpstreamSlots = 256;

// The control thread's own counters: configuration reloads.
struct ControlStats {
  std::atomic<uint64_t> reloads{0};          // applied
  std::atomic<uint64_t> reload_failures{0};  // refused: the old config stayed
  std::atomic<uint64_t> last_reload_successful{1};
};

struct UpstreamStats {
#define DOTPROXY_DECLARE_COUNTER(name, help) std::atomic<uint64_t> name{0};
  DOTPROXY_UPSTREAM_COUNTERS(DOTPROXY_DECLARE_COUNTER)
#undef DOTPROXY_DECLARE_COUNTER
  // From sending a query to its accepted answer (probes included).
  LatencyHistogram response_time;
  // How many of this shard's pools see the upstream unhealthy: one slot is
  // shared by every pool that has the upstream (forward-zone groups listing
  // the same spec, a generation retiring after a reload), so `healthy` is 1
  // only while none does, and `in_flight` is kept as the sum of the pools'
  // +1/-1. Shard thread only; not exported.
  uint32_t unhealthy_views = 0;
};

}  // namespace dotproxy::metrics
