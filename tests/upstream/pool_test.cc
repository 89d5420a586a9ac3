// UpstreamPool with real connections on loopback: each upstream is a TCP
// listener that accepts (in the kernel backlog) but never speaks TLS, so
// connections stay in their handshake and queries queue on them. That is
// enough to see selection by priority, the per-connection in-flight cap and
// its siblings, exclusion for retries, release of capacity, and queries
// reported lost when a connection dies. The forwarder is a recording sink.
// The PoolSet cases at the end (a reload's current and retiring pools) use
// the same upstreams.

#include "dotproxy/upstream/pool.h"
#include "dotproxy/upstream/pool_set.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "bench/common/wire.h"
#include "tests/upstream/pool_fixture.h"

namespace dotproxy::upstream {
namespace {

using std::chrono::milliseconds;

class RecordingSink final : public AnswerSink {
 public:
  Outcome OnAnswer(uint32_t token, std::span<uint8_t>, const dns::ResponseInfo&, int*) override {
    answered.push_back(token);
    return {Verdict::kAccepted, {}};
  }
  void OnQueryLost(uint32_t token, int upstream, bool upstream_failed) override {
    lost.push_back(token);
    lost_upstream.push_back(upstream);
    lost_failed.push_back(upstream_failed);
  }
  std::vector<uint32_t> answered, lost;
  std::vector<int> lost_upstream;
  std::vector<bool> lost_failed;
};

// A listening socket on 127.0.0.1 that never accepts: connects complete in
// the kernel, and no TLS byte ever comes back.
struct MuteUpstream {
  io::UniqueFd fd;
  io::SocketAddress address;
};

MuteUpstream ListenMute() {
  MuteUpstream mute;
  mute.fd = io::UniqueFd(socket(AF_INET, SOCK_STREAM, 0));
  auto* v4 = reinterpret_cast<sockaddr_in*>(&mute.address.storage);
  v4->sin_family = AF_INET;
  v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  mute.address.length = sizeof(sockaddr_in);
  EXPECT_EQ(bind(mute.fd.get(), mute.address.get(), mute.address.length), 0);
  EXPECT_EQ(listen(mute.fd.get(), 64), 0);
  socklen_t length = sizeof(sockaddr_in);
  getsockname(mute.fd.get(), reinterpret_cast<sockaddr*>(&mute.address.storage), &length);
  return mute;
}

class PoolTest : public PoolFixture {
 protected:
  void SetUp() override {
    PoolFixture::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    for (int priority : {0, 1}) {
      mutes_.push_back(ListenMute());
      config::UpstreamConfig upstream;
      upstream.address = mutes_.back().address;
      upstream.peer.auth_name = "upstream.test";
      upstream.priority = priority;
      upstream.spec = "mute" + std::to_string(priority);
      upstreams_.push_back(upstream);
    }
    upstream_stats_ = std::make_unique<metrics::UpstreamStats[]>(upstreams_.size());
  }

  void Make(size_t cap, int connections) {
    settings_.max_inflight_per_connection = cap;
    settings_.max_connections_per_upstream = connections;
    settings_.connection.connect_timeout = milliseconds(3000);
    MakePool(sink_, 5);
  }

  void Pump(int rounds = 5) { PoolFixture::Pump(rounds); }

  bool Send(uint32_t token, Binding& binding, int exclude = -1, bool allow_excluded = false) {
    query_ = bench::MakeQuery("q.example", 0, true);
    return pool_->Send(token, query_, exclude, allow_excluded, binding);
  }

  std::vector<MuteUpstream> mutes_;
  RecordingSink sink_;
};

TEST_P(PoolTest, FillsTheBestUpstreamsConnectionsUpToTheCapThenTheNextPriority) {
  Make(/*cap=*/2, /*connections=*/2);
  std::vector<Binding> bindings(6);
  for (uint32_t token = 0; token < 5; ++token) ASSERT_TRUE(Send(token, bindings[token]));
  // Two per connection, two connections on upstream 0, then upstream 1.
  EXPECT_EQ(bindings[0].upstream, 0);
  EXPECT_EQ(bindings[1].connection, bindings[0].connection);
  EXPECT_EQ(bindings[2].upstream, 0);
  EXPECT_NE(bindings[2].connection, bindings[0].connection);  // a sibling opened at the cap
  EXPECT_EQ(bindings[3].connection, bindings[2].connection);
  EXPECT_EQ(bindings[4].upstream, 1);
  // The ID written into the query is the binding's.
  EXPECT_EQ(dns::ReadU16(query_.data()), bindings[4].id);
  EXPECT_EQ(pool_->health().get(0).in_flight, 4u);
  EXPECT_EQ(upstream_stats_[0].queries.load(), 4u);
  EXPECT_TRUE(pool_->AnyAlive());
}

TEST_P(PoolTest, EveryConnectionAtItsCapRefusesUntilCapacityIsReleased) {
  Make(/*cap=*/1, /*connections=*/1);
  Binding a, b, c;
  ASSERT_TRUE(Send(1, a));
  ASSERT_TRUE(Send(2, b));
  EXPECT_EQ(b.upstream, 1);
  EXPECT_FALSE(Send(3, c));      // both upstreams full
  EXPECT_TRUE(pool_->AnyAlive());  // ...but alive: the forwarder waits
  pool_->Release(1, a);
  EXPECT_EQ(pool_->health().get(0).in_flight, 0u);
  ASSERT_TRUE(Send(3, c));
  EXPECT_EQ(c.upstream, 0);
  EXPECT_EQ(c.connection, a.connection);
}

TEST_P(PoolTest, ExcludesTheFailedUpstreamUnlessNothingElseIsUsable) {
  Make(/*cap=*/1, /*connections=*/1);
  Binding a, b, c;
  ASSERT_TRUE(Send(1, a, /*exclude=*/0));
  EXPECT_EQ(a.upstream, 1);
  // Upstream 1 is now full: excluding 0 leaves nothing, unless allowed.
  EXPECT_FALSE(Send(2, b, /*exclude=*/0, /*allow_excluded=*/false));
  ASSERT_TRUE(Send(2, b, /*exclude=*/0, /*allow_excluded=*/true));
  EXPECT_EQ(b.upstream, 0);
  EXPECT_FALSE(pool_->CanSendElsewhere(0));
  pool_->Release(1, a);
  EXPECT_TRUE(pool_->CanSendElsewhere(0));
  (void)c;
}

TEST_P(PoolTest, ADeadConnectionReportsEachOfItsQueriesLostOnce) {
  Make(/*cap=*/10, /*connections=*/1);
  std::vector<Binding> bindings(3);
  for (uint32_t token = 0; token < 3; ++token) ASSERT_TRUE(Send(token, bindings[token]));
  ASSERT_EQ(bindings[2].upstream, 0);
  // The upstream accepts and hangs up mid-handshake.
  const int accepted = accept(mutes_[0].fd.get(), nullptr, nullptr);
  ASSERT_GE(accepted, 0);
  close(accepted);
  for (int i = 0; i < 100 && sink_.lost.size() < 3; ++i) Pump(1);
  ASSERT_EQ(sink_.lost.size(), 3u);
  std::vector<uint32_t> lost = sink_.lost;
  std::sort(lost.begin(), lost.end());
  EXPECT_EQ(lost, (std::vector<uint32_t>{0, 1, 2}));
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(sink_.lost_upstream[i], 0);
    EXPECT_TRUE(sink_.lost_failed[i]);  // a failed setup, not an orderly close
  }
  EXPECT_EQ(pool_->health().get(0).in_flight, 0u);
  EXPECT_EQ(pool_->health().get(0).consecutive_failures, 1);
  EXPECT_EQ(upstream_stats_[0].connect_failures.load(), 1u);
  EXPECT_EQ(upstream_stats_[0].verify_failures.load(), 0u);  // not a certificate problem
  // Backing off: upstream 0 takes nothing now, upstream 1 does.
  Binding next;
  ASSERT_TRUE(Send(9, next));
  EXPECT_EQ(next.upstream, 1);
}

// A reload in miniature: pool A (tag 0) has queries in flight when pool B
// (tag 1) replaces it.
// Two pools of one shard with the same upstream (two forward-zone groups
// listing one spec) share its metrics slot: in_flight is the sum of both,
// and healthy is 0 while either sees the upstream unhealthy, whichever
// pool was made or went last.
TEST_P(PoolTest, PoolsSharingAnUpstreamsSlotAddTheirGauges) {
  Make(/*cap=*/4, /*connections=*/1);
  UpstreamPool other(upstreams_, settings_, *reactor_, clock_, *tls_context_, stats_,
                     upstream_stats_.get(), 0);
  other.set_sink(&sink_);
  Binding a, b, c;
  ASSERT_TRUE(Send(1, a));
  ASSERT_TRUE(other.Send(2, query_, -1, false, b));
  ASSERT_TRUE(other.Send(3, query_, -1, false, c));
  EXPECT_EQ(upstream_stats_[0].in_flight.load(), 3u);
  other.Release(2, b);
  EXPECT_EQ(upstream_stats_[0].in_flight.load(), 2u);
  pool_->Release(1, a);
  EXPECT_EQ(upstream_stats_[0].in_flight.load(), 1u);
  other.Release(3, c);
  EXPECT_EQ(upstream_stats_[0].in_flight.load(), 0u);
  // The first pool sees upstream 0 fail; a pool made afterwards (a reload's
  // or a sibling group's) does not make it healthy again.
  for (int i = 0; i < 3; ++i) {
    Binding timed_out;
    ASSERT_TRUE(Send(10 + i, timed_out));
    pool_->NoteTimeout(timed_out, /*counts_against_upstream=*/true);
    pool_->Release(10 + i, timed_out);
  }
  EXPECT_EQ(upstream_stats_[0].healthy.load(), 0u);
  auto later = std::make_unique<UpstreamPool>(upstreams_, settings_, *reactor_, clock_,
                                              *tls_context_, stats_, upstream_stats_.get(), 0);
  EXPECT_EQ(upstream_stats_[0].healthy.load(), 0u);
  EXPECT_EQ(upstream_stats_[1].healthy.load(), 1u);
  // Once the pool that saw it fail retires, the others' view stands.
  pool_->Retire(clock_.now());
  EXPECT_EQ(upstream_stats_[0].healthy.load(), 1u);
}

class PoolSetTest : public PoolTest {
 protected:
  // Both upstreams in the default zone, or (with `zone`) the first in the
  // default zone and the second alone in `zone`.
  PoolGeneration Generation(uint32_t tag, std::string zone = "") {
    EXPECT_EQ(pools_.next_tag(), tag);
    auto config = std::make_shared<config::Config>();
    if (zone.empty()) {
      config->upstreams = upstreams_;
    } else {
      config->upstreams = {upstreams_[0]};
      config->zones.push_back({.name = zone, .upstreams = {upstreams_[1]}});
      config->zones.back().upstreams[0].metrics_slot = 1;
    }
    settings_.max_inflight_per_connection = 10;
    settings_.max_connections_per_upstream = 1;
    auto context = tls::ClientContext::Create("");
    EXPECT_TRUE(context.ok());
    return pools_.MakeGeneration(MakeZoneRouting(std::move(config)), *std::move(context),
                                 settings_, {*reactor_, clock_, stats_, upstream_stats_.get(), 0,
                                             &sink_});
  }

  void PumpSet(int rounds) {
    for (int i = 0; i < rounds; ++i) {
      clock_.Update();
      pools_.RunTimers(false);
      pools_.Flush();
      ASSERT_TRUE(io::TurnOnce(*reactor_, milliseconds(5), [&](const io::Completion& c) {
        pools_.OnCompletion(c.data.index, c);
      }));
    }
  }

  bool SendSet(uint32_t token, Binding& binding, int exclude = -1,
               const char* name = "q.example") {
    query_ = bench::MakeQuery(name, 0, true);
    return pools_.Send(token, query_, exclude, false, binding);
  }

  PoolSet pools_;
};

TEST_P(PoolSetTest, NewQueriesGoToTheNewPoolAndTheOldOneGoesOnceItsQueriesAreDone) {
  ASSERT_EQ(pools_.next_tag(), 0u);
  pools_.Install(Generation(0), clock_.now());
  PumpSet(3);
  Binding old_binding;
  ASSERT_TRUE(SendSet(1, old_binding));
  EXPECT_EQ(UpstreamPool::TagOfConnection(old_binding.connection), 0u);
  ASSERT_EQ(pools_.next_tag(), 1u);
  pools_.Install(Generation(1), clock_.now() + std::chrono::seconds(30));
  EXPECT_FALSE(pools_.CanReplace());
  Binding new_binding;
  ASSERT_TRUE(SendSet(2, new_binding));
  EXPECT_EQ(UpstreamPool::TagOfConnection(new_binding.connection), 1u);
  EXPECT_EQ(UpstreamPool::TagOfUpstream(new_binding.upstream), 1u);
  // The old pool waits for its query...
  PumpSet(10);
  EXPECT_TRUE(pools_.has_retiring());
  EXPECT_TRUE(sink_.lost.empty());
  // ...and goes once it is released (answered elsewhere, say).
  pools_.Release(1, old_binding);
  for (int i = 0; i < 100 && pools_.has_retiring(); ++i) PumpSet(1);
  EXPECT_FALSE(pools_.has_retiring());
  EXPECT_TRUE(pools_.CanReplace());
  EXPECT_TRUE(sink_.lost.empty());
  // The new pool's query is untouched.
  EXPECT_EQ(pools_.current().health().get(0).in_flight, 1u);
  EXPECT_EQ(pools_.next_tag(), 0u);
}

TEST_P(PoolSetTest, AtItsDeadlineTheOldPoolReportsWhatIsLeftLostForARetry) {
  pools_.Install(Generation(0), clock_.now());
  PumpSet(3);
  std::vector<Binding> bindings(3);
  for (uint32_t token = 0; token < 3; ++token) ASSERT_TRUE(SendSet(token, bindings[token]));
  pools_.Install(Generation(1), clock_.now() + milliseconds(30));
  for (int i = 0; i < 200 && sink_.lost.size() < 3; ++i) PumpSet(1);
  ASSERT_EQ(sink_.lost.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(UpstreamPool::TagOfUpstream(sink_.lost_upstream[i]), 0u);
    EXPECT_FALSE(sink_.lost_failed[i]);  // routine: the upstream did nothing wrong
  }
  for (int i = 0; i < 100 && pools_.has_retiring(); ++i) PumpSet(1);
  EXPECT_FALSE(pools_.has_retiring());
  // A retry names the old pool's upstream as the one to avoid: in the new
  // pool that excludes nothing, so the preferred upstream takes it.
  Binding retry;
  ASSERT_TRUE(SendSet(0, retry, sink_.lost_upstream[0]));
  EXPECT_EQ(retry.upstream & 0xffff, 0);
  EXPECT_EQ(upstream_stats_[0].connect_failures.load(), 0u);  // retiring is not a failure
}

// Forward zones: a query goes to its zone's group; its timeouts, retries
// and release stay there; a reload that drops the zone sends it home.
TEST_P(PoolSetTest, AZoneQueryGoesToItsGroupAndFailoverStaysThere) {
  pools_.Install(Generation(0, "corp.example"), clock_.now());
  PumpSet(3);
  Binding outside, inside, upper;
  ASSERT_TRUE(SendSet(1, outside, -1, "www.example"));
  ASSERT_TRUE(SendSet(2, inside, -1, "db.corp.example"));
  ASSERT_TRUE(SendSet(3, upper, -1, "HOST.Corp.EXAMPLE"));
  // Upstream numbers run across the generation: 0 is the default zone's,
  // 1 the zone's.
  EXPECT_EQ(outside.upstream & 0xffff, 0);
  EXPECT_EQ(inside.upstream & 0xffff, 1);
  EXPECT_EQ(upper.upstream & 0xffff, 1);
  EXPECT_NE(inside.connection, outside.connection);
  EXPECT_EQ(pools_.GroupOf(query_), 1u);
  // The zone has one upstream: nowhere else to go, though the default zone
  // has a usable one; the default zone's query has nowhere else either.
  query_ = bench::MakeQuery("db.corp.example", 0, true);
  EXPECT_FALSE(pools_.CanSendElsewhere(query_, inside.upstream));
  EXPECT_TRUE(pools_.AnyAlive(query_));
  // A retry after a timeout in the zone, excluding its upstream but
  // allowed back to it, stays in the zone.
  Binding retry;
  ASSERT_TRUE(pools_.Send(4, query_, inside.upstream, /*allow_excluded=*/true, retry));
  EXPECT_EQ(retry.upstream & 0xffff, 1);
  pools_.NoteTimeout(inside, true);
  EXPECT_EQ(upstream_stats_[1].timeouts.load(), 1u);
  EXPECT_EQ(upstream_stats_[0].timeouts.load(), 0u);
  // Releases reach the zone's pool.
  pools_.Release(2, inside);
  pools_.Release(3, upper);
  pools_.Release(4, retry);
  pools_.Release(1, outside);
  EXPECT_EQ(upstream_stats_[1].in_flight.load(), 0u);
  EXPECT_EQ(upstream_stats_[0].in_flight.load(), 0u);
  // A reload without the zone: its names go to the default zone.
  pools_.Install(Generation(1), clock_.now() + milliseconds(30));
  Binding home;
  ASSERT_TRUE(SendSet(5, home, -1, "db.corp.example"));
  EXPECT_EQ(UpstreamPool::TagOfUpstream(home.upstream), 1u);
  EXPECT_EQ(pools_.GroupOf(query_), 0u);
  for (int i = 0; i < 100 && pools_.has_retiring(); ++i) PumpSet(1);
  EXPECT_FALSE(pools_.has_retiring());
}

INSTANTIATE_TEST_SUITE_P(Backends, PoolSetTest,
                         ::testing::Values(io::IoBackend::kUring, io::IoBackend::kEpoll),
                         io::BackendName);

INSTANTIATE_TEST_SUITE_P(Backends, PoolTest,
                         ::testing::Values(io::IoBackend::kUring, io::IoBackend::kEpoll),
                         io::BackendName);

}  // namespace
}  // namespace dotproxy::upstream
