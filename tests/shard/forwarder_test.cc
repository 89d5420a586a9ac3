// The forwarder against fakes of its neighbours: a Replier that records what
// reaches clients, a QueryRouter that records what goes upstream, and a
// hand-driven LoopClock. The real PacketCache where caching matters.

#include "dotproxy/shard/forwarder.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bench/common/wire.h"
#include "dotproxy/cache/packet_cache.h"
#include "dotproxy/dns/message.h"

namespace dotproxy::shard {
namespace {

using bench::MakeAnswer;
using bench::MakeQuery;
using frontend::ClientRef;
using std::chrono::milliseconds;
using upstream::AnswerSink;
using upstream::Binding;
using Bytes = std::vector<uint8_t>;

class FakeReplier final : public frontend::Replier {
 public:
  struct Reply {
    ClientRef client;
    Bytes wire;
  };
  std::span<uint8_t> BeginReply(const ClientRef&, size_t max_length) override {
    EXPECT_FALSE(open_) << "two replies open at once";
    open_ = true;
    return {buffer_, std::min(max_length, sizeof(buffer_))};
  }
  void CommitReply(const ClientRef& client, size_t length) override {
    open_ = false;
    if (length > 0) replies.push_back({client, Bytes(buffer_, buffer_ + length)});
  }
  void QueryDone(const ClientRef& client) override { done.push_back(client); }

  std::vector<Reply> replies;
  std::vector<ClientRef> done;

 private:
  bool open_ = false;
  uint8_t buffer_[65536];
};

class FakeRouter final : public upstream::QueryRouter {
 public:
  struct Sent {
    uint32_t token;
    Bytes wire;
    int exclude;
    bool allow_excluded;
    Binding binding;
  };
  bool Send(uint32_t token, std::span<uint8_t> query, int exclude, bool allow_excluded,
            Binding& binding) override {
    if (!accept || capacity == 0) return false;
    if (!full_group.empty() &&
        std::string(query.begin(), query.end()).find(full_group) != std::string::npos) {
      return false;
    }
    if (capacity > 0) --capacity;
    binding = {exclude == 0 ? 1 : 0, 0, next_id++, cache_answers};
    dns::header::SetId(query.data(), binding.id);
    sent.push_back({token, Bytes(query.begin(), query.end()), exclude, allow_excluded, binding});
    return true;
  }
  void Release(uint32_t token, const Binding& binding) override {
    released.emplace_back(token, binding);
  }
  void NoteTimeout(const Binding& binding, bool counts) override {
    timeouts.emplace_back(binding, counts);
  }
  bool CanSendElsewhere(std::span<const uint8_t> query, int) override {
    asked.emplace_back(query.begin(), query.end());
    return elsewhere;
  }
  bool AnyAlive(std::span<const uint8_t> query) const override {
    asked.emplace_back(query.begin(), query.end());
    return alive;
  }

  bool accept = true;
  bool alive = true;
  bool elsewhere = true;
  int capacity = -1;  // queries Send takes while accept; -1: no limit
  bool cache_answers = true;  // the group's policy, as a pool would report it
  // Queries whose wire holds this text find their group at its cap.
  std::string full_group;
  uint16_t next_id = 100;
  uint32_t GroupOf(std::span<const uint8_t> query) const override {
    return !full_group.empty() &&
           std::string(query.begin(), query.end()).find(full_group) != std::string::npos;
  }
  // The queries CanSendElsewhere and AnyAlive were asked about (they pick
  // the group by its name).
  mutable std::vector<Bytes> asked;
  std::vector<Sent> sent;
  std::vector<std::pair<uint32_t, Binding>> released;
  std::vector<std::pair<Binding, bool>> timeouts;
};

class ForwarderTest : public ::testing::Test {
 protected:
  void Make(bool retry_on_timeout = false, size_t cache_entries = 0) {
    settings_.query_timeout = milliseconds(2000);
    settings_.retry_on_timeout = retry_on_timeout;
    settings_.max_inflight = 64;
    if (cache_entries > 0) {
      cache::CacheConfig config;
      config.entries = cache_entries;
      auto made = cache::PacketCache::Create(config);
      ASSERT_TRUE(made.ok()) << made.status();
      cache_ = *std::move(made);
    }
    clock_.Set(start_);
    forwarder_ = std::make_unique<Forwarder>(settings_, clock_, replier_, router_, cache_.get(),
                                             stats_);
  }
  void Query(Bytes wire, const ClientRef& client) { forwarder_->OnQuery(wire, client); }
  // The upstream answers the `n`th query sent, for `name`.
  AnswerSink::Outcome Answer(size_t n, const std::string& name, Bytes answer = {}) {
    const FakeRouter::Sent& sent = router_.sent.at(n);
    if (answer.empty()) answer = MakeAnswer(name, sent.binding.id, true);
    dns::ResponseInfo info;
    EXPECT_TRUE(dns::ParseResponse(answer, info));
    int keepalive = -1;
    return forwarder_->OnAnswer(sent.token, answer, info, &keepalive);
  }
  void Advance(milliseconds by) {
    now_ += by;
    clock_.Set(start_ + now_);
  }
  static uint8_t Rcode(const Bytes& wire) { return wire[3] & 0x0f; }
  static uint16_t Id(const Bytes& wire) { return dns::ReadU16(wire.data()); }
  static uint16_t ArCount(const Bytes& wire) { return dns::ReadU16(wire.data() + 10); }

  const io::Clock::time_point start_ = io::Clock::time_point() + std::chrono::hours(1000);
  milliseconds now_{0};
  ForwarderSettings settings_;
  io::LoopClock clock_;
  FakeReplier replier_;
  FakeRouter router_;
  metrics::ShardStats stats_;
  std::unique_ptr<cache::PacketCache> cache_;
  std::unique_ptr<Forwarder> forwarder_;
  const ClientRef udp_client_ = [] {
    sockaddr_in6 source{};
    source.sin6_family = AF_INET6;
    source.sin6_port = htons(5300);
    return ClientRef::Udp(0, reinterpret_cast<const sockaddr*>(&source), sizeof(source));
  }();
  const ClientRef tcp_client_ = ClientRef::Tcp(3, 11);
};

TEST_F(ForwarderTest, ForwardsAndDeliversTheAnswerWithTheClientsIdOnce) {
  Make();
  Query(MakeQuery("a.example", 0x1234, true), udp_client_);
  ASSERT_EQ(router_.sent.size(), 1u);
  EXPECT_EQ(Id(router_.sent[0].wire), router_.sent[0].binding.id);  // upstream ID on the wire
  EXPECT_TRUE(replier_.done.empty());
  EXPECT_EQ(Answer(0, "a.example").verdict, AnswerSink::Verdict::kAccepted);
  ASSERT_EQ(replier_.replies.size(), 1u);
  EXPECT_EQ(Id(replier_.replies[0].wire), 0x1234);
  EXPECT_EQ(Rcode(replier_.replies[0].wire), 0);
  EXPECT_EQ(replier_.done.size(), 1u);
  EXPECT_EQ(forwarder_->in_flight(), 0u);
  EXPECT_TRUE(router_.released.empty());  // the pool frees an accepted binding itself
}

// `a.example A` whose OPT option claims 8 bytes inside a 4-byte RDLENGTH.
Bytes BadOptionQuery(uint16_t id) {
  Bytes q = MakeQuery("a.example", id, false);
  q[11] = 1;  // ARCOUNT
  q.insert(q.end(), {0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 4, 0, 10, 0, 8});
  return q;
}

TEST_F(ForwarderTest, MalformedOptionIsFormErrWithOptAndTheClientGoesOn) {
  Make();
  // On one TCP connection: a valid query, the malformed one, a valid one.
  Query(MakeQuery("a.example", 1, true), tcp_client_);
  Query(BadOptionQuery(2), tcp_client_);
  ASSERT_EQ(replier_.replies.size(), 1u);
  EXPECT_EQ(Rcode(replier_.replies[0].wire), 1);  // FORMERR
  EXPECT_EQ(ArCount(replier_.replies[0].wire), 1);  // with an OPT (RFC 6891 §7)
  EXPECT_EQ(replier_.done.size(), 1u);            // the malformed one ended, once
  Query(MakeQuery("b.example", 3, true), tcp_client_);
  ASSERT_EQ(router_.sent.size(), 2u);
  Answer(0, "a.example");
  Answer(1, "b.example");
  // Every query the front end handed over ended exactly once, so its
  // in-flight count cannot wrap and the connection keeps being read.
  EXPECT_EQ(replier_.done.size(), 3u);
  for (const ClientRef& done : replier_.done) {
    EXPECT_EQ(done.transport, frontend::Transport::kTcp);
    EXPECT_EQ(done.tcp_client, 3u);
    EXPECT_EQ(done.tcp_generation, 11u);
  }
  EXPECT_EQ(forwarder_->in_flight(), 0u);
  EXPECT_EQ(stats_.formerr.load(), 1u);
}

Bytes WithEdnsVersion(Bytes query, uint8_t version) {
  // The OPT is the last 11 bytes: owner, type, class, TTL (ext-rcode, version, flags), rdlen.
  query[query.size() - 11 + 6] = version;
  return query;
}

TEST_F(ForwarderTest, EdnsVersionAboveZeroIsBadVersEvenOnceCached) {
  Make(false, 16);
  Query(WithEdnsVersion(MakeQuery("v.example", 7, true), 1), udp_client_);
  Query(MakeQuery("v.example", 8, true), udp_client_);
  ASSERT_EQ(router_.sent.size(), 1u);  // only the version-0 query went upstream
  Answer(0, "v.example");
  Query(WithEdnsVersion(MakeQuery("v.example", 9, true), 1), udp_client_);
  EXPECT_EQ(router_.sent.size(), 1u);
  ASSERT_EQ(replier_.replies.size(), 3u);
  for (size_t i : {0u, 2u}) {
    const Bytes& reply = replier_.replies[i].wire;
    EXPECT_EQ(Rcode(reply), 0) << i;  // BADVERS is 16: header bits 0...
    ASSERT_EQ(ArCount(reply), 1) << i;
    EXPECT_EQ(reply[reply.size() - 11 + 5], 1) << i;  // ...extended RCODE 1 in the OPT
  }
  EXPECT_EQ(stats_.badvers.load(), 2u);
  EXPECT_EQ(replier_.done.size(), 3u);
}

TEST_F(ForwarderTest, CacheHitAnswersWithoutTheUpstreamKeepingTheClientsCase) {
  Make(false, 16);
  Query(MakeQuery("c.example", 1, true), udp_client_);
  Answer(0, "c.example");
  Query(MakeQuery("C.ExAmple", 2, true), udp_client_);
  EXPECT_EQ(router_.sent.size(), 1u);
  ASSERT_EQ(replier_.replies.size(), 2u);
  const Bytes& hit = replier_.replies[1].wire;
  EXPECT_EQ(Id(hit), 2);
  EXPECT_EQ(std::memcmp(hit.data() + 13, "C", 1), 0);
  EXPECT_EQ(std::memcmp(hit.data() + 15, "ExAmple", 7), 0);
  EXPECT_EQ(stats_.cache_hits.load(), 1u);
  EXPECT_EQ(replier_.done.size(), 2u);
}

// A forward zone with `cache = false` (the pool's Binding says so): its
// answers are delivered but never stored, so the next query goes upstream.
TEST_F(ForwarderTest, AnswersOfAnUncachedZoneAreNotCached) {
  Make(false, 16);
  router_.cache_answers = false;
  Query(MakeQuery("n.corp.example", 1, true), udp_client_);
  Answer(0, "n.corp.example");
  Query(MakeQuery("n.corp.example", 2, true), udp_client_);
  EXPECT_EQ(router_.sent.size(), 2u);
  EXPECT_EQ(stats_.cache_hits.load(), 0u);
  ASSERT_EQ(replier_.replies.size(), 1u);  // the first; the second waits upstream
  Answer(1, "n.corp.example");
  // After a reload routes it to a cached group, it is cached again.
  router_.cache_answers = true;
  Query(MakeQuery("n.corp.example", 3, true), udp_client_);
  Answer(2, "n.corp.example");
  Query(MakeQuery("n.corp.example", 4, true), udp_client_);
  EXPECT_EQ(router_.sent.size(), 3u);
  EXPECT_EQ(stats_.cache_hits.load(), 1u);
}

// The router picks the upstream group by the query's name: whether to wait
// for capacity or to retry elsewhere is asked about that query.
TEST_F(ForwarderTest, TheRouterIsAskedAboutTheQueryItsGroupServes) {
  Make(/*retry_on_timeout=*/true);
  router_.accept = false;
  router_.alive = false;
  const Bytes query = MakeQuery("db.corp.example", 7, true);
  Query(query, udp_client_);
  ASSERT_EQ(router_.asked.size(), 1u);
  const size_t question = 17 + 4;  // 2db4corp7example0 + type and class
  ASSERT_GE(router_.asked[0].size(), dns::kHeaderSize + question);
  EXPECT_TRUE(std::equal(query.begin() + dns::kHeaderSize,
                         query.begin() + dns::kHeaderSize + question,
                         router_.asked[0].begin() + dns::kHeaderSize));
  // A timed-out first attempt asks about the same query before retrying.
  router_.accept = true;
  router_.alive = true;
  router_.asked.clear();
  Query(MakeQuery("x.cluster.local", 8, true), udp_client_);
  Advance(milliseconds(1001));
  forwarder_->RunTimers(false);
  ASSERT_EQ(router_.asked.size(), 1u);
  EXPECT_EQ(router_.asked[0][dns::kHeaderSize + 1], 'x');
  EXPECT_EQ(router_.sent.size(), 2u);  // retried
}

// A group at its cap keeps its waiting queries in order; another group's
// queries behind them still go.
TEST_F(ForwarderTest, WaitingQueriesOfAFullGroupDoNotHoldBackOtherGroups) {
  Make();
  router_.accept = false;
  Query(MakeQuery("a.corp.example", 1, true), udp_client_);
  Query(MakeQuery("b.corp.example", 2, true), udp_client_);
  Query(MakeQuery("www.example", 3, true), udp_client_);
  ASSERT_TRUE(router_.sent.empty());
  router_.accept = true;
  router_.full_group = "corp";
  router_.asked.clear();
  forwarder_->DispatchWaiting();
  ASSERT_EQ(router_.sent.size(), 1u);
  // One failed attempt for the full group: b.corp.example is not tried.
  EXPECT_EQ(router_.asked.size(), 1u);
  EXPECT_EQ(dns::ReadU16(router_.sent[0].wire.data() + 0), router_.sent[0].binding.id);
  EXPECT_EQ(router_.sent[0].wire[dns::kHeaderSize + 1], 'w');
  router_.full_group.clear();
  forwarder_->DispatchWaiting();
  ASSERT_EQ(router_.sent.size(), 3u);
  EXPECT_EQ(router_.sent[1].wire[dns::kHeaderSize + 1], 'a');  // in order
  EXPECT_EQ(router_.sent[2].wire[dns::kHeaderSize + 1], 'b');
}

TEST_F(ForwarderTest, NoUpstreamAliveIsAnImmediateServfail) {
  Make();
  router_.accept = false;
  router_.alive = false;
  Query(MakeQuery("d.example", 5, true), udp_client_);
  ASSERT_EQ(replier_.replies.size(), 1u);
  EXPECT_EQ(Rcode(replier_.replies[0].wire), 2);
  EXPECT_EQ(Id(replier_.replies[0].wire), 5);
  EXPECT_EQ(ArCount(replier_.replies[0].wire), 1);
  EXPECT_EQ(stats_.servfail_no_upstream.load(), 1u);
  EXPECT_EQ(replier_.done.size(), 1u);
  EXPECT_EQ(forwarder_->in_flight(), 0u);
}

TEST_F(ForwarderTest, WaitsForCapacityThenDispatchesInOrder) {
  Make();
  router_.accept = false;  // every connection at its cap, upstreams alive
  Query(MakeQuery("e1.example", 1, true), udp_client_);
  Query(MakeQuery("e2.example", 2, true), udp_client_);
  EXPECT_TRUE(replier_.replies.empty());
  EXPECT_EQ(forwarder_->in_flight(), 2u);
  EXPECT_EQ(stats_.queued_for_capacity.load(), 2u);
  forwarder_->DispatchWaiting();
  EXPECT_TRUE(router_.sent.empty());
  router_.accept = true;
  forwarder_->DispatchWaiting();
  ASSERT_EQ(router_.sent.size(), 2u);
  Answer(1, "e2.example");
  Answer(0, "e1.example");
  ASSERT_EQ(replier_.replies.size(), 2u);
  EXPECT_EQ(Id(replier_.replies[0].wire), 2);  // out of order is fine
  EXPECT_EQ(Id(replier_.replies[1].wire), 1);
}

TEST_F(ForwarderTest, DeadlineGivesServfailAndCountsTheTimeout) {
  Make(/*retry_on_timeout=*/false);
  Query(MakeQuery("f.example", 9, true), tcp_client_);
  const Binding binding = router_.sent.at(0).binding;
  Advance(milliseconds(1999));
  forwarder_->RunTimers(false);
  EXPECT_TRUE(replier_.replies.empty());
  Advance(milliseconds(1));
  forwarder_->RunTimers(false);
  ASSERT_EQ(replier_.replies.size(), 1u);
  EXPECT_EQ(Rcode(replier_.replies[0].wire), 2);
  EXPECT_EQ(Id(replier_.replies[0].wire), 9);  // not the upstream ID the slot held
  ASSERT_EQ(router_.released.size(), 1u);
  EXPECT_EQ(router_.released[0].second.id, binding.id);
  ASSERT_EQ(router_.timeouts.size(), 1u);
  EXPECT_TRUE(router_.timeouts[0].second);  // a single upstream: counted at the deadline
  EXPECT_EQ(stats_.servfail_timeout.load(), 1u);
  EXPECT_EQ(replier_.done.size(), 1u);
}

TEST_F(ForwarderTest, RetriesOnceElsewhereAtHalfTheBudget) {
  Make(/*retry_on_timeout=*/true);
  Query(MakeQuery("g.example", 4, true), udp_client_);
  const Binding first = router_.sent.at(0).binding;
  Advance(milliseconds(1000));
  forwarder_->RunTimers(false);
  ASSERT_EQ(router_.sent.size(), 2u);
  EXPECT_EQ(router_.sent[1].exclude, first.upstream);
  EXPECT_FALSE(router_.sent[1].allow_excluded);
  ASSERT_EQ(router_.timeouts.size(), 1u);
  EXPECT_EQ(router_.timeouts[0].first.id, first.id);
  EXPECT_EQ(stats_.retried.load(), 1u);
  // A late answer to the first attempt no longer counts; the retry's does.
  Answer(1, "g.example");
  ASSERT_EQ(replier_.replies.size(), 1u);
  EXPECT_EQ(Id(replier_.replies[0].wire), 4);
  // The final deadline of an answered query fires nothing.
  Advance(milliseconds(2000));
  forwarder_->RunTimers(false);
  EXPECT_EQ(replier_.replies.size(), 1u);
}

TEST_F(ForwarderTest, LostQueryIsRetriedOnceThenFails) {
  Make();
  Query(MakeQuery("h.example", 6, true), udp_client_);
  forwarder_->OnQueryLost(router_.sent.at(0).token, 0, /*upstream_failed=*/false);
  ASSERT_EQ(router_.sent.size(), 2u);
  EXPECT_EQ(router_.sent[1].exclude, 0);
  EXPECT_TRUE(router_.sent[1].allow_excluded);  // the same upstream if nothing else
  forwarder_->OnQueryLost(router_.sent.at(1).token, 0, /*upstream_failed=*/true);
  ASSERT_EQ(replier_.replies.size(), 1u);
  EXPECT_EQ(Rcode(replier_.replies[0].wire), 2);
  EXPECT_EQ(stats_.servfail_no_upstream.load(), 1u);
  EXPECT_EQ(replier_.done.size(), 1u);
}

TEST_F(ForwarderTest, AnswerToAnotherQuestionKeepsWaiting) {
  Make();
  Query(MakeQuery("i.example", 6, true), udp_client_);
  const Bytes other = MakeAnswer("j.example", router_.sent.at(0).binding.id, true);
  EXPECT_EQ(Answer(0, "", other).verdict, AnswerSink::Verdict::kMismatch);
  EXPECT_TRUE(replier_.replies.empty());
  EXPECT_EQ(forwarder_->in_flight(), 1u);
  EXPECT_EQ(stats_.upstream_question_mismatch.load(), 1u);
  EXPECT_EQ(Answer(0, "i.example").verdict, AnswerSink::Verdict::kAccepted);
  EXPECT_EQ(replier_.replies.size(), 1u);
}

TEST_F(ForwarderTest, UdpAnswerLargerThanTheClientTakesIsTruncated) {
  Make();
  Query(MakeQuery("k.example", 6, /*edns=*/false), udp_client_);  // 512-byte limit
  Bytes big = MakeAnswer("k.example", router_.sent.at(0).binding.id, false);
  for (int i = 0; i < 60; ++i) {  // 60 more A records: ~1 KB
    big.insert(big.end(), {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 192, 0, 2,
                           static_cast<uint8_t>(i)});
  }
  dns::WriteU16(big.data() + 6, 61);
  Answer(0, "", big);
  ASSERT_EQ(replier_.replies.size(), 1u);
  const Bytes& reply = replier_.replies[0].wire;
  EXPECT_LE(reply.size(), 512u);
  EXPECT_TRUE(dns::header::IsTruncated(reply.data()));
  EXPECT_EQ(stats_.truncated.load(), 1u);
}

TEST_F(ForwarderTest, UdpAnswersAreCappedAt4096BytesWithTcEvenWhenTheClientTakesMore) {
  Make();
  Bytes query = MakeQuery("l.example", 6, true);
  dns::WriteU16(query.data() + query.size() - 11 + 3, 65535);  // OPT CLASS: UDP payload size
  Query(query, udp_client_);
  Bytes big = MakeAnswer("l.example", router_.sent.at(0).binding.id, false);
  for (int i = 0; i < 300; ++i) {  // 300 more A records: ~4.8 KB
    big.insert(big.end(), {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 192, 0,
                           static_cast<uint8_t>(i >> 8), static_cast<uint8_t>(i)});
  }
  dns::WriteU16(big.data() + 6, 301);
  Answer(0, "", big);
  ASSERT_EQ(replier_.replies.size(), 1u);
  const Bytes& reply = replier_.replies[0].wire;
  EXPECT_LE(reply.size(), frontend::kMaxUdpReply);
  EXPECT_TRUE(dns::header::IsTruncated(reply.data()));  // never cut silently
  dns::ResponseInfo info;
  EXPECT_TRUE(dns::ParseResponse(reply, info));  // and still a valid message
}

// An answer of `extra` more A records after MakeAnswer's one: ~16 bytes each.
Bytes BigAnswer(const std::string& name, uint16_t id, int extra) {
  Bytes big = MakeAnswer(name, id, false);
  for (int i = 0; i < extra; ++i) {
    big.insert(big.end(), {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 192, 0,
                           static_cast<uint8_t>(i >> 8), static_cast<uint8_t>(i)});
  }
  dns::WriteU16(big.data() + 6, static_cast<uint16_t>(extra + 1));
  return big;
}

Bytes QueryWithEdnsSize(const std::string& name, uint16_t id, uint16_t size) {
  Bytes query = MakeQuery(name, id, true);
  dns::WriteU16(query.data() + query.size() - 11 + 3, size);  // OPT CLASS
  return query;
}

// Amplification: the client says 4096, --max-udp-size (1232 by default)
// says less; the smaller wins and the rest goes TC=1.
TEST_F(ForwarderTest, UdpAnswersAreCappedAtMaxUdpSizeWhateverTheClientAdvertises) {
  Make();
  ASSERT_EQ(settings_.max_udp_size, 1232);
  Query(QueryWithEdnsSize("m.example", 7, 4096), udp_client_);
  Answer(0, "", BigAnswer("m.example", router_.sent.at(0).binding.id, 120));  // ~2 KB
  ASSERT_EQ(replier_.replies.size(), 1u);
  const Bytes& reply = replier_.replies[0].wire;
  EXPECT_LE(reply.size(), 1232u);
  EXPECT_TRUE(dns::header::IsTruncated(reply.data()));
  EXPECT_EQ(stats_.truncated.load(), 1u);
}

TEST_F(ForwarderTest, MaxUdpSize4096LetsTheClientsSizeDecide) {
  settings_.max_udp_size = 4096;
  Make();
  Query(QueryWithEdnsSize("n.example", 8, 4096), udp_client_);
  const Bytes big = BigAnswer("n.example", router_.sent.at(0).binding.id, 120);
  Answer(0, "", big);
  ASSERT_EQ(replier_.replies.size(), 1u);
  EXPECT_EQ(replier_.replies[0].wire.size(), big.size());
  EXPECT_FALSE(dns::header::IsTruncated(replier_.replies[0].wire.data()));
}

TEST_F(ForwarderTest, CacheHitsAreCappedAtMaxUdpSizeToo) {
  settings_.max_udp_size = 512;
  Make(false, 16);
  Query(QueryWithEdnsSize("o.example", 9, 4096), tcp_client_);  // fills the cache
  const Bytes big = BigAnswer("o.example", router_.sent.at(0).binding.id, 50);  // ~900 bytes
  Answer(0, "", big);
  ASSERT_EQ(replier_.replies.size(), 1u);
  EXPECT_EQ(replier_.replies[0].wire.size(), big.size()) << "TCP is not capped";
  Query(QueryWithEdnsSize("o.example", 10, 4096), udp_client_);
  ASSERT_EQ(router_.sent.size(), 1u) << "a cache hit";
  ASSERT_EQ(replier_.replies.size(), 2u);
  EXPECT_LE(replier_.replies[1].wire.size(), 512u);
  EXPECT_TRUE(dns::header::IsTruncated(replier_.replies[1].wire.data()));
}

// Malformed structure is refused here and never reaches an upstream.
TEST_F(ForwarderTest, QueryCarryingAnAnswerRecordIsFormErrAndNotForwarded) {
  Make();
  Bytes query = MakeQuery("p.example", 11, false);
  const Bytes record = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 192, 0, 2, 1};
  query.insert(query.end(), record.begin(), record.end());
  dns::WriteU16(query.data() + 6, 1);  // ANCOUNT
  Query(query, udp_client_);
  EXPECT_TRUE(router_.sent.empty());
  ASSERT_EQ(replier_.replies.size(), 1u);
  EXPECT_EQ(Rcode(replier_.replies[0].wire), 1);
  EXPECT_EQ(stats_.formerr.load(), 1u);
  EXPECT_EQ(replier_.done.size(), 1u);
}

TEST_F(ForwarderTest, TsigSignedQueryIsNotAuthAndNotForwarded) {
  Make();
  Bytes query = MakeQuery("q.example", 12, false);
  // TSIG: key "k", hmac-sha256, Time Signed, Fudge, MAC Size 0, Original
  // ID, Error, Other Len.
  Bytes tsig = {1, 'k', 0, 0, 250, 0, 255, 0, 0, 0, 0};
  Bytes rdata = {11, 'h', 'm', 'a', 'c', '-', 's', 'h', 'a', '2', '5', '6', 0,
                 0, 0, 0x60, 0, 0, 1, 1, 0x2c, 0, 0, 0, 12, 0, 0, 0, 0};
  tsig.push_back(0);
  tsig.push_back(static_cast<uint8_t>(rdata.size()));
  tsig.insert(tsig.end(), rdata.begin(), rdata.end());
  query.insert(query.end(), tsig.begin(), tsig.end());
  dns::WriteU16(query.data() + 10, 1);  // ARCOUNT
  Query(query, tcp_client_);
  EXPECT_TRUE(router_.sent.empty());
  ASSERT_EQ(replier_.replies.size(), 1u);
  EXPECT_EQ(Rcode(replier_.replies[0].wire), 9) << "NOTAUTH";
  EXPECT_EQ(ArCount(replier_.replies[0].wire), 1) << "the unsigned TSIG with BADKEY";
  EXPECT_EQ(stats_.notauth_tsig.load(), 1u);
}

// Overload: a query waiting for capacity past queue_wait.max_wait is shed, a UDP
// one silently, a TCP one with SERVFAIL; younger ones keep waiting.
TEST_F(ForwarderTest, QueriesWaitingPastMaxQueueWaitAreShed) {
  settings_.queue_wait.max_wait = milliseconds(200);
  settings_.queue_wait.standing_after = milliseconds(1000);  // a burst, not overload
  Make();
  router_.accept = false;  // every connection at its cap, upstreams alive
  Query(MakeQuery("r.example", 13, false), udp_client_);
  Query(MakeQuery("s.example", 14, false), tcp_client_);
  Advance(milliseconds(150));
  Query(MakeQuery("t.example", 15, false), udp_client_);
  forwarder_->RunTimers(false);
  EXPECT_TRUE(replier_.replies.empty());
  Advance(milliseconds(60));  // the first two have waited 210 ms
  forwarder_->RunTimers(false);
  EXPECT_EQ(stats_.shed_waiting.load(), 2u);
  ASSERT_EQ(replier_.replies.size(), 1u) << "UDP dropped, TCP answered";
  EXPECT_EQ(replier_.replies[0].client.transport, frontend::Transport::kTcp);
  EXPECT_EQ(Rcode(replier_.replies[0].wire), 2);
  EXPECT_EQ(replier_.done.size(), 2u);
  EXPECT_EQ(forwarder_->in_flight(), 1u);
  router_.accept = true;
  forwarder_->DispatchWaiting();
  ASSERT_EQ(router_.sent.size(), 1u) << "the young query goes out";
}

// A queue whose oldest query stays older than half of queue_wait.overload_wait
// for queue_wait.standing_after is overload: the oldest are shed at
// overload_wait, and the newest go out first.
TEST_F(ForwarderTest, StandingQueueShedsEarlyAndServesNewestFirst) {
  settings_.queue_wait.max_wait = milliseconds(200);
  settings_.queue_wait.standing_after = milliseconds(100);
  settings_.queue_wait.overload_wait = milliseconds(20);
  Make();
  router_.accept = false;
  Query(MakeQuery("a.example", 1, false), udp_client_);
  Advance(milliseconds(50));
  forwarder_->RunTimers(false);
  EXPECT_EQ(stats_.shed_waiting.load(), 0u) << "50 ms: a burst, within max_wait";
  Query(MakeQuery("b.example", 2, false), udp_client_);
  Advance(milliseconds(55));  // the queue has stood for 105 ms
  Query(MakeQuery("c.example", 3, false), udp_client_);
  Query(MakeQuery("d.example", 4, false), udp_client_);
  forwarder_->RunTimers(false);
  EXPECT_EQ(stats_.shed_waiting.load(), 2u) << "a (105 ms) and b (55 ms) past 20 ms";
  EXPECT_EQ(forwarder_->in_flight(), 2u);
  router_.accept = true;
  router_.capacity = 1;
  forwarder_->DispatchWaiting();
  ASSERT_EQ(router_.sent.size(), 1u);
  EXPECT_EQ(router_.sent[0].wire.at(dns::kHeaderSize + 1), 'd') << "newest first";
  router_.capacity = 1;
  forwarder_->DispatchWaiting();
  ASSERT_EQ(router_.sent.size(), 2u);
  EXPECT_EQ(router_.sent[1].wire.at(dns::kHeaderSize + 1), 'c');
  // Still standing right after it drained: one lull does not end overload.
  router_.accept = false;
  Query(MakeQuery("x.example", 7, false), udp_client_);
  Advance(milliseconds(25));
  forwarder_->RunTimers(false);
  EXPECT_EQ(stats_.shed_waiting.load(), 3u) << "x waited 25 ms while the queue stands";
  // 100 ms without an old head: the next wait is a burst again, first come
  // first served.
  Advance(milliseconds(110));
  forwarder_->RunTimers(false);
  Advance(milliseconds(5));
  Query(MakeQuery("e.example", 5, false), udp_client_);
  Advance(milliseconds(1));
  Query(MakeQuery("f.example", 6, false), udp_client_);
  Advance(milliseconds(30));
  forwarder_->RunTimers(false);
  EXPECT_EQ(stats_.shed_waiting.load(), 3u) << "30 ms in a burst is not shed";
  router_.accept = true;
  router_.capacity = 1;
  forwarder_->DispatchWaiting();
  ASSERT_EQ(router_.sent.size(), 3u);
  EXPECT_EQ(router_.sent[2].wire.at(dns::kHeaderSize + 1), 'e') << "oldest first";
}

TEST_F(ForwarderTest, ServesStaleWhenTheUpstreamFailsAndCountsItAsStale) {
  Make(false, 16);
  Query(MakeQuery("s.example", 1, true), udp_client_);
  Answer(0, "s.example");  // TTL 300
  Advance(milliseconds(400 * 1000));
  Query(MakeQuery("s.example", 2, true), udp_client_);
  ASSERT_EQ(router_.sent.size(), 2u);  // expired: asked again
  forwarder_->OnQueryLost(router_.sent[1].token, 0, true);
  forwarder_->OnQueryLost(router_.sent.at(2).token, 0, true);
  ASSERT_EQ(replier_.replies.size(), 2u);
  EXPECT_EQ(Rcode(replier_.replies[1].wire), 0);  // the stale answer, not SERVFAIL
  EXPECT_EQ(Id(replier_.replies[1].wire), 2);
  EXPECT_EQ(stats_.cache_stale_answers.load(), 1u);
  EXPECT_EQ(stats_.servfail_no_upstream.load(), 0u);
}

}  // namespace
}  // namespace dotproxy::shard

namespace dotproxy::shard {
namespace {

// Local answers and blocklists (policy::Tables) come before the cache and
// never reach the router; an allowlisted name goes on upstream.
TEST_F(ForwarderTest, PolicyAnswersLocallyAndBlocksBeforeTheUpstream) {
  const std::string list = ::testing::TempDir() + "forwarder_policy_" + std::to_string(getpid());
  const std::string allow = list + ".allow";
  {
    std::FILE* f = std::fopen(list.c_str(), "w");
    std::fputs("*.ads.example\n", f);
    std::fclose(f);
    f = std::fopen(allow.c_str(), "w");
    std::fputs("ok.ads.example\n", f);
    std::fclose(f);
  }
  policy::Sources sources;
  sources.local.push_back({"nas.lan", "A", 60, "192.0.2.5", "t:1"});
  sources.blocklists.push_back({"forwarder-test-list", list, "nxdomain", 60, "t:2"});
  sources.allowlist.push_back(allow);
  auto tables = policy::Tables::Build(sources);
  std::remove(list.c_str());
  std::remove(allow.c_str());
  ASSERT_TRUE(tables.ok()) << tables.status();
  settings_.policy = tables->get();
  Make(false, 16);
  Query(MakeQuery("nas.lan", 1, true), udp_client_);
  Query(MakeQuery("x.ads.example", 2, false), tcp_client_);
  EXPECT_TRUE(router_.sent.empty());
  ASSERT_EQ(replier_.replies.size(), 2u);
  EXPECT_EQ(Rcode(replier_.replies[0].wire), 0);
  EXPECT_EQ(dns::ReadU16(replier_.replies[0].wire.data() + 6), 1);  // one A
  EXPECT_EQ(Rcode(replier_.replies[1].wire), 3);                    // NXDOMAIN
  EXPECT_EQ(replier_.done.size(), 2u);
  EXPECT_EQ(stats_.local_answers.load(), 1u);
  EXPECT_EQ(stats_.blocked.load(), 1u);
  EXPECT_EQ(stats_.blocklist_hits[(*tables)->blocklist_slot(0)].load(), 1u);
  EXPECT_EQ(stats_.cache_misses.load(), 0u);  // answered before the cache
  Query(MakeQuery("ok.ads.example", 3, true), udp_client_);
  EXPECT_EQ(router_.sent.size(), 1u);
  EXPECT_EQ(stats_.allowlist_overrides.load(), 1u);
}

}  // namespace
}  // namespace dotproxy::shard
