#include "dotproxy/shard/forwarder.h"

#include <algorithm>
#include <cstring>

namespace dotproxy::shard {

using frontend::ClientRef;
using frontend::Transport;
using metrics::Bump;
using metrics::Set;

namespace {
constexpr size_t kMaxErrorReply = dns::kMaxErrorReplyLength;
// Waiting queries of full groups DispatchWaiting steps over to reach those
// of other upstream groups, and the full groups it keeps track of.
constexpr size_t kWaitingLookahead = 16;
constexpr size_t kMaxBlockedGroups = 4;
// query_duration is indexed by Transport.
static_assert(static_cast<size_t>(Transport::kUdp) == 0 &&
              static_cast<size_t>(Transport::kTcp) == 1 &&
              static_cast<size_t>(Transport::kTls) == 2 &&
              std::size(metrics::kTransportNames) == 3);
static_assert(policy::kMaxListSlots == metrics::kMaxBlocklistSlots);
}  // namespace

Forwarder::Forwarder(const ForwarderSettings& settings, const io::LoopClock& clock,
                     frontend::Replier& replier, upstream::QueryRouter& router,
                     cache::PacketCache* cache, metrics::ShardStats& stats)
    : settings_(settings),
      clock_(clock),
      replier_(replier),
      router_(router),
      cache_(cache),
      stats_(stats),
      table_(settings.max_inflight),
      wait_queue_(settings.queue_wait, clock.now()) {}

void Forwarder::OnQuery(std::span<uint8_t> wire, const ClientRef& client) {
  if (!Accept(wire, client)) replier_.QueryDone(client);
}

bool Forwarder::Accept(std::span<uint8_t> wire, const ClientRef& client) {
  dns::QueryInfo info;
  const dns::QueryParse parsed = dns::ParseQuery(wire, info);
  // Every query answered or forwarded is logged; dropped packets (short,
  // QR=1) are not queries.
  if (tap_ != nullptr && parsed != dns::QueryParse::kDrop) [[unlikely]] {
    TapClient(dnstap::MessageType::kClientQuery, client, wire, {});
  }
  switch (parsed) {
    case dns::QueryParse::kDrop:
      if (wire.size() < dns::kHeaderSize) {
        Bump(stats_.dropped_short);
      } else {
        Bump(stats_.dropped_response_bit);
      }
      return false;
    case dns::QueryParse::kFormErr:
      Bump(stats_.formerr);
      ReplyError(wire, info, dns::Rcode::kFormErr, client, clock_.now());
      return false;
    case dns::QueryParse::kNotImp:
      Bump(stats_.notimp);
      ReplyError(wire, info, dns::Rcode::kNotImp, client, clock_.now());
      return false;
    case dns::QueryParse::kBadVers:
      // RFC 6891 §6.1.3: answered here, never forwarded nor served from a
      // cache filled by version-0 queries.
      Bump(stats_.badvers);
      ReplyError(wire, info, dns::Rcode::kBadVers, client, clock_.now());
      return false;
    case dns::QueryParse::kNotAuth:
      // Signed with a key we cannot hold; what we forward is rewritten (ID,
      // EDNS), so its MAC could not verify upstream anyway.
      Bump(stats_.notauth_tsig);
      ReplyError(wire, info, dns::Rcode::kNotAuth, client, clock_.now());
      return false;
    case dns::QueryParse::kOk:
      break;
  }
  if (wire.size() > frontend::kMaxQuerySize) {
    Bump(stats_.refused_oversized);
    ReplyError(wire, info, dns::Rcode::kRefused, client, clock_.now());
    return false;
  }
  if (rate_limiter_ != nullptr && Limited(wire, info, client)) return false;
  if (settings_.policy != nullptr && AnswerFromPolicy(wire, info, client)) return false;
  if (settings_.minimal_any && info.qtype == dns::kTypeAny && client.transport == Transport::kUdp) {
    // RFC 8482 §4.2: a small answer instead of everything there is (ANY is
    // the classic amplification query); a client that needs it all asks
    // over TCP, where it is forwarded.
    std::span<uint8_t> reply = replier_.BeginReply(client, kMaxErrorReply + dns::kMinimalAnyRrSize);
    if (reply.empty()) return false;
    const size_t length = dns::BuildMinimalAnyReply(wire, info, settings_.edns_udp_size, reply);
    CommitReply(client, reply, length, clock_.now());
    if (length > 0) {
      Bump(stats_.minimal_any);
      ObserveReply(client, metrics::AnswerSource::kLocal, clock_.now());
    }
    return false;
  }
  bool stale_candidate = false;
  if (cache_ != nullptr) {
    cache::CacheKey key;
    cache::MakeKey(wire.data(), info.question_length, info.has_edns, info.dnssec_ok, key);
    const cache::Found found = cache_->Find(key, clock_.seconds());
    if (found.freshness == cache::Freshness::kFresh &&
        ServeFromCache(found.entry, client, info.id, key.question, UdpLimit(info),
                       /*stale=*/false, clock_.now())) {
      Bump(stats_.cache_hits);
      if (found.prefetch_due) {
        cache_->MarkPrefetching(found.entry);
        StartPrefetch(wire, info);
      }
      return false;
    }
    Bump(stats_.cache_misses);
    stale_candidate = found.freshness == cache::Freshness::kStale;
  }
  const uint32_t index =
      table_.Allocate(SlotKind::kClient, clock_.now() + settings_.query_timeout);
  if (index == kNoSlot) {
    Bump(stats_.servfail_overload);
    ReplyError(wire, info, dns::Rcode::kServFail, client, clock_.now());
    return false;
  }
  QuerySlot& slot = table_[index];
  slot.received_at = clock_.now();
  const size_t upstream_length =
      dns::BuildUpstreamQuery(wire, info, settings_.query_options, slot.query);
  if (upstream_length == 0) {  // malformed EDNS options
    table_.Release(index);     // never owned the client: the caller ends it
    Bump(stats_.formerr);
    ReplyError(wire, info, dns::Rcode::kFormErr, client, clock_.now());
    return false;
  }
  slot.client = client;
  slot.stale_candidate = stale_candidate;
  slot.has_edns = info.has_edns;
  slot.dnssec_ok = info.dnssec_ok;
  slot.client_id = info.id;
  slot.question_length = info.question_length;
  slot.query_length = static_cast<uint16_t>(upstream_length);
  slot.udp_limit = UdpLimit(info);
  DispatchOrWait(index, -1, false, stats_.servfail_no_upstream);
  return true;
}

// The client's limit (512 without EDNS, else its advertised size) capped
// by --max-udp-size: larger answers go TC=1 so that the client asks again
// over TCP, and a 40-byte spoofed query never draws a 4 KB answer.
uint16_t Forwarder::UdpLimit(const dns::QueryInfo& info) const {
  const size_t cap = std::min<size_t>(settings_.max_udp_size, frontend::kMaxUdpReply);
  return static_cast<uint16_t>(
      std::min<size_t>(info.udp_response_limit, std::max<size_t>(cap, dns::kClassicUdpLimit)));
}

void Forwarder::CommitReply(const ClientRef& client, std::span<const uint8_t> reply,
                            size_t length, io::Clock::time_point received) {
  if (tap_ != nullptr && length > 0) [[unlikely]] {
    TapClient(dnstap::MessageType::kClientResponse, client, reply.first(length), received);
  }
  replier_.CommitReply(client, length);
}

void Forwarder::ObserveReply(const ClientRef& client, metrics::AnswerSource source,
                             io::Clock::time_point received) {
  stats_.query_duration[static_cast<size_t>(client.transport)][static_cast<size_t>(source)]
      .Record(std::chrono::duration_cast<std::chrono::microseconds>(clock_.now() - received));
}

void Forwarder::ReplyError(std::span<const uint8_t> query, const dns::QueryInfo& info,
                           dns::Rcode rcode, const ClientRef& client,
                           io::Clock::time_point received) {
  std::span<uint8_t> reply = replier_.BeginReply(client, kMaxErrorReply);
  if (reply.empty()) return;
  const size_t length =
      dns::BuildErrorReply(query, info, rcode, settings_.edns_udp_size, reply);
  // The ID is the client's, whatever bytes `query` holds (a slot's query
  // carries the upstream ID).
  if (length > 0) dns::header::SetId(reply.data(), info.id);
  CommitReply(client, reply, length, received);
  if (length > 0) ObserveReply(client, metrics::AnswerSource::kLocal, received);
}

bool Forwarder::Limited(std::span<const uint8_t> query, const dns::QueryInfo& info,
                        const ClientRef& client) {
  const int64_t now_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(clock_.now().time_since_epoch()).count();
  const frontend::RateVerdict verdict = rate_limiter_->Check(client.source(), now_ns);
  if (verdict == frontend::RateVerdict::kAllow) return false;
  if (client.transport != Transport::kUdp) {
    // A TCP (or TLS) source is no spoof (the handshake proved it) and the answer is
    // not amplified: a short REFUSED tells the client to go elsewhere and
    // frees its pipelining slot at once, where slowing the connection would
    // hold its buffers.
    Bump(stats_.rate_limit_refused);
    ReplyError(query, info, dns::Rcode::kRefused, client, clock_.now());
  } else if (verdict == frontend::RateVerdict::kSlip) {
    // An empty TC=1 answer: no larger than the query, and a real client
    // behind a spoofed source retries over TCP, which is not limited by
    // spoofed traffic.
    Bump(stats_.rate_limit_slipped);
    std::span<uint8_t> reply = replier_.BeginReply(client, kMaxErrorReply);
    if (reply.empty()) return true;
    const size_t length =
        dns::BuildErrorReply(query, info, dns::Rcode::kNoError, settings_.edns_udp_size, reply);
    if (length > 0) dns::header::SetTruncated(reply.data());
    CommitReply(client, reply, length, clock_.now());
  } else {
    Bump(stats_.rate_limit_dropped);
  }
  return true;
}

bool Forwarder::AnswerFromPolicy(std::span<const uint8_t> query, const dns::QueryInfo& info,
                                 const ClientRef& client) {
  constexpr uint16_t kClassIn = 1;
  if (info.qclass != kClassIn) return false;  // CHAOS and friends are not ours
  const policy::Tables& tables = *settings_.policy;
  const policy::Decision decision =
      tables.Lookup(query.subspan(dns::kHeaderSize, info.qname_length));
  if (decision.action == policy::Action::kNone) {
    if (decision.allowlisted) Bump(stats_.allowlist_overrides);
    return false;
  }
  const size_t limit = client.transport == Transport::kUdp
                           ? std::min<size_t>(UdpLimit(info), frontend::kMaxUdpReply)
                           : policy::kMaxPolicyReply;
  std::span<uint8_t> reply = replier_.BeginReply(client, limit);
  if (reply.empty()) return true;  // dropped, and counted, by the front end
  const size_t length =
      tables.WriteReply(decision, query, info, settings_.edns_udp_size, limit, reply);
  CommitReply(client, reply, length, clock_.now());  // through dnstap too
  if (length == 0) return true;
  if (decision.action == policy::Action::kLocal) {
    Bump(stats_.local_answers);
  } else {
    Bump(stats_.blocked);
    Bump(stats_.blocklist_hits[tables.blocklist_slot(decision.list)]);
  }
  if (dns::header::IsTruncated(reply.data())) Bump(stats_.truncated);
  ObserveReply(client, metrics::AnswerSource::kLocal, clock_.now());
  return true;
}

bool Forwarder::ServeFromCache(uint32_t entry, const ClientRef& client, uint16_t id,
                               std::span<const uint8_t> question, size_t udp_limit, bool stale,
                               io::Clock::time_point received) {
  const size_t limit = client.transport == Transport::kUdp
                           ? std::min(udp_limit, frontend::kMaxUdpReply)
                           : cache::kMaxCachedAnswer;
  // Straight into the reply buffer: one copy from cache to socket. The
  // buffer holds the whole entry, which Serve truncates to `limit` (an
  // entry larger than a client's limit is still a hit: TC=1).
  std::span<uint8_t> reply =
      replier_.BeginReply(client, std::max(limit, cache::kMaxCachedAnswer));
  if (reply.empty()) return true;  // dropped, and counted, by the front end
  const size_t length =
      cache_->Serve(entry, reply, id, question, limit, clock_.seconds(), stale);
  CommitReply(client, reply, length, received);
  if (length > 0) {
    ObserveReply(client, stale ? metrics::AnswerSource::kStale : metrics::AnswerSource::kCache,
                 received);
  }
  return length > 0;
}

// Refreshes a cache entry in its last tenth of TTL without a client waiting.
void Forwarder::StartPrefetch(std::span<const uint8_t> query, const dns::QueryInfo& info) {
  const uint32_t index =
      table_.Allocate(SlotKind::kPrefetch, clock_.now() + settings_.query_timeout);
  if (index == kNoSlot) return;
  QuerySlot& slot = table_[index];
  slot.received_at = clock_.now();
  const size_t length = dns::BuildUpstreamQuery(query, info, settings_.query_options, slot.query);
  slot.has_edns = info.has_edns;
  slot.dnssec_ok = info.dnssec_ok;
  slot.question_length = info.question_length;
  slot.query_length = static_cast<uint16_t>(length);
  Bump(stats_.cache_prefetches);
  if (length == 0 || !Dispatch(index, -1, false)) Fail(index, stats_.cache_prefetches);
}

void Forwarder::MakeSlotKey(const QuerySlot& slot, cache::CacheKey& key) const {
  cache::MakeKey(slot.query, slot.question_length, slot.has_edns, slot.dnssec_ok, key);
}

// RFC 8767: when upstreams fail, an expired answer beats SERVFAIL.
bool Forwarder::TryServeStale(QuerySlot& slot) {
  if (cache_ == nullptr || !slot.stale_candidate || slot.kind != SlotKind::kClient) return false;
  cache::CacheKey key;
  MakeSlotKey(slot, key);
  const cache::Found found = cache_->Find(key, clock_.seconds());
  if (found.freshness == cache::Freshness::kMiss) return false;
  const bool stale = found.freshness == cache::Freshness::kStale;
  if (!ServeFromCache(found.entry, slot.client, slot.client_id, key.question, slot.udp_limit,
                      stale, ReceivedAt(slot))) {
    return false;
  }
  // Refreshed meanwhile (by another query): a plain hit, not a stale answer.
  Bump(stale ? stats_.cache_stale_answers : stats_.cache_hits);
  return true;
}

bool Forwarder::Dispatch(uint32_t index, int exclude, bool allow_excluded) {
  QuerySlot& slot = table_[index];
  upstream::Binding binding;
  if (!router_.Send(index, {slot.query, slot.query_length}, exclude, allow_excluded, binding)) {
    return false;
  }
  slot.binding = binding;
  slot.sent_at = clock_.now();
  if (tap_ != nullptr) [[unlikely]] {
    TapUpstream(dnstap::MessageType::kForwarderQuery, binding, {slot.query, slot.query_length}, {});
  }
  table_.attempts().Remove(index);
  if (settings_.retry_on_timeout && slot.attempt == 1 && slot.kind == SlotKind::kClient) {
    // The first attempt gets half the budget so a retry elsewhere still fits.
    slot.attempt_deadline = clock_.now() + settings_.query_timeout / 2;
    table_.attempts().PushBack(index);
  }
  Bump(stats_.forwarded);
  return true;
}

void Forwarder::DispatchOrWait(uint32_t index, int exclude, bool allow_excluded,
                               std::atomic<uint64_t>& fail_counter) {
  if (Dispatch(index, exclude, allow_excluded)) return;
  if (router_.AnyAlive(SlotQuery(index))) {
    // Upstreams are up but every connection is at its cap: queue rather
    // than fail; answers free capacity, and the deadline still applies.
    table_.waiting().PushBack(index);
    Bump(stats_.queued_for_capacity);
  } else {
    Fail(index, fail_counter);
  }
}

// Oldest first (newest first while the queue stands). A group whose
// connections are all at their cap keeps its queries waiting in order, but
// with forward zones the queries of other groups behind them still go. Each group gets at most one failed Send per
// iteration (a failed Send may start a connection: more would open
// siblings and pile up connect failures during an outage), and the scan
// stops after kWaitingLookahead queries of blocked groups, so a saturated
// group costs a few lookups per iteration, not one per waiting query.
void Forwarder::DispatchWaiting() {
  // Overload (the queue stands): newest first, so what is answered is
  // answered fresh; the oldest are shed from the head (ShedWaiting).
  const bool newest_first = !table_.waiting().empty() && wait_queue_.standing();
  uint32_t blocked_groups[kMaxBlockedGroups];
  size_t blocked = 0;
  size_t stepped_over = 0;
  for (uint32_t index = newest_first ? table_.waiting().tail() : table_.waiting().head();
       index != kNoSlot && stepped_over < kWaitingLookahead && blocked < kMaxBlockedGroups;) {
    const uint32_t next =
        newest_first ? table_.waiting().Prev(index) : table_.waiting().Next(index);
    const std::span<const uint8_t> query = SlotQuery(index);
    const auto full = [&](uint32_t group) {
      return std::find(blocked_groups, blocked_groups + blocked, group) != blocked_groups + blocked;
    };
    if (blocked > 0 && full(router_.GroupOf(query))) {
      ++stepped_over;  // keeps its place among its group's queries
    } else if (Dispatch(index, -1, false)) {
      table_.waiting().Remove(index);
    } else if (router_.AnyAlive(query)) {
      blocked_groups[blocked++] = router_.GroupOf(query);
      ++stepped_over;
    } else {
      table_.waiting().Remove(index);
      Fail(index, stats_.servfail_no_upstream);
    }
    index = next;
  }
  if (table_.waiting().empty()) wait_queue_.Observe(clock_.now(), std::chrono::nanoseconds(0));
}

void Forwarder::Unbind(uint32_t index) {
  QuerySlot& slot = table_[index];
  if (!slot.binding.bound()) return;
  router_.Release(index, slot.binding);
  slot.binding = {};
}

void Forwarder::Release(uint32_t index) {
  QuerySlot& slot = table_[index];
  if (!slot.in_use) return;
  Unbind(index);
  const bool had_client = slot.kind == SlotKind::kClient;
  const ClientRef client = slot.client;
  table_.Release(index);
  if (had_client) replier_.QueryDone(client);
}

void Forwarder::Fail(uint32_t index, std::atomic<uint64_t>& counter) {
  QuerySlot& slot = table_[index];
  if (slot.kind == SlotKind::kPrefetch) {
    if (cache_ != nullptr) {
      cache::CacheKey key;
      MakeSlotKey(slot, key);
      cache_->PrefetchDone(key);
    }
    Release(index);
    return;
  }
  if (!TryServeStale(slot)) {
    Bump(counter);
    dns::QueryInfo info;
    info.id = slot.client_id;
    info.question_length = slot.question_length;
    info.has_edns = slot.has_edns;
    info.dnssec_ok = slot.dnssec_ok;
    ReplyError({slot.query, slot.query_length}, info, dns::Rcode::kServFail, slot.client,
               ReceivedAt(slot));
  }
  Release(index);
}

upstream::AnswerSink::Outcome Forwarder::OnAnswer(uint32_t token, std::span<uint8_t> answer,
                                                  const dns::ResponseInfo& info, int* keepalive) {
  QuerySlot& slot = table_[token];
  const std::span<const uint8_t> asked(slot.query + dns::kHeaderSize, slot.question_length);
  const std::span<const uint8_t> answered(answer.data() + dns::kHeaderSize, info.question_length);
  if (!slot.in_use || !dns::QuestionsMatch(asked, answered)) {
    // Keep waiting: the right answer may still come, or the deadline fails it.
    Bump(stats_.upstream_question_mismatch);
    return {};
  }
  const Outcome outcome{Verdict::kAccepted, slot.sent_at};
  if (tap_ != nullptr) [[unlikely]] {  // as the upstream sent it
    TapUpstream(dnstap::MessageType::kForwarderResponse, slot.binding, answer, slot.sent_at);
  }
  // A forward zone with `cache = false`: never stored, so never served
  // from the cache (nor stale, nor prefetched) either.
  const bool cacheable = slot.binding.cache_answers;
  slot.binding = {};  // the pool frees it on kAccepted

  // Transport options (keepalive, padding) are for this hop only.
  size_t length = dns::RewriteAnswerOpt(answer, answer.size(), slot.has_edns, keepalive);
  if (cache_ != nullptr && cacheable) {
    cache::CacheKey key;
    MakeSlotKey(slot, key);
    const bool upstream_failed = dns::header::GetRcode(answer.data()) == dns::Rcode::kServFail;
    if (upstream_failed && TryServeStale(slot)) {
      Release(token);
      return outcome;
    }
    if (!cache_->Insert(key, {answer.data(), length}, clock_.seconds()) &&
        slot.kind == SlotKind::kPrefetch) {
      cache_->PrefetchDone(key);
    }
    Set(stats_.cache_evictions, cache_->counters().evictions);
    Set(stats_.cache_entries, cache_->counters().entries);
  }
  if (slot.kind == SlotKind::kPrefetch) {
    // A zone that stopped caching on reload: the entry that asked for this
    // refresh must not stay marked as being refreshed.
    if (cache_ != nullptr && !cacheable) {
      cache::CacheKey key;
      MakeSlotKey(slot, key);
      cache_->PrefetchDone(key);
    }
    Release(token);
    return outcome;
  }
  // Give the answer back its client: client ID, client's question bytes
  // (0x20 letter case) and, for UDP, the client's size limit.
  dns::header::SetId(answer.data(), slot.client_id);
  std::memcpy(answer.data() + dns::kHeaderSize, asked.data(), asked.size());
  if (slot.client.transport == Transport::kUdp && length > slot.udp_limit) {
    length = dns::TruncateResponse(answer, length, slot.udp_limit);
    Bump(stats_.truncated);
  }
  if (tap_ != nullptr) [[unlikely]] {
    TapClient(dnstap::MessageType::kClientResponse, slot.client, {answer.data(), length},
              ReceivedAt(slot));
  }
  replier_.Reply(slot.client, {answer.data(), length});
  ObserveReply(slot.client, metrics::AnswerSource::kUpstream, ReceivedAt(slot));
  Bump(stats_.answered);
  Release(token);
  return outcome;
}

void Forwarder::OnQueryLost(uint32_t token, int upstream, bool upstream_failed) {
  QuerySlot& slot = table_[token];
  if (!slot.in_use) return;
  slot.binding = {};  // released by the pool
  std::atomic<uint64_t>& counter =
      upstream_failed ? stats_.servfail_no_upstream : stats_.servfail_connection_lost;
  if (slot.kind == SlotKind::kClient && slot.attempt == 1 && !draining_) {
    slot.attempt = 2;
    Bump(stats_.retried);
    DispatchOrWait(token, upstream, /*allow_excluded=*/true, counter);
  } else {
    Fail(token, slot.kind == SlotKind::kClient ? counter : stats_.servfail_connection_lost);
  }
}

// Overload: the wait list is in arrival order (a retried query re-enters
// at the back, older than its neighbours only by its first attempt), so
// shedding from the front until a young enough query keeps the time any
// query waits for capacity bounded.
void Forwarder::ShedWaiting() {
  const auto now = clock_.now();
  wait_queue_.Observe(now, table_.waiting().empty()
                               ? std::chrono::nanoseconds(0)
                               : now - ReceivedAt(table_[table_.waiting().head()]));
  const auto bound = wait_queue_.ShedAfter();
  while (!table_.waiting().empty()) {
    const uint32_t index = table_.waiting().head();
    QuerySlot& slot = table_[index];
    if (now - ReceivedAt(slot) < bound) return;
    table_.waiting().PopFront();
    Bump(stats_.shed_waiting);
    if (slot.kind == SlotKind::kClient && slot.client.transport != Transport::kUdp) {
      Fail(index, stats_.servfail_overload);
    } else if (slot.kind == SlotKind::kPrefetch) {
      Fail(index, stats_.cache_prefetches);
    } else {
      Release(index);  // UDP: no reply; the client's retry finds a shorter queue
    }
  }
}

void Forwarder::RunTimers(bool draining) {
  if (!draining) ShedWaiting();
  const auto now = clock_.now();
  // First attempts past half the budget: count a timeout against their
  // upstream and retry once elsewhere if anything else is usable.
  while (!table_.attempts().empty() && table_[table_.attempts().head()].attempt_deadline <= now) {
    const uint32_t index = table_.attempts().PopFront();
    QuerySlot& slot = table_[index];
    const upstream::Binding timed_out = slot.binding;
    if (!timed_out.bound()) continue;  // lost meanwhile and waiting for capacity
    if (!draining && router_.CanSendElsewhere(SlotQuery(index), timed_out.upstream)) {
      Unbind(index);
      slot.attempt = 2;
      Bump(stats_.retried);
      if (!Dispatch(index, timed_out.upstream, /*allow_excluded=*/false)) {
        Fail(index, stats_.servfail_no_upstream);
      }
      router_.NoteTimeout(timed_out, /*counts_against_upstream=*/true);
    } else {
      // Nowhere else to go (one upstream in its group, or the others
      // down): keep waiting here with the whole budget, and count the
      // timeout only if the final deadline passes too (counting now could
      // close a connection whose other queries are still on time).
      slot.attempt_timeout_pending = true;
    }
  }
  // Final deadlines: the list is in deadline order, so stop at the first
  // live one. New queries never extend an old query's deadline.
  while (!table_.deadlines().empty() && table_[table_.deadlines().head()].deadline <= now) {
    const uint32_t index = table_.deadlines().head();
    const QuerySlot& slot = table_[index];
    const upstream::Binding timed_out = slot.binding;
    // A first attempt that was retried was counted at its attempt deadline
    // already; one that had nowhere to go is counted now.
    const bool counts = slot.kind == SlotKind::kClient &&
                        (slot.attempt == 2 || !settings_.retry_on_timeout ||
                         slot.attempt_timeout_pending);
    Fail(index, stats_.servfail_timeout);
    if (timed_out.bound()) router_.NoteTimeout(timed_out, counts);
  }
}

void Forwarder::BeginDrain() {
  draining_ = true;
  for (uint32_t index = table_.deadlines().head(); index != kNoSlot;) {
    const uint32_t next = table_.deadlines().Next(index);
    if (table_[index].kind != SlotKind::kClient) Fail(index, stats_.servfail_shutdown);
    index = next;
  }
}

void Forwarder::FailAll() {
  while (!table_.deadlines().empty()) Fail(table_.deadlines().head(), stats_.servfail_shutdown);
}

io::Clock::time_point Forwarder::NextDeadline() const {
  auto next = io::Clock::time_point::max();
  if (!table_.deadlines().empty()) next = table_[table_.deadlines().head()].deadline;
  if (!table_.attempts().empty()) {
    next = std::min(next, table_[table_.attempts().head()].attempt_deadline);
  }
  return next;
}

}  // namespace dotproxy::shard
