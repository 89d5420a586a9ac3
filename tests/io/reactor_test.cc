// The reactor against the real kernel: operations come back as completions
// carrying the UserData they were issued with (op, index, generation), so
// the shard can route each to its room. Loopback and socketpairs only.

#include "dotproxy/io/reactor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

#include "dotproxy/io/socket.h"
#include "dotproxy/io/user_data.h"
#include "tests/io/test_reactor.h"

namespace dotproxy::io {
namespace {

using std::chrono::milliseconds;

TEST(UserDataTest, PacksAndUnpacksEveryField) {
  for (const UserData data : {UserData{Op::kUdpRecv, 0, 0}, UserData{Op::kUpstreamSend, kMaxIndex, 0xffffffffu},
                              UserData{Op::kClientRecv, 12345, 7}}) {
    const UserData back = UserData::Unpack(data.Pack());
    EXPECT_EQ(back.op, data.op);
    EXPECT_EQ(back.index, data.index);
    EXPECT_EQ(back.generation, data.generation);
  }
}

class ReactorTest : public ::testing::TestWithParam<IoBackend> {
 protected:
  std::unique_ptr<Reactor> MakeReactor() { return MakeTestReactor(GetParam()); }
};

// Waits (bounded) until `want` completions arrived.
std::vector<Completion> Collect(Reactor& reactor, size_t want) {
  std::vector<Completion> got;
  for (int round = 0; round < 50 && got.size() < want; ++round) {
    EXPECT_TRUE(reactor.SubmitAndWait(milliseconds(20)).ok());
    reactor.Reap([&](const Completion& c) { got.push_back(c); });
  }
  return got;
}

TEST_P(ReactorTest, StreamReceiveAndSendCompleteWithTheirUserData) {
  auto reactor = MakeReactor();
  if (reactor == nullptr) GTEST_SKIP() << "backend unavailable";
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair), 0);
  UniqueFd a(pair[0]), b(pair[1]);

  uint8_t into[16] = {};
  reactor->Recv(a.get(), into, {Op::kClientRecv, 77, 3});
  const uint8_t hello[] = {'h', 'i', '!'};
  reactor->Send(b.get(), hello, {Op::kClientSend, 78, 4});
  const std::vector<Completion> got = Collect(*reactor, 2);
  ASSERT_EQ(got.size(), 2u);
  bool saw_recv = false, saw_send = false;
  for (const Completion& c : got) {
    if (c.data.op == Op::kClientRecv) {
      saw_recv = true;
      EXPECT_EQ(c.data.index, 77u);
      EXPECT_EQ(c.data.generation, 3u);
      EXPECT_EQ(c.result, 3);
      EXPECT_EQ(std::memcmp(into, hello, 3), 0);
    } else {
      saw_send = true;
      EXPECT_EQ(c.data.op, Op::kClientSend);
      EXPECT_EQ(c.data.index, 78u);
      EXPECT_EQ(c.data.generation, 4u);
      EXPECT_EQ(c.result, 3);
    }
  }
  EXPECT_TRUE(saw_recv && saw_send);
}

TEST_P(ReactorTest, DatagramIntakeYieldsPayloadAndSourceAndStaysArmed) {
  auto reactor = MakeReactor();
  if (reactor == nullptr) GTEST_SKIP() << "backend unavailable";
  SocketAddress address;  // 127.0.0.1, port 0: the kernel picks one
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address.storage);
  v4->sin_family = AF_INET;
  v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.length = sizeof(sockaddr_in);
  auto listener = OpenUdpListener(address, 1 << 16);
  ASSERT_TRUE(listener.ok());
  sockaddr_in bound{};
  socklen_t bound_length = sizeof(bound);
  ASSERT_EQ(getsockname(listener->get(), reinterpret_cast<sockaddr*>(&bound), &bound_length), 0);
  reactor->ReceiveDatagrams(listener->get(), {Op::kUdpRecv, 5, 0});
  ASSERT_TRUE(reactor->Submit().ok());

  UniqueFd sender(socket(AF_INET, SOCK_DGRAM, 0));
  ASSERT_TRUE(sender);
  for (const char* text : {"first", "second"}) {
    ASSERT_EQ(sendto(sender.get(), text, std::strlen(text), 0,
                     reinterpret_cast<const sockaddr*>(&bound), sizeof(bound)),
              static_cast<ssize_t>(std::strlen(text)));
  }
  const std::vector<Completion> got = Collect(*reactor, 2);
  ASSERT_EQ(got.size(), 2u);
  std::vector<std::string> payloads;
  for (const Completion& c : got) {
    EXPECT_EQ(c.data.op, Op::kUdpRecv);
    EXPECT_EQ(c.data.index, 5u);
    EXPECT_TRUE(c.more);  // multishot still armed
    Datagram datagram;
    ASSERT_TRUE(reactor->ReadDatagram(c, datagram));
    EXPECT_FALSE(datagram.truncated);
    payloads.emplace_back(reinterpret_cast<const char*>(datagram.payload.data()),
                          datagram.payload.size());
    ASSERT_NE(datagram.source, nullptr);
    EXPECT_EQ(datagram.source->sa_family, AF_INET);
    EXPECT_EQ(reinterpret_cast<const sockaddr_in*>(datagram.source)->sin_addr.s_addr,
              htonl(INADDR_LOOPBACK));
    reactor->RecycleDatagram(datagram.buffer_id);
  }
  EXPECT_EQ(payloads, (std::vector<std::string>{"first", "second"}));
  reactor->CancelFd(listener->get());
  Collect(*reactor, 2);  // the cancel and the ended multishot
}

// The kernel's receive stamp and drop count reach the Datagram: a small
// receive buffer is overfilled before the receive is armed, and what is
// read after the overflow carries the socket's drop count.
TEST_P(ReactorTest, DatagramsCarryTheReceiveStampAndTheSocketsDropCount) {
  auto reactor = MakeReactor();
  if (reactor == nullptr) GTEST_SKIP() << "backend unavailable";
  SocketAddress address;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address.storage);
  v4->sin_family = AF_INET;
  v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.length = sizeof(sockaddr_in);
  auto listener = OpenUdpListener(address, 0);
  ASSERT_TRUE(listener.ok());
  SetReceiveBuffer(listener->get(), 4096);  // a handful of datagrams
  sockaddr_in bound{};
  socklen_t bound_length = sizeof(bound);
  ASSERT_EQ(getsockname(listener->get(), reinterpret_cast<sockaddr*>(&bound), &bound_length), 0);
  UniqueFd sender(socket(AF_INET, SOCK_DGRAM, 0));
  ASSERT_TRUE(sender);
  timespec before;
  clock_gettime(CLOCK_REALTIME, &before);
  const char text[] = "0123456789012345678901234567890123456789";
  for (int i = 0; i < 64; ++i) {
    sendto(sender.get(), text, sizeof(text), 0, reinterpret_cast<const sockaddr*>(&bound),
           sizeof(bound));
  }
  reactor->ReceiveDatagrams(listener->get(), {Op::kUdpRecv, 6, 0});
  ASSERT_TRUE(reactor->Submit().ok());
  const std::vector<Completion> got = Collect(*reactor, 2);
  ASSERT_GE(got.size(), 2u);
  Datagram datagram;
  ASSERT_TRUE(reactor->ReadDatagram(got[0], datagram));
  EXPECT_GE(datagram.received_realtime_ns, int64_t{before.tv_sec} * 1'000'000'000 + before.tv_nsec);
  reactor->RecycleDatagram(datagram.buffer_id);
  // The kernel took a few and dropped the rest; it counts drops as they
  // happen, and each datagram queued after the first drop carries the count.
  // Send one more now that the buffer has room: it carries them all.
  for (size_t i = 1; i < got.size(); ++i) {
    if (reactor->ReadDatagram(got[i], datagram)) reactor->RecycleDatagram(datagram.buffer_id);
  }
  ASSERT_EQ(sendto(sender.get(), text, sizeof(text), 0, reinterpret_cast<const sockaddr*>(&bound),
                   sizeof(bound)),
            static_cast<ssize_t>(sizeof(text)));
  uint32_t drops = 0;
  for (int round = 0; round < 20 && drops == 0; ++round) {
    for (const Completion& c : Collect(*reactor, 1)) {
      if (reactor->ReadDatagram(c, datagram)) {
        drops = std::max(drops, datagram.socket_drops);
        reactor->RecycleDatagram(datagram.buffer_id);
      }
    }
  }
  EXPECT_GT(drops, 0u) << "SO_RXQ_OVFL count not delivered";
  EXPECT_LT(drops, 64u);
  reactor->CancelFd(listener->get());
  Collect(*reactor, 2);
}

TEST_P(ReactorTest, CancelEndsAPendingReceiveWithEcanceled) {
  auto reactor = MakeReactor();
  if (reactor == nullptr) GTEST_SKIP() << "backend unavailable";
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair), 0);
  UniqueFd a(pair[0]), b(pair[1]);
  uint8_t into[16];
  reactor->Recv(a.get(), into, {Op::kClientRecv, 9, 1});
  Collect(*reactor, 0);  // armed, nothing to read
  reactor->CancelFd(a.get());
  bool cancelled = false;
  for (int round = 0; round < 50 && !cancelled; ++round) {
    for (const Completion& c : Collect(*reactor, 1)) {
      if (c.data.op != Op::kClientRecv) continue;  // io_uring also completes the cancel itself
      EXPECT_EQ(c.result, -ECANCELED);
      EXPECT_FALSE(c.more);
      cancelled = true;
    }
  }
  EXPECT_TRUE(cancelled);
}

TEST_P(ReactorTest, ConnectCompletesOnceTheConnectionIsUp) {
  auto reactor = MakeReactor();
  if (reactor == nullptr) GTEST_SKIP() << "backend unavailable";
  UniqueFd listener(socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(listener.get(), 4), 0);
  ASSERT_EQ(getsockname(listener.get(), reinterpret_cast<sockaddr*>(&address), &length), 0);
  UniqueFd client(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
  reactor->Connect(client.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address),
                   {Op::kUpstreamConnect, 3, 5});
  const std::vector<Completion> got = Collect(*reactor, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data.op, Op::kUpstreamConnect);
  EXPECT_EQ(got[0].data.generation, 5u);
  EXPECT_EQ(got[0].result, 0);
  // And a refused one reports the error.
  sockaddr_in nobody = address;
  listener.reset();  // the port is free now: connecting is refused
  UniqueFd refused(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
  reactor->Connect(refused.get(), reinterpret_cast<const sockaddr*>(&nobody), sizeof(nobody),
                   {Op::kUpstreamConnect, 4, 6});
  const std::vector<Completion> failed = Collect(*reactor, 1);
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0].result, -ECONNREFUSED);
}

TEST_P(ReactorTest, SubmitAndWaitWithNothingToDoReturnsNoCompletion) {
  auto reactor = MakeReactor();
  if (reactor == nullptr) GTEST_SKIP() << "backend unavailable";
  EXPECT_TRUE(reactor->SubmitAndWait(milliseconds(10)).ok());
  EXPECT_EQ(reactor->Reap([](const Completion&) {}), 0u);
}

INSTANTIATE_TEST_SUITE_P(Backends, ReactorTest,
                         ::testing::Values(IoBackend::kUring, IoBackend::kEpoll), BackendName);

}  // namespace
}  // namespace dotproxy::io
