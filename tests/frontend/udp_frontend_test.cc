// UdpFrontend against the real kernel on loopback: changing the listen
// addresses of a running front end (SetListeners: kept sockets untouched,
// added ones serving, removed ones closed only after their in-flight
// queries are answered, all-or-nothing on a bind error), and sockets
// inherited from socket activation (shared by two shards: every datagram
// read exactly once; SO_REUSEPORT siblings). Both backends.

#include "dotproxy/frontend/udp_frontend.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "bench/common/wire.h"
#include "tests/io/test_reactor.h"

namespace dotproxy::frontend {
namespace {

using Bytes = std::vector<uint8_t>;
using std::chrono::milliseconds;

class RecordingSink final : public QuerySink {
 public:
  void OnQuery(std::span<uint8_t> wire, const ClientRef& client) override {
    queries.emplace_back(wire.begin(), wire.end());
    clients.push_back(client);
  }
  std::vector<Bytes> queries;
  std::vector<ClientRef> clients;
};

io::SocketAddress FreeUdpAddress() {
  io::UniqueFd probe(socket(AF_INET, SOCK_DGRAM, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  EXPECT_EQ(bind(probe.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  getsockname(probe.get(), reinterpret_cast<sockaddr*>(&address), &length);
  auto parsed = io::ParseSocketAddress("127.0.0.1:" + std::to_string(ntohs(address.sin_port)), -1);
  EXPECT_TRUE(parsed.ok());
  return *parsed;
}

// A client socket connected to `to`: sends queries, reads answers, and sees
// ECONNREFUSED once nothing listens there.
io::UniqueFd Client(const io::SocketAddress& to) {
  io::UniqueFd fd(socket(AF_INET, SOCK_DGRAM, 0));
  EXPECT_EQ(connect(fd.get(), to.get(), to.length), 0);
  return fd;
}

void Send(int fd, const Bytes& wire) {
  ASSERT_EQ(send(fd, wire.data(), wire.size(), 0), static_cast<ssize_t>(wire.size()));
}

// What arrives within `wait`; empty on nothing, `refused` on ECONNREFUSED.
Bytes ReadSome(int fd, milliseconds wait, bool* refused = nullptr) {
  pollfd p{fd, POLLIN, 0};
  Bytes out;
  if (poll(&p, 1, static_cast<int>(wait.count())) <= 0) return out;
  uint8_t buffer[4096];
  const ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
  if (n < 0 && errno == ECONNREFUSED && refused != nullptr) *refused = true;
  if (n > 0) out.assign(buffer, buffer + n);
  return out;
}

// One shard's UDP side: its reactor, front end and sink.
struct Shard {
  Shard(io::IoBackend backend, int index) : reactor(io::MakeTestReactor(backend)), index(index) {}
  absl::Status Open(std::span<const io::SocketAddress> listen,
                    std::span<const io::InheritedListener> inherited = {}) {
    udp = std::make_unique<UdpFrontend>(*reactor, acl, stats, index);
    absl::Status status = udp->Open(listen, inherited, 0, 16);
    udp->set_sink(&sink);
    return status;
  }
  void Pump(int rounds = 5) {
    for (int i = 0; i < rounds; ++i) {
      reactor->PublishBuffers();
      ASSERT_TRUE(io::TurnOnce(*reactor, milliseconds(5), [&](const io::Completion& c) {
        if (c.data.op == io::Op::kUdpRecv) udp->OnReceive(c.data.index, c);
        if (c.data.op == io::Op::kUdpSend) udp->OnSendDone(c.data.index, c);
      }));
    }
  }
  // Answers the `n`-th query received with its own bytes, then ends it.
  void Answer(size_t n) {
    const ClientRef& client = sink.clients.at(n);
    std::span<uint8_t> space = udp->BeginReply(client, sink.queries[n].size());
    ASSERT_EQ(space.size(), sink.queries[n].size());
    std::memcpy(space.data(), sink.queries[n].data(), space.size());
    udp->CommitReply(client, space.size());
    udp->QueryDone(client);
  }

  std::unique_ptr<io::Reactor> reactor;
  int index;
  Acl acl{DefaultAllowList()};
  metrics::ShardStats stats;
  RecordingSink sink;
  std::unique_ptr<UdpFrontend> udp;
};

class UdpFrontendTest : public ::testing::TestWithParam<io::IoBackend> {
 protected:
  void SetUp() override {
    shard_ = std::make_unique<Shard>(GetParam(), 0);
    if (shard_->reactor == nullptr) GTEST_SKIP() << io::ToString(GetParam()) << " unavailable";
  }
  // One socket whose intake sheds by `clock` (standing after 100 ms, shed
  // at 20 ms while standing, else at 200 ms), started; a client of it.
  io::UniqueFd OpenWithIntakeShedding(io::LoopClock& clock) {
    const io::SocketAddress a = FreeUdpAddress();
    EXPECT_TRUE(shard_->Open(std::vector{a}).ok());
    shard_->udp->EnableIntakeShedding(&clock, {.standing_after = milliseconds(100),
                                               .overload_wait = milliseconds(20),
                                               .max_wait = milliseconds(200),
                                               .min_old = 8});
    shard_->udp->Start();
    return Client(a);
  }
  std::unique_ptr<Shard> shard_;
};

TEST_P(UdpFrontendTest, SetListenersKeepsUnchangedSocketsAndServesAddedOnes) {
  Shard& shard = *shard_;
  const io::SocketAddress a = FreeUdpAddress();
  const io::SocketAddress b = FreeUdpAddress();
  ASSERT_TRUE(shard.Open(std::vector{a}).ok());
  shard.udp->Start();
  io::UniqueFd to_a = Client(a);
  // Queued in A's socket before the change: only read if A's socket is kept.
  Send(to_a.get(), bench::MakeQuery("before.example", 1, true));
  const std::vector both{a, b};
  ASSERT_TRUE(shard.udp->SetListeners(both).ok());
  EXPECT_EQ(shard.udp->listen_addresses(), both);
  shard.Pump();
  ASSERT_EQ(shard.sink.queries.size(), 1u);
  io::UniqueFd to_b = Client(b);
  Send(to_b.get(), bench::MakeQuery("added.example", 2, true));
  shard.Pump();
  ASSERT_EQ(shard.sink.queries.size(), 2u);
  EXPECT_EQ(shard.sink.queries[1], bench::MakeQuery("added.example", 2, true));
  shard.Answer(0);
  shard.Answer(1);
  shard.Pump();
  EXPECT_EQ(ReadSome(to_a.get(), milliseconds(500)), shard.sink.queries[0]);
  EXPECT_EQ(ReadSome(to_b.get(), milliseconds(500)), shard.sink.queries[1]);
}

TEST_P(UdpFrontendTest, RemovedSocketAnswersItsQueriesInFlightThenCloses) {
  Shard& shard = *shard_;
  const io::SocketAddress a = FreeUdpAddress();
  const io::SocketAddress b = FreeUdpAddress();
  ASSERT_TRUE(shard.Open(std::vector{a, b}).ok());
  shard.udp->Start();
  io::UniqueFd to_a = Client(a);
  io::UniqueFd to_b = Client(b);
  Send(to_a.get(), bench::MakeQuery("in-flight.example", 1, true));
  shard.Pump();
  ASSERT_EQ(shard.sink.queries.size(), 1u);

  ASSERT_TRUE(shard.udp->SetListeners(std::vector{b}).ok());
  EXPECT_EQ(shard.udp->listen_addresses(), std::vector{b});
  shard.Pump();
  EXPECT_EQ(shard.udp->closing_sockets(), 1u);  // a query from A is not done
  // A reads nothing more while it waits.
  Send(to_a.get(), bench::MakeQuery("after-removal.example", 2, true));
  shard.Pump();
  EXPECT_EQ(shard.sink.queries.size(), 1u);
  // The answer still leaves from A's address; then A closes.
  shard.Answer(0);
  shard.Pump();
  EXPECT_EQ(ReadSome(to_a.get(), milliseconds(500)), shard.sink.queries[0]);
  EXPECT_EQ(shard.udp->closing_sockets(), 0u);
  bool refused = false;
  for (int i = 0; i < 20 && !refused; ++i) {
    Send(to_a.get(), bench::MakeQuery("closed.example", 3, true));
    ReadSome(to_a.get(), milliseconds(50), &refused);
  }
  EXPECT_TRUE(refused) << "A still open after its last query was done";
  // B goes on serving.
  Send(to_b.get(), bench::MakeQuery("kept.example", 4, true));
  shard.Pump();
  ASSERT_EQ(shard.sink.queries.size(), 2u);
  shard.Answer(1);
  shard.Pump();
  EXPECT_EQ(ReadSome(to_b.get(), milliseconds(500)), shard.sink.queries[1]);
}

TEST_P(UdpFrontendTest, ReAddedAddressGetsAFreshSocketThatServes) {
  Shard& shard = *shard_;
  const io::SocketAddress a = FreeUdpAddress();
  const io::SocketAddress b = FreeUdpAddress();
  ASSERT_TRUE(shard.Open(std::vector{a}).ok());
  shard.udp->Start();
  for (int round = 0; round < 3; ++round) {
    ASSERT_TRUE(shard.udp->SetListeners(std::vector{b}).ok());
    shard.Pump();
    EXPECT_EQ(shard.udp->closing_sockets(), 0u);
    ASSERT_TRUE(shard.udp->SetListeners(std::vector{a, b}).ok());
    shard.Pump();
  }
  io::UniqueFd to_a = Client(a);
  Send(to_a.get(), bench::MakeQuery("again.example", 1, true));
  shard.Pump();
  ASSERT_EQ(shard.sink.queries.size(), 1u);
  shard.Answer(0);
  shard.Pump();
  EXPECT_EQ(ReadSome(to_a.get(), milliseconds(500)), shard.sink.queries[0]);
}

TEST_P(UdpFrontendTest, SetListenersIsAllOrNothingOnABindError) {
  Shard& shard = *shard_;
  const io::SocketAddress a = FreeUdpAddress();
  const io::SocketAddress taken = FreeUdpAddress();
  const io::SocketAddress b = FreeUdpAddress();
  // Bound without SO_REUSEPORT: nobody else may bind it.
  io::UniqueFd holder(socket(AF_INET, SOCK_DGRAM, 0));
  ASSERT_EQ(bind(holder.get(), taken.get(), taken.length), 0);
  ASSERT_TRUE(shard.Open(std::vector{a}).ok());
  shard.udp->Start();
  const absl::Status status = shard.udp->SetListeners(std::vector{b, taken});
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find(taken.ToString()), std::string::npos) << status;
  EXPECT_EQ(shard.udp->listen_addresses(), std::vector{a});
  // Neither A was removed nor B added.
  bool refused = false;
  io::UniqueFd to_b = Client(b);
  Send(to_b.get(), bench::MakeQuery("b.example", 1, true));
  shard.Pump();
  ReadSome(to_b.get(), milliseconds(100), &refused);
  EXPECT_TRUE(refused);
  io::UniqueFd to_a = Client(a);
  Send(to_a.get(), bench::MakeQuery("a.example", 2, true));
  shard.Pump();
  EXPECT_EQ(shard.sink.queries.size(), 1u);
}

// An inherited socket without SO_REUSEPORT, read by two shards: every
// datagram reaches exactly one of them, and replies leave from it.
TEST_P(UdpFrontendTest, TwoShardsShareAnInheritedSocket) {
  Shard& first = *shard_;
  Shard second(GetParam(), 1);
  ASSERT_NE(second.reactor, nullptr);
  const io::SocketAddress address = FreeUdpAddress();
  io::UniqueFd passed(socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0));
  ASSERT_EQ(bind(passed.get(), address.get(), address.length), 0);
  const std::vector inherited{io::InheritedListener{passed.get(), SOCK_DGRAM, address, false}};
  const std::vector ignored{FreeUdpAddress()};  // --listen: replaced
  ASSERT_TRUE(first.Open(ignored, inherited).ok());
  ASSERT_TRUE(second.Open(ignored, inherited).ok());
  EXPECT_EQ(first.udp->listen_addresses(), std::vector{address});
  EXPECT_FALSE(first.udp->SetListeners(ignored).ok());  // the socket unit owns them
  first.udp->Start();
  second.udp->Start();
  constexpr int kQueries = 40;
  std::vector<io::UniqueFd> clients;
  for (int i = 0; i < kQueries; ++i) {
    clients.push_back(Client(address));
    Send(clients.back().get(), bench::MakeQuery("shared.example", static_cast<uint16_t>(i), true));
    if (i % 4 == 3) {
      first.Pump(1);
      second.Pump(1);
    }
  }
  for (int i = 0; i < 5; ++i) {
    first.Pump(1);
    second.Pump(1);
  }
  std::multiset<uint16_t> ids;
  for (Shard* shard : {&first, &second}) {
    for (const Bytes& query : shard->sink.queries) ids.insert(static_cast<uint16_t>(query[0] << 8 | query[1]));
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(kQueries));
  EXPECT_EQ(std::set<uint16_t>(ids.begin(), ids.end()).size(), static_cast<size_t>(kQueries))
      << "a datagram was read twice";
  for (Shard* shard : {&first, &second}) {
    for (size_t n = 0; n < shard->sink.queries.size(); ++n) {
      shard->Answer(n);
      if (n % 8 == 7) shard->Pump(2);  // 16 reply slots
    }
    shard->Pump();
  }
  int answered = 0;
  for (int i = 0; i < kQueries; ++i) answered += !ReadSome(clients[i].get(), milliseconds(200)).empty();
  EXPECT_EQ(answered, kQueries);
  std::printf("shard 0 read %zu, shard 1 read %zu\n", first.sink.queries.size(),
              second.sink.queries.size());
  // The passed socket outlives both shards' duplicates.
  first.udp.reset();
  second.udp.reset();
  int type = 0;
  socklen_t length = sizeof(type);
  EXPECT_EQ(getsockopt(passed.get(), SOL_SOCKET, SO_TYPE, &type, &length), 0);
}

// With SO_REUSEPORT on the passed socket, shard 1 binds a sibling: the
// kernel spreads clients over both, and each datagram is read once.
TEST_P(UdpFrontendTest, ShardOneOpensAReusePortSiblingOfTheInheritedSocket) {
  Shard& first = *shard_;
  Shard second(GetParam(), 1);
  ASSERT_NE(second.reactor, nullptr);
  const io::SocketAddress address = FreeUdpAddress();
  io::UniqueFd passed(socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0));
  const int one = 1;
  ASSERT_EQ(setsockopt(passed.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)), 0);
  ASSERT_EQ(bind(passed.get(), address.get(), address.length), 0);
  const std::vector inherited{io::InheritedListener{passed.get(), SOCK_DGRAM, address, true}};
  ASSERT_TRUE(first.Open({}, inherited).ok());
  ASSERT_TRUE(second.Open({}, inherited).ok());
  first.udp->Start();
  second.udp->Start();
  constexpr int kQueries = 64;
  std::vector<io::UniqueFd> clients;
  for (int i = 0; i < kQueries; ++i) {
    clients.push_back(Client(address));  // a new source port each: spread by hash
    Send(clients.back().get(), bench::MakeQuery("sibling.example", static_cast<uint16_t>(i), true));
  }
  for (int i = 0; i < 5; ++i) {
    first.Pump(1);
    second.Pump(1);
  }
  EXPECT_EQ(first.sink.queries.size() + second.sink.queries.size(), static_cast<size_t>(kQueries));
  // 64 source ports all hashed to one socket would mean no sibling.
  EXPECT_GT(first.sink.queries.size(), 0u);
  EXPECT_GT(second.sink.queries.size(), 0u);
}

// Intake shedding reads the kernel's receive stamps: a datagram that waited
// past max_wait in the socket is dropped unread and counted; a fresh one is
// delivered. (The loop's wall clock is moved ahead to age what is queued.)
TEST_P(UdpFrontendTest, DatagramsThatWaitedTooLongInTheSocketAreShed) {
  Shard& shard = *shard_;
  io::LoopClock clock;
  io::UniqueFd to_a = OpenWithIntakeShedding(clock);
  Send(to_a.get(), bench::MakeQuery("fresh.example", 1, true));
  clock.Update();
  shard.Pump();
  ASSERT_EQ(shard.sink.queries.size(), 1u) << "a fresh datagram is delivered";
  shard.Answer(0);
  shard.Pump();
  Send(to_a.get(), bench::MakeQuery("stale.example", 2, true));
  Send(to_a.get(), bench::MakeQuery("stale2.example", 3, true));
  clock.Update();
  clock.SetRealtimeNs(clock.realtime_ns() + 300'000'000);  // they waited 300 ms
  shard.Pump();
  EXPECT_EQ(shard.sink.queries.size(), 1u) << "stale datagrams are not delivered";
  EXPECT_EQ(shard.stats.shed_intake.load(), 2u);
  clock.Update();
  Send(to_a.get(), bench::MakeQuery("fresh2.example", 4, true));
  shard.Pump();
  ASSERT_EQ(shard.sink.queries.size(), 2u);
  EXPECT_EQ(shard.sink.queries[1], bench::MakeQuery("fresh2.example", 4, true));
  shard.Answer(1);
  shard.Pump();
}

// Once intake stands (every datagram read for standing_after had waited at
// least half of overload_wait), what waited past overload_wait is shed: it
// is the backlog from before the receive buffer was cut. 30 ms is under
// max_wait, so the same datagram is served while intake does not stand.
TEST_P(UdpFrontendTest, StandingIntakeShedsWhatWaitedPastOverloadWait) {
  Shard& shard = *shard_;
  io::LoopClock clock;
  io::UniqueFd to_a = OpenWithIntakeShedding(clock);
  const auto start = clock.now();
  // Aged as the loop sees them: `waited` before the loop's wall time.
  auto send_aged = [&](uint16_t id, milliseconds at, milliseconds waited) {
    Send(to_a.get(), bench::MakeQuery("q.example", id, true));
    clock.Update();
    clock.Set(start + at);
    clock.SetRealtimeNs(clock.realtime_ns() + std::chrono::nanoseconds(waited).count());
    shard.Pump();
  };
  send_aged(1, milliseconds(0), milliseconds(30));
  ASSERT_EQ(shard.sink.queries.size(), 1u) << "not standing: 30 ms is within max_wait";
  // Old, not shed. Four of them 40 ms apart span 120 ms, but four reads
  // are not a standing queue (min_old is 8 here, as in the shard)...
  for (uint16_t i = 2; i <= 4; ++i) {
    send_aged(i, milliseconds(40) * (i - 1), milliseconds(15));
  }
  ASSERT_EQ(shard.sink.queries.size(), 4u);
  EXPECT_EQ(shard.stats.intake_overload_began.load(), 0u) << "four old datagrams in 120 ms";
  // ...eight are.
  for (uint16_t i = 5; i <= 8; ++i) {
    send_aged(i, milliseconds(120) + milliseconds(5) * (i - 4), milliseconds(15));
  }
  ASSERT_EQ(shard.sink.queries.size(), 8u);
  EXPECT_EQ(shard.stats.intake_overload_began.load(), 1u) << "140 ms of old datagrams";
  send_aged(9, milliseconds(150), milliseconds(30));
  EXPECT_EQ(shard.sink.queries.size(), 8u) << "standing: 30 ms is past overload_wait";
  EXPECT_EQ(shard.stats.shed_intake.load(), 1u);
  for (size_t k = 0; k < 8; ++k) shard.Answer(k);
  shard.Pump();
}

// The cut receive buffer holds twice what the shard serves across its
// longest stall off the CPU, within [kCutFloor, cap]: a CFS quota's 9 ms
// throttle takes the cap, fine slices a little more than the floor, a core
// of its own (no stall) the floor.
TEST(UdpFrontendCutTest, TheCutHoldsWhatTheShardServesAcrossItsLongestStall) {
  const auto window = milliseconds(100);
  // 1,000 served in 100 ms (10,000/s); the cap an eighth of 50 ms: 62.
  EXPECT_EQ(UdpFrontend::CutDatagramsFor(1000, window, milliseconds(9), 62), 62);
  EXPECT_EQ(UdpFrontend::CutDatagramsFor(1000, window, std::chrono::microseconds(1500), 62), 30);
  EXPECT_EQ(UdpFrontend::CutDatagramsFor(1000, window, milliseconds(0), 62),
            UdpFrontend::kCutFloor);
  EXPECT_EQ(UdpFrontend::CutDatagramsFor(1000, window, std::chrono::microseconds(100), 62),
            UdpFrontend::kCutFloor);
  // A cap under the floor (a trickle of a flood): the floor.
  EXPECT_EQ(UdpFrontend::CutDatagramsFor(50, window, milliseconds(9), 8), UdpFrontend::kCutFloor);
}

INSTANTIATE_TEST_SUITE_P(Backends, UdpFrontendTest,
                         ::testing::Values(io::IoBackend::kUring, io::IoBackend::kEpoll),
                         io::BackendName);

}  // namespace
}  // namespace dotproxy::frontend
