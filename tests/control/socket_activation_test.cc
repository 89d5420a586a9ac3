// How passed descriptors are classified for socket activation: UDP and
// listening TCP sockets are taken with their address and SO_REUSEPORT;
// AF_UNIX, non-listening TCP and non-sockets are refused with a message
// naming the fd. (Taking them from LISTEN_FDS is covered end to end with
// systemd-socket-activate in tests/e2e/dotproxy_e2e_socket_activation.py.)

#include "dotproxy/control/socket_activation.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <string>

#include "dotproxy_build_config.h"

namespace dotproxy::control {
namespace {

io::UniqueFd BoundLoopback(int type, bool reuseport) {
  io::UniqueFd fd(socket(AF_INET, type, 0));
  const int one = 1;
  if (reuseport) setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  return fd;
}

uint16_t PortOf(int fd) {
  sockaddr_in address{};
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  return ntohs(address.sin_port);
}

class SocketActivationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!DOTPROXY_HAVE_SYSTEMD) GTEST_SKIP() << "built without libsystemd";
  }
};

TEST_F(SocketActivationTest, TakesAUdpSocketWithItsAddress) {
  io::UniqueFd fd = BoundLoopback(SOCK_DGRAM, false);
  auto listener = ClassifyInheritedSocket(fd.get());
  ASSERT_TRUE(listener.ok()) << listener.status();
  EXPECT_TRUE(listener->datagram());
  EXPECT_EQ(listener->fd, fd.get());
  EXPECT_FALSE(listener->reuseport);
  EXPECT_EQ(listener->address.ToString(), "127.0.0.1:" + std::to_string(PortOf(fd.get())));
}

TEST_F(SocketActivationTest, TakesAListeningTcpSocketAndSeesSoReusePort) {
  io::UniqueFd fd = BoundLoopback(SOCK_STREAM, true);
  ASSERT_EQ(listen(fd.get(), 16), 0);
  auto listener = ClassifyInheritedSocket(fd.get());
  ASSERT_TRUE(listener.ok()) << listener.status();
  EXPECT_FALSE(listener->datagram());
  EXPECT_TRUE(listener->reuseport);
  EXPECT_EQ(listener->ToString(), "tcp 127.0.0.1:" + std::to_string(PortOf(fd.get())));
  const std::string line = DescribeInheritedListeners(std::vector{*listener});
  EXPECT_NE(line.find("SO_REUSEPORT: a socket per shard"), std::string::npos) << line;
}

TEST_F(SocketActivationTest, RefusesATcpSocketThatIsNotListening) {
  io::UniqueFd fd = BoundLoopback(SOCK_STREAM, false);
  auto listener = ClassifyInheritedSocket(fd.get());
  ASSERT_FALSE(listener.ok());
  EXPECT_EQ(listener.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(listener.status().message().find("not listening"), std::string::npos)
      << listener.status();
}

TEST_F(SocketActivationTest, RefusesUnixSocketsAndNonSocketsNamingTheFd) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_DGRAM, 0, pair), 0);
  io::UniqueFd a(pair[0]), b(pair[1]);
  auto unix_socket = ClassifyInheritedSocket(a.get());
  ASSERT_FALSE(unix_socket.ok());
  EXPECT_NE(unix_socket.status().message().find("fd " + std::to_string(a.get()) + " is an AF_UNIX"),
            std::string::npos)
      << unix_socket.status();
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  io::UniqueFd r(pipe_fds[0]), w(pipe_fds[1]);
  auto not_socket = ClassifyInheritedSocket(r.get());
  ASSERT_FALSE(not_socket.ok());
  EXPECT_NE(not_socket.status().message().find("is not a socket"), std::string::npos)
      << not_socket.status();
}

TEST_F(SocketActivationTest, NotActivatedMeansNoSockets) {
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_PID");
  auto listeners = TakeInheritedListeners();
  ASSERT_TRUE(listeners.ok()) << listeners.status();
  EXPECT_TRUE(listeners->empty());
}

TEST_F(SocketActivationTest, InheritedAddressesAreDistinct) {
  io::UniqueFd udp = BoundLoopback(SOCK_DGRAM, false);
  auto datagram = ClassifyInheritedSocket(udp.get());
  ASSERT_TRUE(datagram.ok());
  io::InheritedListener stream = *datagram;
  stream.type = SOCK_STREAM;  // the same address over TCP
  const auto addresses = InheritedAddresses(std::vector{*datagram, stream});
  ASSERT_EQ(addresses.size(), 1u);
  EXPECT_EQ(addresses[0], datagram->address);
}

}  // namespace
}  // namespace dotproxy::control
