// UpstreamPool with plain upstreams (udp://, tcp://) against fake upstreams
// on real loopback sockets that this test drives by hand: what goes out
// (datagrams with EDNS 1232 and no stream options; framed, pipelined
// queries on one TCP connection), which answers are accepted (only from the
// upstream, with a bound ID), and the TC=1 fallback: a truncated UDP answer
// is asked again over TCP to the same address and port, and that answer is
// the one the sink gets. The forwarder is a recording sink.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "bench/common/wire.h"
#include "dotproxy/dns/edns.h"
#include "dotproxy/upstream/pool.h"
#include "tests/upstream/pool_fixture.h"

namespace dotproxy::upstream {
namespace {

using std::chrono::milliseconds;

class RecordingSink final : public AnswerSink {
 public:
  Outcome OnAnswer(uint32_t token, std::span<uint8_t> answer, const dns::ResponseInfo&,
                   int*) override {
    answered.push_back(token);
    answers.emplace_back(answer.begin(), answer.end());
    return {Verdict::kAccepted, {}};
  }
  void OnQueryLost(uint32_t token, int, bool) override { lost.push_back(token); }
  std::vector<uint32_t> answered, lost;
  std::vector<std::vector<uint8_t>> answers;
};

io::SocketAddress Loopback(uint16_t port) {
  io::SocketAddress address;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address.storage);
  v4->sin_family = AF_INET;
  v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  v4->sin_port = htons(port);
  address.length = sizeof(sockaddr_in);
  return address;
}

// A plain DNS server on one loopback port, UDP and TCP, driven by the test.
struct FakeServer {
  io::UniqueFd udp, tcp, stream;
  io::SocketAddress address;

  bool Open() {
    for (int attempt = 0; attempt < 20; ++attempt) {
      tcp = io::UniqueFd(socket(AF_INET, SOCK_STREAM, 0));
      io::SocketAddress any = Loopback(0);
      if (bind(tcp.get(), any.get(), any.length) != 0 || listen(tcp.get(), 8) != 0) return false;
      socklen_t length = sizeof(sockaddr_in);
      getsockname(tcp.get(), reinterpret_cast<sockaddr*>(&address.storage), &length);
      address.length = length;
      udp = io::UniqueFd(socket(AF_INET, SOCK_DGRAM, 0));
      if (bind(udp.get(), address.get(), address.length) == 0) return true;
    }
    return false;
  }
  // One datagram (bounded wait); its sender in `from`.
  std::vector<uint8_t> ReceiveDatagram(sockaddr_in& from) {
    pollfd p{udp.get(), POLLIN, 0};
    if (poll(&p, 1, 2000) != 1) return {};
    std::vector<uint8_t> buffer(4096);
    socklen_t length = sizeof(from);
    const ssize_t n = recvfrom(udp.get(), buffer.data(), buffer.size(), 0,
                               reinterpret_cast<sockaddr*>(&from), &length);
    buffer.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return buffer;
  }
  void SendDatagram(const std::vector<uint8_t>& wire, const sockaddr_in& to) {
    sendto(udp.get(), wire.data(), wire.size(), 0, reinterpret_cast<const sockaddr*>(&to),
           sizeof(to));
  }
  bool Accept() {
    pollfd p{tcp.get(), POLLIN, 0};
    if (poll(&p, 1, 2000) != 1) return false;
    stream = io::UniqueFd(accept(tcp.get(), nullptr, nullptr));
    return static_cast<bool>(stream);
  }
  // One length-prefixed message from the accepted stream (bounded wait).
  std::vector<uint8_t> ReceiveFramed() {
    auto read_exact = [&](uint8_t* into, size_t n) {
      size_t got = 0;
      while (got < n) {
        pollfd p{stream.get(), POLLIN, 0};
        if (poll(&p, 1, 2000) != 1) return false;
        const ssize_t r = read(stream.get(), into + got, n - got);
        if (r <= 0) return false;
        got += static_cast<size_t>(r);
      }
      return true;
    };
    uint8_t prefix[2];
    if (!read_exact(prefix, 2)) return {};
    std::vector<uint8_t> message(size_t{prefix[0]} << 8 | prefix[1]);
    if (!read_exact(message.data(), message.size())) return {};
    return message;
  }
  void SendFramed(const std::vector<uint8_t>& wire) {
    std::vector<uint8_t> framed{static_cast<uint8_t>(wire.size() >> 8),
                                static_cast<uint8_t>(wire.size())};
    framed.insert(framed.end(), wire.begin(), wire.end());
    ASSERT_EQ(write(stream.get(), framed.data(), framed.size()),
              static_cast<ssize_t>(framed.size()));
  }
};

// The OPT RR's UDP size and whether it carries option `code`.
struct OptView {
  bool present = false;
  uint16_t udp_size = 0;
  bool Has(uint16_t code) const {
    for (uint16_t c : codes) {
      if (c == code) return true;
    }
    return false;
  }
  std::vector<uint16_t> codes;
};

OptView ReadOpt(const std::vector<uint8_t>& wire) {
  OptView view;
  dns::QueryInfo info;
  if (dns::ParseQuery(wire, info) != dns::QueryParse::kOk || !info.has_edns) return view;
  const uint8_t* opt = wire.data() + info.opt_offset;
  view.present = true;
  view.udp_size = dns::ReadU16(opt + 3);
  const size_t rdlength = dns::ReadU16(opt + 9);
  for (size_t at = 0; at + 4 <= rdlength;) {
    view.codes.push_back(dns::ReadU16(opt + 11 + at));
    at += 4 + dns::ReadU16(opt + 11 + at + 2);
  }
  return view;
}

class PlainUpstreamTest : public PoolFixture {
 protected:
  void SetUp() override {
    PoolFixture::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_TRUE(server_.Open());
  }

  void Make(config::Transport transport, size_t connections = 2) {
    config::UpstreamConfig upstream;
    upstream.address = server_.address;
    upstream.transport = transport;
    upstream.spec = "plain";
    upstreams_ = {upstream};
    settings_.max_inflight_per_connection = 10;
    settings_.max_connections_per_upstream = connections;
    MakePool(sink_, 3);
  }

  void Pump(int rounds = 3) { PoolFixture::Pump(rounds); }

  // The upstream form of a query for `name`, as the forwarder builds it
  // (EDNS 4096 from the client, keepalive and padding added).
  bool Send(uint32_t token, const std::string& name, Binding& binding) {
    std::vector<uint8_t> client = bench::MakeQuery(name, 0, true);
    dns::WriteU16(client.data() + client.size() - 11 + 3, 4096);
    dns::QueryInfo info;
    EXPECT_EQ(dns::ParseQuery(client, info), dns::QueryParse::kOk);
    query_.assign(client.size() + dns::kUpstreamQueryGrowth, 0);
    const size_t length =
        dns::BuildUpstreamQuery(client, info, settings_.query_options, query_);
    EXPECT_GT(length, 0u);
    query_.resize(length);
    return pool_->Send(token, query_, -1, false, binding);
  }

  RecordingSink sink_;
  FakeServer server_;
};

TEST_P(PlainUpstreamTest, UdpQueryIsOneDatagramWithEdns1232AndNoStreamOptions) {
  Make(config::Transport::kUdp);
  Binding binding;
  ASSERT_TRUE(Send(7, "u.example", binding));
  EXPECT_TRUE(ReadOpt(query_).Has(dns::kOptionTcpKeepalive));  // the stream form has it
  Pump();
  sockaddr_in from{};
  const std::vector<uint8_t> sent = server_.ReceiveDatagram(from);
  ASSERT_GE(sent.size(), dns::kHeaderSize);
  EXPECT_EQ(dns::ReadU16(sent.data()), binding.id);
  const OptView opt = ReadOpt(sent);
  ASSERT_TRUE(opt.present);
  EXPECT_EQ(opt.udp_size, kUpstreamUdpSize);
  EXPECT_FALSE(opt.Has(dns::kOptionTcpKeepalive));  // RFC 7828 §3.2.1: never over UDP
  EXPECT_FALSE(opt.Has(dns::kOptionPadding));
  EXPECT_LT(sent.size(), query_.size());
  EXPECT_EQ(upstream_stats_[0].queries.load(), 1u);
}

TEST_P(PlainUpstreamTest, UdpAnswerIsAcceptedOnlyFromTheUpstreamWithABoundId) {
  Make(config::Transport::kUdp);
  Binding binding;
  ASSERT_TRUE(Send(7, "u.example", binding));
  Pump();
  sockaddr_in from{};
  ASSERT_FALSE(server_.ReceiveDatagram(from).empty());
  // From another port of the same host: the connected socket never sees it.
  io::UniqueFd stranger(socket(AF_INET, SOCK_DGRAM, 0));
  const std::vector<uint8_t> answer = bench::MakeAnswer("u.example", binding.id, true);
  sendto(stranger.get(), answer.data(), answer.size(), 0, reinterpret_cast<sockaddr*>(&from),
         sizeof(from));
  // From the upstream, but an ID nobody asked with.
  server_.SendDatagram(bench::MakeAnswer("u.example", binding.id ^ 0x5a5a, true), from);
  for (int i = 0; i < 20 && stats_.upstream_unknown_id.load() == 0; ++i) Pump(1);
  EXPECT_EQ(stats_.upstream_unknown_id.load(), 1u);
  EXPECT_TRUE(sink_.answered.empty());
  server_.SendDatagram(answer, from);
  for (int i = 0; i < 20 && sink_.answered.empty(); ++i) Pump(1);
  ASSERT_EQ(sink_.answered, (std::vector<uint32_t>{7}));
  EXPECT_EQ(upstream_stats_[0].answers.load(), 1u);
  EXPECT_EQ(pool_->health().get(0).in_flight, 0u);
}

TEST_P(PlainUpstreamTest, TruncatedUdpAnswerIsAskedAgainOverTcpToTheSameUpstream) {
  Make(config::Transport::kUdp);
  Binding binding;
  ASSERT_TRUE(Send(9, "big.example", binding));
  Pump();
  sockaddr_in from{};
  const std::vector<uint8_t> sent = server_.ReceiveDatagram(from);
  ASSERT_FALSE(sent.empty());
  std::vector<uint8_t> truncated = bench::MakeAnswer("big.example", binding.id, true);
  truncated[2] |= 0x02;  // TC=1
  server_.SendDatagram(truncated, from);
  Pump();
  ASSERT_TRUE(server_.Accept());  // the fallback connection, to the same port
  Pump();
  const std::vector<uint8_t> again = server_.ReceiveFramed();
  ASSERT_GE(again.size(), dns::kHeaderSize);
  // The same question, under the TCP connection's own ID.
  EXPECT_TRUE(std::equal(again.begin() + 2, again.end(), sent.begin() + 2, sent.end()));
  EXPECT_TRUE(sink_.answered.empty());  // the truncated one never reaches the client
  EXPECT_EQ(stats_.tc_fallbacks.load(), 1u);
  EXPECT_EQ(upstream_stats_[0].tc_fallbacks.load(), 1u);
  std::vector<uint8_t> full = bench::MakeAnswer("big.example", dns::ReadU16(again.data()), true);
  server_.SendFramed(full);
  for (int i = 0; i < 20 && sink_.answered.empty(); ++i) Pump(1);
  ASSERT_EQ(sink_.answered, (std::vector<uint32_t>{9}));
  EXPECT_FALSE(dns::header::IsTruncated(sink_.answers[0].data()));
  EXPECT_EQ(pool_->health().get(0).in_flight, 0u);
  // A late duplicate of the UDP answer finds nothing bound.
  server_.SendDatagram(truncated, from);
  for (int i = 0; i < 20 && stats_.upstream_unknown_id.load() == 0; ++i) Pump(1);
  EXPECT_EQ(stats_.upstream_unknown_id.load(), 1u);
  EXPECT_EQ(sink_.answered.size(), 1u);
}

// A UDP socket that fails takes its queries with it; their TCP retries must
// not stay bound on the fallback connection, waiting for answers nobody
// wants (they would hold IDs for as long as the connection lives).
TEST_P(PlainUpstreamTest, ClosedUdpSocketFreesItsQueriesTcpRetries) {
  Make(config::Transport::kUdp, /*connections=*/1);
  Binding binding;
  ASSERT_TRUE(Send(9, "big.example", binding));
  Pump();
  sockaddr_in from{};
  ASSERT_FALSE(server_.ReceiveDatagram(from).empty());
  std::vector<uint8_t> truncated = bench::MakeAnswer("big.example", binding.id, true);
  truncated[2] |= 0x02;  // TC=1
  server_.SendDatagram(truncated, from);
  Pump();
  ASSERT_TRUE(server_.Accept());
  Pump();
  ASSERT_FALSE(server_.ReceiveFramed().empty());  // the retry, left unanswered
  const Connection* fallback = nullptr;
  for (size_t i = 0; i < pool_->connection_count(); ++i) {
    if (pool_->connection(i).kind() == ConnectionKind::kTcp) fallback = &pool_->connection(i);
  }
  ASSERT_NE(fallback, nullptr);
  EXPECT_EQ(fallback->in_flight(), 1u);
  // Nobody serves UDP there now: the next datagram draws an ICMP port
  // unreachable, and the socket closes (ECONNREFUSED).
  server_.udp.reset();
  Binding second;
  ASSERT_TRUE(Send(10, "other.example", second));
  for (int i = 0; i < 20 && sink_.lost.size() < 2; ++i) Pump(1);
  std::sort(sink_.lost.begin(), sink_.lost.end());
  EXPECT_EQ(sink_.lost, (std::vector<uint32_t>{9, 10}));
  EXPECT_EQ(fallback->in_flight(), 0u);
  EXPECT_TRUE(fallback->alive());  // the TCP connection itself stays
  EXPECT_TRUE(sink_.answered.empty());
}

TEST_P(PlainUpstreamTest, TcpQueriesArePipelinedOnOneConnectionAndMatchedOutOfOrder) {
  Make(config::Transport::kTcp);
  ASSERT_TRUE(server_.Accept());
  Pump();
  std::vector<Binding> bindings(3);
  const std::vector<std::string> names = {"a.example", "b.example", "c.example"};
  for (uint32_t token = 0; token < 3; ++token) ASSERT_TRUE(Send(token, names[token], bindings[token]));
  EXPECT_EQ(bindings[1].connection, bindings[0].connection);
  Pump();
  std::vector<std::vector<uint8_t>> received;
  for (int i = 0; i < 3; ++i) received.push_back(server_.ReceiveFramed());
  for (const auto& query : received) {
    ASSERT_GE(query.size(), dns::kHeaderSize);
    EXPECT_TRUE(ReadOpt(query).Has(dns::kOptionTcpKeepalive));  // a stream: the query as built
  }
  // Answered last to first.
  for (int i = 2; i >= 0; --i) {
    server_.SendFramed(bench::MakeAnswer(names[i], dns::ReadU16(received[i].data()), true));
  }
  for (int i = 0; i < 20 && sink_.answered.size() < 3; ++i) Pump(1);
  EXPECT_EQ(sink_.answered, (std::vector<uint32_t>{2, 1, 0}));
  EXPECT_EQ(upstream_stats_[0].connection_opens.load(), 1u);
  EXPECT_EQ(pool_->health().get(0).in_flight, 0u);
}

TEST_P(PlainUpstreamTest, TcpUpstreamClosingLosesItsQueriesAndReconnectsOnDemand) {
  Make(config::Transport::kTcp);
  ASSERT_TRUE(server_.Accept());
  Pump();
  Binding binding;
  ASSERT_TRUE(Send(4, "a.example", binding));
  Pump();
  ASSERT_FALSE(server_.ReceiveFramed().empty());
  server_.stream.reset();  // the upstream hangs up with the query unanswered
  for (int i = 0; i < 20 && sink_.lost.empty(); ++i) Pump(1);
  EXPECT_EQ(sink_.lost, (std::vector<uint32_t>{4}));
  Binding again;
  ASSERT_TRUE(Send(5, "a.example", again));
  Pump();  // submits the connect
  ASSERT_TRUE(server_.Accept());
  Pump();
  const std::vector<uint8_t> query = server_.ReceiveFramed();
  ASSERT_GE(query.size(), dns::kHeaderSize);
  server_.SendFramed(bench::MakeAnswer("a.example", dns::ReadU16(query.data()), true));
  for (int i = 0; i < 20 && sink_.answered.empty(); ++i) Pump(1);
  EXPECT_EQ(sink_.answered, (std::vector<uint32_t>{5}));
}

INSTANTIATE_TEST_SUITE_P(Backends, PlainUpstreamTest,
                         ::testing::Values(io::IoBackend::kUring, io::IoBackend::kEpoll),
                         io::BackendName);

}  // namespace
}  // namespace dotproxy::upstream
