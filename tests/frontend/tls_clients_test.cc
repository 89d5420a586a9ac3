// TlsClients against the real kernel on loopback, on both backends, with a
// tls::Session client (the upstream side's code) whose ciphertext the test
// moves over a real socket: handshake, pipelined queries answered in any
// order, the per-iteration handshake budget, the cap on handshakes in
// progress, mutual TLS refusals counted, stale ClientRefs. The forwarder is
// a sink that records what it is handed. PKI: DOTPROXY_TEST_PKI.

#include "dotproxy/frontend/tls_clients.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/common/wire.h"
#include "dotproxy/dns/stream_framer.h"
#include "dotproxy/tls/client.h"
#include "tests/io/test_reactor.h"

namespace dotproxy::frontend {
namespace {

using Bytes = std::vector<uint8_t>;
using std::chrono::milliseconds;

class WolfSslEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { tls::GlobalInit(); }
  void TearDown() override { wolfSSL_Cleanup(); }
};
[[maybe_unused]] ::testing::Environment* const kWolfSslEnvironment =
    ::testing::AddGlobalTestEnvironment(new WolfSslEnvironment);

std::string PkiDir() {
  const char* dir = std::getenv("DOTPROXY_TEST_PKI");
  return dir != nullptr ? dir : "";
}

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

Bytes Framed(const Bytes& message) {
  Bytes out = {static_cast<uint8_t>(message.size() >> 8), static_cast<uint8_t>(message.size())};
  out.insert(out.end(), message.begin(), message.end());
  return out;
}

// A DoT client: tls::Session over a real non-blocking socket.
struct Client {
  io::UniqueFd fd;
  tls::Session session;
  bool done = false;
  bool failed = false;

  void Flush() {
    auto& out = session.outbound();
    if (!out.empty()) send(fd.get(), out.data(), out.size(), MSG_NOSIGNAL);
    out.clear();
  }
  // Moves what arrived into the session; false on EOF.
  bool Receive() {
    const std::span<uint8_t> space = session.InboundSpace();
    const ssize_t n = recv(fd.get(), space.data(), space.size(), MSG_DONTWAIT);
    if (n == 0) return false;
    if (n > 0) session.CommitInbound(static_cast<size_t>(n));
    return true;
  }
  void Step() {
    if (done || failed) return;
    if (!Receive()) {
      failed = true;
      return;
    }
    switch (session.Handshake()) {
      case tls::Session::Step::kDone: done = true; break;
      case tls::Session::Step::kWantRead: break;
      case tls::Session::Step::kError: failed = true; break;
    }
    Flush();
  }
};

// A stand-in for the DoH codec on the StreamProtocol seam: DNS-over-TCP
// framing in, but each query on its own odd stream id (as HTTP/2 client
// streams are), answers tagged with their stream id on the way out.
class FakeHttpsProtocol final : public StreamProtocol {
 public:
  static constexpr uint8_t kLeaving = 0xff;  // a one-byte message: "I am leaving"
  // A one-byte message that breaks the protocol: a one-byte goodbye is
  // queued (as HTTP/2's GOAWAY would be), and the intake is an error.
  static constexpr uint8_t kBroken = 0xfe;
  explicit FakeHttpsProtocol(std::span<uint8_t> out) : framer_(in_), out_(out) {}
  void Reset() override {
    framer_.Clear();
    out_end_ = 0;
    next_stream_ = 1;
  }
  std::span<uint8_t> InputSpace() override { return framer_.WritableSpace(); }
  Intake CommitInput(size_t n, Host& host) override {
    framer_.Commit(n);
    std::span<uint8_t> message;
    while (framer_.NextMessage(512, message) == dns::StreamFramer::Next::kMessage) {
      if (message.size() == 1 && message[0] == kLeaving) {
        framer_.Compact();
        return Intake::kDone;  // as DoH's codec on a client's GOAWAY
      }
      if (message.size() == 1 && message[0] == kBroken) {
        dns::WriteLengthPrefix(out_.data() + out_end_, 1);
        out_[out_end_ + 2] = kBroken;
        out_end_ += 3;
        return Intake::kError;
      }
      const uint32_t stream = next_stream_;
      next_stream_ += 2;
      if (!host.OnQuery(message, stream)) return Intake::kClosed;
    }
    framer_.Compact();
    return Intake::kOk;
  }
  bool mid_message() const override { return !framer_.empty(); }
  std::span<uint8_t> BeginAnswer(uint32_t, size_t max_length) override {
    if (out_.size() - out_end_ < 3 + max_length) return {};
    return out_.subspan(out_end_ + 3, max_length);
  }
  void CommitAnswer(uint32_t stream, size_t length) override {
    dns::WriteLengthPrefix(out_.data() + out_end_, length + 1);
    out_[out_end_ + 2] = static_cast<uint8_t>(stream);
    out_end_ += 3 + length;
  }
  std::span<const uint8_t> Output() override { return out_.first(out_end_); }
  void Consumed(size_t n) override {
    std::memmove(out_.data(), out_.data() + n, out_end_ - n);
    out_end_ -= n;
  }

 private:
  uint8_t in_[2048] = {};
  dns::StreamFramer framer_;
  std::span<uint8_t> out_;
  size_t out_end_ = 0;
  uint32_t next_stream_ = 1;
};

class TlsClientsTest : public ::testing::TestWithParam<io::IoBackend> {
 protected:
  void SetUp() override {
    if (PkiDir().empty()) GTEST_SKIP() << "DOTPROXY_TEST_PKI is not set";
    reactor_ = io::MakeTestReactor(GetParam());
    if (reactor_ == nullptr) GTEST_SKIP() << io::ToString(GetParam()) << " unavailable";
    port_ = FreeLoopbackPort();
    ASSERT_NE(port_, 0);
    auto address = io::ParseSocketAddress("127.0.0.1:" + std::to_string(port_), -1);
    ASSERT_TRUE(address.ok());
    listen_.push_back({*address});
    auto context = tls::ClientContext::Create(PkiDir() + "/ca.pem");
    ASSERT_TRUE(context.ok());
    client_context_ = *std::move(context);
    policy_.auth_name = "upstream.test";
  }

  void Open(TlsLimits limits = {}, const std::string& client_ca = "",
            const StreamProtocolFactory& https = nullptr) {
    tls::ServerOptions options{PkiDir() + "/server.pem", PkiDir() + "/server.key",
                               client_ca.empty() ? "" : PkiDir() + "/" + client_ca};
    auto server = tls::ServerContext::Create(options);
    ASSERT_TRUE(server.ok()) << server.status();
    room_ = std::make_unique<TlsClients>(*reactor_, clock_, acl_, stats_, 0);
    ASSERT_TRUE(room_->Open(listen_, *server, limits, https).ok());
    room_->set_sink(&sink_);
    room_->Start();
  }

  // One shard loop iteration, as far as the room goes.
  void Pump(int rounds = 5) {
    for (int i = 0; i < rounds; ++i) {
      clock_.Update();
      room_->ExpireIdle();
      room_->Flush();
      ASSERT_TRUE(io::TurnOnce(*reactor_, milliseconds(5), [&](const io::Completion& c) {
        switch (c.data.op) {
          case io::Op::kTlsAccept: room_->OnAccept(c.data.index, c); break;
          case io::Op::kTlsRecv: room_->OnReceive(c.data.index, c); break;
          case io::Op::kTlsSend: room_->OnSendDone(c.data.index, c); break;
          default: break;
        }
      }));
    }
  }

  std::unique_ptr<Client> Connect() {
    auto client = std::make_unique<Client>();
    client->fd = io::UniqueFd(socket(AF_INET, SOCK_STREAM, 0));
    EXPECT_EQ(connect(client->fd.get(), listen_[0].address.get(), listen_[0].address.length), 0);
    EXPECT_TRUE(client->session.Start(*client_context_, policy_, nullptr).ok());
    return client;
  }

  // Drives the handshakes of `clients` and the room, bounded.
  void Handshake(std::vector<Client*> clients, int rounds = 200) {
    for (int i = 0; i < rounds; ++i) {
      bool all = true;
      for (Client* c : clients) {
        c->Step();
        all = all && (c->done || c->failed);
      }
      if (all) break;
      Pump(1);
    }
    Pump(5);  // the server's side of the last flight (a client may be done first)
  }

  // The answers the client decrypts within a bounded number of turns.
  std::vector<Bytes> ReadAnswers(Client& client, size_t count) {
    std::vector<Bytes> answers;
    Bytes plain;
    for (int i = 0; i < 200 && answers.size() < count; ++i) {
      Pump(1);
      client.Receive();
      uint8_t buffer[4096];
      int n;
      while ((n = client.session.Read(buffer)) > 0) plain.insert(plain.end(), buffer, buffer + n);
      while (plain.size() >= 2 && plain.size() >= 2u + (plain[0] << 8 | plain[1])) {
        const size_t length = plain[0] << 8 | plain[1];
        answers.emplace_back(plain.begin() + 2, plain.begin() + 2 + static_cast<ptrdiff_t>(length));
        plain.erase(plain.begin(), plain.begin() + 2 + static_cast<ptrdiff_t>(length));
      }
    }
    return answers;
  }

  // Answers query `q` with its own bytes and ends it, as the forwarder would.
  void EchoAnswer(size_t q) {
    std::span<uint8_t> space = room_->BeginReply(sink_.clients[q], sink_.queries[q].size());
    ASSERT_EQ(space.size(), sink_.queries[q].size());
    std::memcpy(space.data(), sink_.queries[q].data(), space.size());
    room_->CommitReply(sink_.clients[q], space.size());
    room_->QueryDone(sink_.clients[q]);
  }

  // A DoT listener allowing `max_queries` in flight per client, and a
  // client through its handshake.
  std::unique_ptr<Client> ConnectWithQueryLimit(uint32_t max_queries) {
    TlsLimits limits;
    limits.max_queries_per_client = max_queries;
    Open(limits);
    auto client = Connect();
    Handshake({client.get()});
    EXPECT_TRUE(client->done) << client->session.error();
    return client;
  }

  // An https listener speaking FakeHttpsProtocol, and a client through its
  // handshake.
  std::unique_ptr<Client> ConnectHttps() {
    listen_[0].kind = TlsListenerKind::kHttps;
    Open({}, "", [](std::span<uint8_t> out) { return std::make_unique<FakeHttpsProtocol>(out); });
    auto client = Connect();
    Handshake({client.get()});
    EXPECT_TRUE(client->done) << client->session.error();
    return client;
  }

  // True once the room has closed `client`'s connection (EOF), within a
  // bounded number of turns.
  bool ClosedByRoom(Client& client) {
    for (int i = 0; i < 50; ++i) {
      Pump(1);
      if (!client.Receive()) return true;
    }
    return false;
  }

  std::unique_ptr<io::Reactor> reactor_;
  io::LoopClock clock_;
  Acl acl_{DefaultAllowList()};
  metrics::ShardStats stats_;
  RecordingSink sink_;
  std::unique_ptr<TlsClients> room_;
  std::vector<TlsListen> listen_;
  uint16_t port_ = 0;
  std::unique_ptr<tls::ClientContext> client_context_;
  tls::PeerPolicy policy_;
};

TEST_P(TlsClientsTest, PipelinedQueriesAreAnsweredInAnyOrder) {
  Open();
  auto client = Connect();
  Handshake({client.get()});
  ASSERT_TRUE(client->done) << client->session.error();
  Bytes burst;
  for (uint16_t id : {1, 2, 3}) {
    const Bytes framed = Framed(bench::MakeQuery("a.example.test", id, false));
    burst.insert(burst.end(), framed.begin(), framed.end());
  }
  ASSERT_TRUE(client->session.Write(burst));
  client->Flush();
  for (int i = 0; i < 50 && sink_.queries.size() < 3; ++i) Pump(1);
  ASSERT_EQ(sink_.queries.size(), 3u);
  EXPECT_EQ(sink_.clients[0].transport, Transport::kTls);
  EXPECT_EQ(stats_.tls_handshakes.load(), 1u);
  EXPECT_EQ(stats_.tls_queries.load(), 3u);
  // Answered 3, 1, 2: they leave in that order.
  for (size_t q : {2u, 0u, 1u}) {
    EchoAnswer(q);
  }
  const std::vector<Bytes> answers = ReadAnswers(*client, 3);
  ASSERT_EQ(answers.size(), 3u);
  EXPECT_EQ(answers[0], sink_.queries[2]);
  EXPECT_EQ(answers[1], sink_.queries[0]);
  EXPECT_EQ(answers[2], sink_.queries[1]);
  EXPECT_EQ(room_->open_clients(), 1u);
  EXPECT_EQ(stats_.tls_clients.load(), 1u);
}

// Answers that outgrow the send buffer in one flush (80 KiB of them: the
// answer buffer holds 96, the ciphertext buffers 64 each) are encrypted a
// buffer at a time, send after send: all arrive, in order, and the slots'
// ciphertext buffers are what they were at start.
TEST_P(TlsClientsTest, AnswersBeyondTheSendBufferLeaveInPiecesWithoutGrowingIt) {
  Open();
  auto client = Connect();
  Handshake({client.get()});
  ASSERT_TRUE(client->done) << client->session.error();
  const size_t reserved = room_->ciphertext_capacity();
  constexpr size_t kQueries = 40;
  constexpr size_t kAnswerBytes = 2000;
  Bytes burst;
  for (uint16_t id = 1; id <= kQueries; ++id) {
    const Bytes framed = Framed(bench::MakeQuery("a.example.test", id, false));
    burst.insert(burst.end(), framed.begin(), framed.end());
  }
  ASSERT_TRUE(client->session.Write(burst));
  client->Flush();
  for (int i = 0; i < 50 && sink_.queries.size() < kQueries; ++i) Pump(1);
  ASSERT_EQ(sink_.queries.size(), kQueries);
  std::vector<Bytes> expected;
  for (size_t q = 0; q < kQueries; ++q) {
    Bytes answer(kAnswerBytes, static_cast<uint8_t>(q));
    std::copy_n(sink_.queries[q].begin(), 2, answer.begin());  // the query's ID
    std::span<uint8_t> space = room_->BeginReply(sink_.clients[q], answer.size());
    ASSERT_EQ(space.size(), answer.size());
    std::copy(answer.begin(), answer.end(), space.begin());
    room_->CommitReply(sink_.clients[q], answer.size());
    room_->QueryDone(sink_.clients[q]);
    expected.push_back(std::move(answer));
  }
  const std::vector<Bytes> answers = ReadAnswers(*client, kQueries);
  ASSERT_EQ(answers.size(), kQueries);
  for (size_t q = 0; q < kQueries; ++q) EXPECT_TRUE(answers[q] == expected[q]) << "answer " << q;
  EXPECT_EQ(room_->ciphertext_capacity(), reserved);
  EXPECT_EQ(room_->open_clients(), 1u);
}

// A client paused at its pipelining limit, when intake stops (shutdown):
// an answer frees a slot, but the queries still buffered are not read, as
// the TCP room reads none once it stops.
TEST_P(TlsClientsTest, AnAnswerAfterStopIntakeReadsNoFurtherQueries) {
  auto client = ConnectWithQueryLimit(2);
  ASSERT_TRUE(client->done) << client->session.error();
  for (uint16_t id : {1, 2, 3, 4}) {
    ASSERT_TRUE(client->session.Write(Framed(bench::MakeQuery("a.example.test", id, false))));
  }
  client->Flush();
  for (int i = 0; i < 50 && sink_.queries.size() < 2; ++i) Pump(1);
  Pump(3);
  ASSERT_EQ(sink_.queries.size(), 2u) << "paused at the limit";
  room_->StopIntake();
  EchoAnswer(0);
  Pump(3);
  EXPECT_EQ(sink_.queries.size(), 2u) << "intake stopped: the third query is not read";
  room_->QueryDone(sink_.clients[1]);
  Pump(3);
  EXPECT_EQ(sink_.queries.size(), 2u);
}

// One TLS record can hold many queries: the limit holds per query, and the
// queries held back are handed up, in order, as answers make room (nothing
// more needs to arrive).
TEST_P(TlsClientsTest, ThePipeliningLimitHoldsWithinOneRecord) {
  auto client = ConnectWithQueryLimit(2);
  ASSERT_TRUE(client->done) << client->session.error();
  Bytes burst;
  for (uint16_t id = 1; id <= 5; ++id) {
    const Bytes framed = Framed(bench::MakeQuery("a.example.test", id, false));
    burst.insert(burst.end(), framed.begin(), framed.end());
  }
  ASSERT_TRUE(client->session.Write(burst));  // one record
  client->Flush();
  for (int i = 0; i < 50 && sink_.queries.size() < 2; ++i) Pump(1);
  Pump(3);
  ASSERT_EQ(sink_.queries.size(), 2u) << "five in one record, two allowed in flight";
  EchoAnswer(0);
  EXPECT_EQ(sink_.queries.size(), 3u) << "one answer, one more query handed up";
  EchoAnswer(1);
  EchoAnswer(2);
  Pump(3);
  ASSERT_EQ(sink_.queries.size(), 5u);
  for (uint16_t i = 0; i < 5; ++i) {
    EXPECT_EQ(sink_.queries[i][1], i + 1) << "in the order sent";
  }
  EchoAnswer(3);
  EchoAnswer(4);
  EXPECT_EQ(ReadAnswers(*client, 5).size(), 5u);
  EXPECT_EQ(room_->open_clients(), 1u);
}

TEST_P(TlsClientsTest, HandshakesBeyondTheIterationBudgetWaitTheirTurn) {
  TlsLimits limits;
  limits.handshake_steps_per_iteration = 1;
  Open(limits);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 4; ++i) clients.push_back(Connect());
  Pump(3);  // all accepted
  // Every ClientHello in before the next iteration: one is served, the rest wait.
  for (auto& c : clients) c->Step();
  Pump(1);
  EXPECT_GE(stats_.tls_handshake_deferred.load(), 1u);
  Handshake({clients[0].get(), clients[1].get(), clients[2].get(), clients[3].get()});
  for (auto& c : clients) EXPECT_TRUE(c->done) << c->session.error();
  EXPECT_EQ(stats_.tls_handshakes.load(), 4u);
}

TEST_P(TlsClientsTest, AtTheHandshakeCapAcceptingPausesAndStalledOnesAreEvicted) {
  TlsLimits limits;
  limits.max_handshakes = 2;
  Open(limits);
  std::vector<io::UniqueFd> silent;
  auto connect_silent = [&] {
    silent.emplace_back(socket(AF_INET, SOCK_STREAM, 0));
    ASSERT_EQ(connect(silent.back().get(), listen_[0].address.get(), listen_[0].address.length), 0);
  };
  connect_silent();
  connect_silent();
  Pump(5);
  EXPECT_EQ(room_->handshakes_in_progress(), 2);
  EXPECT_GE(stats_.tls_accept_paused.load(), 1u);
  connect_silent();  // waits in the backlog
  Pump(5);
  EXPECT_EQ(stats_.tls_accepted.load(), 2u);
  EXPECT_EQ(room_->handshakes_in_progress(), 2);
  // Past kStalledHandshake the oldest make room: the third gets in.
  usleep(static_cast<useconds_t>(1100 * 1000));
  Pump(5);
  EXPECT_GE(stats_.tls_handshake_evicted.load(), 1u);
  EXPECT_EQ(stats_.tls_accepted.load(), 3u);
  // A real client still completes its handshake.
  auto client = Connect();
  usleep(static_cast<useconds_t>(1100 * 1000));
  Handshake({client.get()});
  EXPECT_TRUE(client->done) << client->session.error();
}

// At the cap, a connection that has sent nothing for kSilentHandshake
// makes room before the 1 s stall rule, and one whose ClientHello came in
// (older, but heard from) is kept.
TEST_P(TlsClientsTest, AtTheHandshakeCapSilentConnectionsMakeRoomFirst) {
  TlsLimits limits;
  limits.max_handshakes = 2;
  Open(limits);
  auto heard = Connect();
  Pump(3);
  heard->Step();  // its ClientHello; the handshake is left unfinished
  Pump(3);
  std::vector<io::UniqueFd> silent;
  for (int i = 0; i < 2; ++i) {
    silent.emplace_back(socket(AF_INET, SOCK_STREAM, 0));
    ASSERT_EQ(connect(silent.back().get(), listen_[0].address.get(), listen_[0].address.length),
              0);
    Pump(3);
  }
  EXPECT_EQ(stats_.tls_accepted.load(), 2u) << "the second silent one waits in the backlog";
  usleep(static_cast<useconds_t>(300 * 1000));  // past kSilentHandshake, short of a second
  Pump(5);
  EXPECT_EQ(stats_.tls_handshake_evicted.load(), 1u);
  EXPECT_EQ(stats_.tls_accepted.load(), 3u);
  Handshake({heard.get()});
  EXPECT_TRUE(heard->done) << "the heard one was kept: " << heard->session.error();
}

TEST_P(TlsClientsTest, MutualTlsRefusalsAreCounted) {
  Open({}, "ca.pem");
  auto client = Connect();  // no client certificate
  Handshake({client.get()});  // a TLS 1.3 client may think it is done: the server decides last
  EXPECT_EQ(stats_.tls_client_cert_refused.load(), 1u);
  EXPECT_EQ(stats_.tls_handshakes.load(), 0u);
  Pump(5);
  EXPECT_EQ(room_->open_clients(), 0u);
}

TEST_P(TlsClientsTest, AStaleClientRefReachesNothing) {
  Open();
  auto client = Connect();
  Handshake({client.get()});
  ASSERT_TRUE(client->done);
  ASSERT_TRUE(client->session.Write(Framed(bench::MakeQuery("a.example.test", 7, false))));
  client->Flush();
  for (int i = 0; i < 50 && sink_.queries.empty(); ++i) Pump(1);
  ASSERT_EQ(sink_.queries.size(), 1u);
  client.reset();  // the client goes away with its query in flight
  for (int i = 0; i < 20 && room_->open_clients() > 0; ++i) Pump(1);
  EXPECT_EQ(room_->open_clients(), 0u);
  EXPECT_TRUE(room_->BeginReply(sink_.clients[0], 100).empty());
  room_->QueryDone(sink_.clients[0]);  // harmless
}

// The DoH seam: an https listener's connections speak the factory's protocol,
// its stream ids reach the forwarder in ClientRef::stream and come back.
TEST_P(TlsClientsTest, AnHttpsListenerRunsTheFactorysProtocolWithStreamIds) {
  auto client = ConnectHttps();
  ASSERT_TRUE(client->done);
  Bytes burst = Framed(bench::MakeQuery("a.example.test", 1, false));
  const Bytes second = Framed(bench::MakeQuery("b.example.test", 2, false));
  burst.insert(burst.end(), second.begin(), second.end());
  ASSERT_TRUE(client->session.Write(burst));
  client->Flush();
  for (int i = 0; i < 50 && sink_.queries.size() < 2; ++i) Pump(1);
  ASSERT_EQ(sink_.queries.size(), 2u);
  EXPECT_EQ(sink_.clients[0].transport, Transport::kTls);
  EXPECT_EQ(sink_.clients[0].stream, 1u);
  EXPECT_EQ(sink_.clients[1].stream, 3u);
  for (size_t q : {1u, 0u}) {
    EchoAnswer(q);
  }
  const std::vector<Bytes> answers = ReadAnswers(*client, 2);
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(answers[0][0], 3);  // stream 3 answered first
  EXPECT_EQ(answers[1][0], 1);
}

// A client that says it is leaving (HTTP/2 GOAWAY, RFC 9113 §6.8) still
// gets the answers it asked for; then the room closes its connection.
TEST_P(TlsClientsTest, ALeavingClientGetsItsAnswersThenIsClosed) {
  auto client = ConnectHttps();
  ASSERT_TRUE(client->done);
  Bytes burst = Framed(bench::MakeQuery("a.example.test", 1, false));
  const Bytes leaving = Framed(Bytes{FakeHttpsProtocol::kLeaving});
  burst.insert(burst.end(), leaving.begin(), leaving.end());
  ASSERT_TRUE(client->session.Write(burst));
  client->Flush();
  for (int i = 0; i < 50 && sink_.queries.size() < 1; ++i) Pump(1);
  ASSERT_EQ(sink_.queries.size(), 1u);
  Pump(3);
  EXPECT_EQ(room_->open_clients(), 1u) << "closed with its query in flight";
  EchoAnswer(0);
  const std::vector<Bytes> answers = ReadAnswers(*client, 1);
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers[0][0], 1);
  EXPECT_TRUE(ClosedByRoom(*client)) << "still open once answered";
  EXPECT_EQ(room_->open_clients(), 0u);
}

// A protocol error: what the protocol still has to say (HTTP/2's GOAWAY
// naming the error, RFC 9113 §5.4.1) leaves before the room closes.
TEST_P(TlsClientsTest, AProtocolErrorIsToldBeforeTheClose) {
  auto client = ConnectHttps();
  ASSERT_TRUE(client->done);
  ASSERT_TRUE(client->session.Write(Framed(Bytes{FakeHttpsProtocol::kBroken})));
  client->Flush();
  const std::vector<Bytes> said = ReadAnswers(*client, 1);
  ASSERT_EQ(said.size(), 1u) << "closed without a word";
  EXPECT_EQ(said[0], Bytes{FakeHttpsProtocol::kBroken});
  EXPECT_TRUE(ClosedByRoom(*client));
  EXPECT_EQ(room_->open_clients(), 0u);
  EXPECT_EQ(stats_.tls_bad_frame.load(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Backends, TlsClientsTest,
                         ::testing::Values(io::IoBackend::kUring, io::IoBackend::kEpoll),
                         io::BackendName);

}  // namespace
}  // namespace dotproxy::frontend
