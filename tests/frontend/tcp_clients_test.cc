// TcpClients against the real kernel on loopback: framing of pipelined
// queries split across writes, the per-client pipelining limit, answers
// going out length-prefixed, the bounded answer buffer and the idle timeout.
// The forwarder is replaced by a sink that records what it is handed.

#include "dotproxy/frontend/tcp_clients.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cerrno>
#include <cstring>
#include <memory>
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

uint16_t FreeLoopbackPort() {
  io::UniqueFd probe(socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (bind(probe.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) return 0;
  getsockname(probe.get(), reinterpret_cast<sockaddr*>(&address), &length);
  return ntohs(address.sin_port);
}

class TcpClientsTest : public ::testing::TestWithParam<io::IoBackend> {
 protected:
  void SetUp() override {
    reactor_ = io::MakeTestReactor(GetParam());
    if (reactor_ == nullptr) GTEST_SKIP() << io::ToString(GetParam()) << " unavailable";
    port_ = FreeLoopbackPort();
    ASSERT_NE(port_, 0);
    auto address = io::ParseSocketAddress("127.0.0.1:" + std::to_string(port_), -1);
    ASSERT_TRUE(address.ok());
    listen_.push_back(*address);
  }

  void Open(TcpLimits limits = {}) {
    tcp_ = std::make_unique<TcpClients>(*reactor_, clock_, acl_, stats_, 0);
    ASSERT_TRUE(tcp_->Open(listen_, {}, limits).ok());
    tcp_->set_sink(&sink_);
    tcp_->Start();
  }

  // One loop iteration of a shard, as far as TcpClients goes (without the
  // Flush: iterations that all fall between two Flushes).
  void Pump(int rounds = 5, bool flush = true) {
    for (int i = 0; i < rounds; ++i) {
      clock_.Update();
      if (flush) tcp_->Flush();
      ASSERT_TRUE(io::TurnOnce(*reactor_, milliseconds(10), [&](const io::Completion& c) {
        switch (c.data.op) {
          case io::Op::kAccept: tcp_->OnAccept(c.data.index, c); break;
          case io::Op::kClientRecv: tcp_->OnReceive(c.data.index, c); break;
          case io::Op::kClientSend: tcp_->OnSendDone(c.data.index, c); break;
          default: break;
        }
      }));
    }
  }

  io::UniqueFd Connect() {
    io::UniqueFd fd(socket(AF_INET, SOCK_STREAM, 0));
    EXPECT_EQ(connect(fd.get(), listen_[0].get(), listen_[0].length), 0);
    Pump();
    return fd;
  }
  static void Write(int fd, const Bytes& bytes) {
    ASSERT_EQ(send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  }
  static Bytes Framed(const Bytes& message) {
    Bytes out = {static_cast<uint8_t>(message.size() >> 8), static_cast<uint8_t>(message.size())};
    out.insert(out.end(), message.begin(), message.end());
    return out;
  }
  // Reads what has arrived within `wait`; empty on EOF or nothing.
  static Bytes ReadSome(int fd, milliseconds wait, bool* eof = nullptr) {
    pollfd p{fd, POLLIN, 0};
    Bytes out;
    if (poll(&p, 1, static_cast<int>(wait.count())) <= 0) return out;
    uint8_t buffer[65536];
    const ssize_t n = recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n == 0 && eof != nullptr) *eof = true;
    if (n > 0) out.assign(buffer, buffer + n);
    return out;
  }

  std::unique_ptr<io::Reactor> reactor_;
  io::LoopClock clock_;
  Acl acl_{DefaultAllowList()};
  metrics::ShardStats stats_;
  RecordingSink sink_;
  std::unique_ptr<TcpClients> tcp_;
  std::vector<io::SocketAddress> listen_;
  uint16_t port_ = 0;
};

TEST_P(TcpClientsTest, FramesPipelinedQueriesSplitAcrossWrites) {
  Open();
  io::UniqueFd client = Connect();
  const Bytes q1 = bench::MakeQuery("one.example", 1, true);
  const Bytes q2 = bench::MakeQuery("two.example", 2, false);
  Bytes stream = Framed(q1);
  const Bytes f2 = Framed(q2);
  stream.insert(stream.end(), f2.begin(), f2.begin() + 7);  // q2 cut inside its header
  Write(client.get(), stream);
  Pump();
  ASSERT_EQ(sink_.queries.size(), 1u);
  EXPECT_EQ(sink_.queries[0], q1);
  Write(client.get(), Bytes(f2.begin() + 7, f2.end()));
  Pump();
  ASSERT_EQ(sink_.queries.size(), 2u);
  EXPECT_EQ(sink_.queries[1], q2);
  EXPECT_EQ(sink_.clients[0].transport, Transport::kTcp);
  EXPECT_EQ(sink_.clients[0].tcp_client, sink_.clients[1].tcp_client);
  EXPECT_EQ(stats_.tcp_queries.load(), 2u);
}

TEST_P(TcpClientsTest, AnswersLeaveLengthPrefixedInTheOrderCommitted) {
  Open();
  io::UniqueFd client = Connect();
  Write(client.get(), Framed(bench::MakeQuery("a.example", 1, true)));
  Pump();
  ASSERT_EQ(sink_.clients.size(), 1u);
  const ClientRef ref = sink_.clients[0];
  for (const char* text : {"first", "second!"}) {
    std::span<uint8_t> space = tcp_->BeginReply(ref, 100);
    ASSERT_EQ(space.size(), 100u);
    std::memcpy(space.data(), text, std::strlen(text));
    tcp_->CommitReply(ref, std::strlen(text));
  }
  tcp_->QueryDone(ref);
  Pump();
  const Bytes got = ReadSome(client.get(), milliseconds(500));
  const Bytes want = {0, 5, 'f', 'i', 'r', 's', 't', 0, 7, 's', 'e', 'c', 'o', 'n', 'd', '!'};
  EXPECT_EQ(got, want);
}

TEST_P(TcpClientsTest, StopsReadingAtThePipeliningLimitUntilQueriesFinish) {
  TcpLimits limits;
  limits.max_queries_per_client = 2;
  Open(limits);
  io::UniqueFd client = Connect();
  Bytes two = Framed(bench::MakeQuery("a.example", 1, true));
  const Bytes b = Framed(bench::MakeQuery("b.example", 2, true));
  two.insert(two.end(), b.begin(), b.end());
  Write(client.get(), two);
  Pump();
  ASSERT_EQ(sink_.queries.size(), 2u);
  Write(client.get(), Framed(bench::MakeQuery("c.example", 3, true)));
  Pump();
  EXPECT_EQ(sink_.queries.size(), 2u);  // two in flight: not read
  tcp_->QueryDone(sink_.clients[0]);
  Pump();
  EXPECT_EQ(sink_.queries.size(), 3u);  // one finished: reading resumed
}

// One read can hold many queries: the limit holds per query, not per read,
// and the queries held back are handed up, in order, as answers make room
// (nothing more needs to arrive).
TEST_P(TcpClientsTest, ThePipeliningLimitHoldsWithinOneRead) {
  TcpLimits limits;
  limits.max_queries_per_client = 2;
  Open(limits);
  io::UniqueFd client = Connect();
  Bytes stream;
  for (uint16_t id = 1; id <= 5; ++id) {
    const Bytes q = Framed(bench::MakeQuery("a.example", id, true));
    stream.insert(stream.end(), q.begin(), q.end());
  }
  Write(client.get(), stream);
  Pump();
  ASSERT_EQ(sink_.queries.size(), 2u) << "five in one read, two allowed in flight";
  tcp_->QueryDone(sink_.clients[0]);
  EXPECT_EQ(sink_.queries.size(), 3u) << "one answer, one more query handed up";
  tcp_->QueryDone(sink_.clients[1]);
  tcp_->QueryDone(sink_.clients[2]);
  Pump();
  ASSERT_EQ(sink_.queries.size(), 5u);
  for (uint16_t i = 0; i < 5; ++i) {
    EXPECT_EQ(sink_.queries[i][1], i + 1) << "in the order sent";
  }
  EXPECT_EQ(tcp_->open_clients(), 1u);
}

TEST_P(TcpClientsTest, AStaleClientRefReachesNothing) {
  Open();
  io::UniqueFd client = Connect();
  Write(client.get(), Framed(bench::MakeQuery("a.example", 1, true)));
  Pump();
  ASSERT_EQ(sink_.clients.size(), 1u);
  ClientRef stale = sink_.clients[0];
  stale.tcp_generation += 1;  // as after the slot was recycled for another client
  EXPECT_TRUE(tcp_->BeginReply(stale, 100).empty());
  tcp_->QueryDone(stale);  // must not touch the live client's count
  EXPECT_EQ(tcp_->open_clients(), 1u);
}

TEST_P(TcpClientsTest, ClientWhoseAnswersNoLongerFitIsClosedAsSlow) {
  Open();
  io::UniqueFd client = Connect();
  Write(client.get(), Framed(bench::MakeQuery("a.example", 1, true)));
  Pump();
  const ClientRef ref = sink_.clients.at(0);
  const size_t big = TcpClients::kOutCapacity / 2 + 1;
  ASSERT_EQ(tcp_->BeginReply(ref, big).size(), big);
  tcp_->CommitReply(ref, big);
  // Nothing sent yet (no flush) and no room for another: bounded, not grown.
  EXPECT_TRUE(tcp_->BeginReply(ref, big).empty());
  EXPECT_EQ(stats_.tcp_slow_closed.load(), 1u);
  Pump();
  EXPECT_EQ(tcp_->open_clients(), 0u);
}

TEST_P(TcpClientsTest, IdleClientIsClosed) {
  TcpLimits limits;
  limits.idle_timeout = milliseconds(50);
  Open(limits);
  io::UniqueFd client = Connect();
  EXPECT_EQ(tcp_->open_clients(), 1u);
  bool eof = false;
  for (int i = 0; i < 40 && !eof; ++i) {
    Pump(1);
    tcp_->ExpireIdle();
    ReadSome(client.get(), milliseconds(5), &eof);
  }
  EXPECT_TRUE(eof);
  EXPECT_EQ(stats_.tcp_idle_closed.load(), 1u);
}

TEST_P(TcpClientsTest, AcceptedSocketsDoNotDelayAnswers) {
  Open();
  io::UniqueFd client = Connect();
  // The server side is the only accepted socket of this process on port_:
  // find it through its peer, our client.
  sockaddr_in local{};
  socklen_t length = sizeof(local);
  ASSERT_EQ(getsockname(client.get(), reinterpret_cast<sockaddr*>(&local), &length), 0);
  bool found = false;
  for (int fd = 3; fd < 1024 && !found; ++fd) {
    sockaddr_in peer{};
    socklen_t peer_length = sizeof(peer);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_length) != 0) continue;
    if (peer.sin_port != local.sin_port || fd == client.get()) continue;
    int nodelay = 0;
    socklen_t size = sizeof(nodelay);
    ASSERT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, &size), 0);
    EXPECT_EQ(nodelay, 1);  // without it a second small answer waits ~40 ms
    found = true;
  }
  EXPECT_TRUE(found);
}

// Reload: an added address accepts, a kept one keeps its listener (a
// connection waiting in its backlog across the change is accepted), a
// removed one stops accepting while its clients keep being served.
TEST_P(TcpClientsTest, SetListenersAddsAndRemovesWhileServing) {
  Open();
  io::UniqueFd first = Connect();
  ASSERT_EQ(tcp_->open_clients(), 1u);
  const uint16_t other_port = FreeLoopbackPort();
  auto other = io::ParseSocketAddress("127.0.0.1:" + std::to_string(other_port), -1);
  ASSERT_TRUE(other.ok());
  // Waits in the kept listener's backlog while the listeners change.
  io::UniqueFd waiting(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_EQ(connect(waiting.get(), listen_[0].get(), listen_[0].length), 0);
  const std::vector both{listen_[0], *other};
  ASSERT_TRUE(tcp_->SetListeners(both).ok());
  EXPECT_EQ(tcp_->listen_addresses(), both);
  Pump();
  EXPECT_EQ(tcp_->open_clients(), 2u);
  io::UniqueFd added(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_EQ(connect(added.get(), other->get(), other->length), 0);
  Pump();
  EXPECT_EQ(tcp_->open_clients(), 3u);

  // Remove the first address while `first` has a query in flight.
  Write(first.get(), Framed(bench::MakeQuery("in-flight.example", 1, true)));
  Pump();
  ASSERT_EQ(sink_.clients.size(), 1u);
  ASSERT_TRUE(tcp_->SetListeners(std::vector{*other}).ok());
  EXPECT_EQ(tcp_->listen_addresses(), std::vector{*other});
  Pump();
  EXPECT_EQ(tcp_->closing_listeners(), 0u);  // its accept's last completion arrived
  io::UniqueFd refused(socket(AF_INET, SOCK_STREAM, 0));
  EXPECT_NE(connect(refused.get(), listen_[0].get(), listen_[0].length), 0);
  EXPECT_EQ(errno, ECONNREFUSED);
  // Clients accepted on the removed listener are still served.
  const ClientRef ref = sink_.clients[0];
  std::span<uint8_t> space = tcp_->BeginReply(ref, 4);
  ASSERT_EQ(space.size(), 4u);
  std::memcpy(space.data(), "done", 4);
  tcp_->CommitReply(ref, 4);
  tcp_->QueryDone(ref);
  Pump();
  EXPECT_EQ(ReadSome(first.get(), milliseconds(500)), (Bytes{0, 4, 'd', 'o', 'n', 'e'}));
  Write(first.get(), Framed(bench::MakeQuery("still.example", 2, true)));
  Pump();
  EXPECT_EQ(sink_.queries.size(), 2u);
  EXPECT_EQ(tcp_->open_clients(), 3u);
  // Re-adding the address binds it afresh.
  ASSERT_TRUE(tcp_->SetListeners(both).ok());
  Pump();
  io::UniqueFd again(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_EQ(connect(again.get(), listen_[0].get(), listen_[0].length), 0);
  Pump();
  EXPECT_EQ(tcp_->open_clients(), 4u);
}

// A listener added after a client closed likely gets the client's fd
// number: the reactor must not mistake it for the old socket (epoll).
TEST_P(TcpClientsTest, AddedListenerOnTheNumberOfAClosedClientAccepts) {
  Open();
  {
    io::UniqueFd client = Connect();
    ASSERT_EQ(tcp_->open_clients(), 1u);
  }
  for (int i = 0; i < 20 && tcp_->open_clients() > 0; ++i) Pump(1);
  ASSERT_EQ(tcp_->open_clients(), 0u);
  auto other = io::ParseSocketAddress("127.0.0.1:" + std::to_string(FreeLoopbackPort()), -1);
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(tcp_->SetListeners(std::vector{listen_[0], *other}).ok());
  Pump();
  io::UniqueFd added(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_EQ(connect(added.get(), other->get(), other->length), 0);
  Pump();
  EXPECT_EQ(tcp_->open_clients(), 1u);
  Write(added.get(), Framed(bench::MakeQuery("reused.example", 1, true)));
  Pump();
  EXPECT_EQ(sink_.queries.size(), 1u);
}

TEST_P(TcpClientsTest, SetListenersIsAllOrNothingOnABindError) {
  Open();
  // Listening without SO_REUSEPORT: nobody else may bind it.
  io::UniqueFd holder(socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in any{};
  any.sin_family = AF_INET;
  any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(any);
  ASSERT_EQ(bind(holder.get(), reinterpret_cast<sockaddr*>(&any), sizeof(any)), 0);
  ASSERT_EQ(listen(holder.get(), 4), 0);
  getsockname(holder.get(), reinterpret_cast<sockaddr*>(&any), &length);
  auto taken = io::ParseSocketAddress("127.0.0.1:" + std::to_string(ntohs(any.sin_port)), -1);
  ASSERT_TRUE(taken.ok());
  const absl::Status status = tcp_->SetListeners(std::vector{*taken});
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find(taken->ToString()), std::string::npos) << status;
  EXPECT_EQ(tcp_->listen_addresses(), listen_);  // the old listener was not removed
  io::UniqueFd client = Connect();
  EXPECT_EQ(tcp_->open_clients(), 1u);
}

// Two shards accepting on one inherited listener (no SO_REUSEPORT), with
// room for one client each: a shard that is full leaves the next
// connection to the other instead of accepting and dropping it.
TEST_P(TcpClientsTest, ShardsSharingAnInheritedListenerLeaveConnectionsToOneWithRoom) {
  io::UniqueFd passed(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
  ASSERT_EQ(bind(passed.get(), listen_[0].get(), listen_[0].length), 0);
  ASSERT_EQ(listen(passed.get(), 16), 0);
  const std::vector inherited{
      io::InheritedListener{passed.get(), SOCK_STREAM, listen_[0], false}};
  TcpLimits limits;
  limits.max_clients = 1;
  auto second_reactor = io::MakeTestReactor(GetParam());
  ASSERT_NE(second_reactor, nullptr);
  metrics::ShardStats second_stats;
  tcp_ = std::make_unique<TcpClients>(*reactor_, clock_, acl_, stats_, 0);
  TcpClients second(*second_reactor, clock_, acl_, second_stats, 1);
  ASSERT_TRUE(tcp_->Open({}, inherited, limits).ok());
  ASSERT_TRUE(second.Open({}, inherited, limits).ok());
  EXPECT_FALSE(second.SetListeners(listen_).ok());  // the socket unit owns them
  tcp_->set_sink(&sink_);
  second.set_sink(&sink_);
  tcp_->Start();
  second.Start();
  auto pump_both = [&] {
    for (int i = 0; i < 5; ++i) {
      Pump(1);
      clock_.Update();
      second.Flush();
      ASSERT_TRUE(io::TurnOnce(*second_reactor, milliseconds(5), [&](const io::Completion& c) {
        if (c.data.op == io::Op::kAccept) second.OnAccept(c.data.index, c);
        if (c.data.op == io::Op::kClientRecv) second.OnReceive(c.data.index, c);
        if (c.data.op == io::Op::kClientSend) second.OnSendDone(c.data.index, c);
      }));
    }
  };
  io::UniqueFd one(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_EQ(connect(one.get(), listen_[0].get(), listen_[0].length), 0);
  pump_both();
  EXPECT_EQ(tcp_->open_clients() + second.open_clients(), 1u);
  io::UniqueFd two(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_EQ(connect(two.get(), listen_[0].get(), listen_[0].length), 0);
  pump_both();
  EXPECT_EQ(tcp_->open_clients(), 1u);
  EXPECT_EQ(second.open_clients(), 1u);
  EXPECT_EQ(stats_.tcp_rejected.load() + second_stats.tcp_rejected.load(), 0u);
  // Both connections answer their queries.
  Write(one.get(), Framed(bench::MakeQuery("one.example", 1, true)));
  Write(two.get(), Framed(bench::MakeQuery("two.example", 2, true)));
  pump_both();
  EXPECT_EQ(sink_.queries.size(), 2u);
  // The first to close frees its shard, which accepts again.
  one.reset();
  pump_both();
  io::UniqueFd three(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_EQ(connect(three.get(), listen_[0].get(), listen_[0].length), 0);
  pump_both();
  EXPECT_EQ(tcp_->open_clients() + second.open_clients(), 2u);
  EXPECT_EQ(stats_.tcp_rejected.load() + second_stats.tcp_rejected.load(), 0u);
  second.StopIntake();
  tcp_->StopIntake();
  pump_both();
  // StopIntake cancels, never shuts the inherited socket down.
  int accepting = 0;
  socklen_t size = sizeof(accepting);
  ASSERT_EQ(getsockopt(passed.get(), SOL_SOCKET, SO_ACCEPTCONN, &accepting, &size), 0);
  EXPECT_EQ(accepting, 1);
}

// Slowloris: a message trickling in a byte at a time keeps the connection
// active (no idle close) but not past the message timeout.
TEST_P(TcpClientsTest, TricklingMessageIsClosedAtTheMessageTimeoutDespiteActivity) {
  TcpLimits limits;
  limits.idle_timeout = milliseconds(10000);
  limits.message_timeout = milliseconds(100);
  Open(limits);
  io::UniqueFd client = Connect();
  const Bytes framed = Framed(bench::MakeQuery("slow.example", 7, true));
  bool eof = false;
  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < framed.size() - 1 && !eof; ++i) {  // never the last byte
    if (send(client.get(), &framed[i], 1, MSG_NOSIGNAL) != 1) {
      eof = true;  // reset by the close
      break;
    }
    Pump(1);
    tcp_->ExpireIdle();
    ReadSome(client.get(), milliseconds(10), &eof);
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(eof) << "still open after the whole message but its last byte";
  EXPECT_LT(elapsed, milliseconds(1000));
  EXPECT_EQ(stats_.tcp_message_timeout_closed.load(), 1u);
  EXPECT_EQ(stats_.tcp_idle_closed.load(), 0u);
  EXPECT_TRUE(sink_.queries.empty());
  Pump();  // the cancelled receive completes, the slot is recycled
  EXPECT_EQ(tcp_->open_clients(), 0u);
}

// The deadline is per message: a client that completes its messages, even
// split across writes, is never closed by it.
TEST_P(TcpClientsTest, MessagesThatCompleteInTimeDoNotTripTheMessageTimeout) {
  TcpLimits limits;
  limits.message_timeout = milliseconds(60);
  Open(limits);
  io::UniqueFd client = Connect();
  for (int i = 0; i < 8; ++i) {
    const Bytes framed = Framed(bench::MakeQuery("ok.example", static_cast<uint16_t>(i), true));
    const size_t half = framed.size() / 2;
    Write(client.get(), Bytes(framed.begin(), framed.begin() + half));
    Pump(2);  // ~20 ms with half a message
    tcp_->ExpireIdle();
    Write(client.get(), Bytes(framed.begin() + half, framed.end()));
    Pump(2);
    tcp_->ExpireIdle();
    // Answer, so the pipelining limit never pauses reading.
    const ClientRef ref = sink_.clients.back();
    tcp_->QueryDone(ref);
  }
  EXPECT_EQ(sink_.queries.size(), 8u);
  EXPECT_EQ(stats_.tcp_message_timeout_closed.load(), 0u);
  EXPECT_EQ(tcp_->open_clients(), 1u);
}

// A partial message is not timed while reading is paused by back-pressure:
// it waits on us, not on the client.
TEST_P(TcpClientsTest, PausedReadingDoesNotCountAgainstTheMessageTimeout) {
  TcpLimits limits;
  limits.message_timeout = milliseconds(50);
  limits.max_queries_per_client = 1;
  Open(limits);
  io::UniqueFd client = Connect();
  Bytes stream = Framed(bench::MakeQuery("one.example", 1, true));
  const Bytes second = Framed(bench::MakeQuery("two.example", 2, true));
  stream.insert(stream.end(), second.begin(), second.begin() + 5);
  Write(client.get(), stream);
  for (int i = 0; i < 12; ++i) {  // ~120 ms paused with a partial message
    Pump(1);
    tcp_->ExpireIdle();
  }
  EXPECT_EQ(stats_.tcp_message_timeout_closed.load(), 0u);
  ASSERT_EQ(sink_.queries.size(), 1u);
  tcp_->QueryDone(sink_.clients.at(0));  // reading resumes, the timer restarts
  Write(client.get(), Bytes(second.begin() + 5, second.end()));
  Pump();
  tcp_->ExpireIdle();
  EXPECT_EQ(sink_.queries.size(), 2u);
  EXPECT_EQ(tcp_->open_clients(), 1u);
}

// The answer pages a slow reader made us commit go back to the kernel when
// it is closed; a client whose answers fit in one page costs no madvise.
TEST_P(TcpClientsTest, AnswerMemoryOfAClosedSlowReaderIsReturned) {
  Open();
  io::UniqueFd small = Connect();
  Write(small.get(), Framed(bench::MakeQuery("a.example", 1, true)));
  Pump();
  const ClientRef small_ref = sink_.clients.at(0);
  ASSERT_EQ(tcp_->BeginReply(small_ref, 100).size(), 100u);
  tcp_->CommitReply(small_ref, 100);
  tcp_->QueryDone(small_ref);
  Pump();
  small.reset();
  Pump();
  EXPECT_EQ(tcp_->returned_bytes(), 0u) << "one page of answers is kept";

  io::UniqueFd slow = Connect();
  Write(slow.get(), Framed(bench::MakeQuery("b.example", 2, true)));
  Pump();
  const ClientRef ref = sink_.clients.back();
  const size_t big = TcpClients::kOutCapacity / 2 + 1;
  ASSERT_EQ(tcp_->BeginReply(ref, big).size(), big);
  tcp_->CommitReply(ref, big);
  EXPECT_TRUE(tcp_->BeginReply(ref, big).empty());  // closed as slow
  Pump();
  EXPECT_EQ(tcp_->open_clients(), 0u);
  EXPECT_GE(tcp_->returned_bytes(), big - TcpClients::kPageSize);
  EXPECT_LE(tcp_->returned_bytes(), TcpClients::kOutSlot);
}

// A slot answered, closed and taken by a new client before the next Flush
// stays on the flush list once: the new client's answer does not put it
// there twice (the list is reserved for one entry per slot; a second would
// grow it, an allocation on the query path).
TEST_P(TcpClientsTest, ASlotTakenAgainBeforeTheFlushIsFlushedOnce) {
  TcpLimits limits;
  limits.max_clients = 1;
  Open(limits);
  // Until the last Pump, all of this happens between two Flushes.
  auto turn = [&] { Pump(5, /*flush=*/false); };

  io::UniqueFd first = Connect();
  Write(first.get(), Framed(bench::MakeQuery("a.example", 1, true)));
  Pump();
  ASSERT_EQ(sink_.clients.size(), 1u);
  const ClientRef first_ref = sink_.clients[0];
  ASSERT_EQ(tcp_->BeginReply(first_ref, 40).size(), 40u);
  tcp_->CommitReply(first_ref, 40);
  tcp_->QueryDone(first_ref);
  EXPECT_EQ(tcp_->clients_to_flush(), 1u);
  // The client resets its connection before the answer is flushed.
  const linger reset{1, 0};
  setsockopt(first.get(), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
  first.reset();
  turn();
  ASSERT_EQ(tcp_->open_clients(), 0u);

  io::UniqueFd second(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_EQ(connect(second.get(), listen_[0].get(), listen_[0].length), 0);
  turn();
  ASSERT_EQ(tcp_->open_clients(), 1u);
  const Bytes query = bench::MakeQuery("b.example", 2, true);
  Write(second.get(), Framed(query));
  turn();
  ASSERT_EQ(sink_.clients.size(), 2u);
  const ClientRef second_ref = sink_.clients[1];
  ASSERT_EQ(second_ref.tcp_client, first_ref.tcp_client);  // the same slot
  std::span<uint8_t> space = tcp_->BeginReply(second_ref, query.size());
  ASSERT_EQ(space.size(), query.size());
  std::copy(query.begin(), query.end(), space.begin());
  tcp_->CommitReply(second_ref, query.size());
  tcp_->QueryDone(second_ref);
  EXPECT_EQ(tcp_->clients_to_flush(), 1u);
  Pump();
  EXPECT_EQ(tcp_->clients_to_flush(), 0u);
  EXPECT_EQ(ReadSome(second.get(), milliseconds(1000)), Framed(query));
}

INSTANTIATE_TEST_SUITE_P(Backends, TcpClientsTest,
                         ::testing::Values(io::IoBackend::kUring, io::IoBackend::kEpoll),
                         io::BackendName);

}  // namespace
}  // namespace dotproxy::frontend
