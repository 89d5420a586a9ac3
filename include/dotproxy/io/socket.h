#pragma once
// Socket addresses and the sockets a shard opens: SO_REUSEPORT listeners for
// clients and non-blocking TCP sockets for upstreams. Control-plane code: may
// allocate, returns absl::Status with a message naming the address.

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace dotproxy::io {

// An IPv4 or IPv6 address and port, stored as a sockaddr ready for syscalls.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;

  int family() const { return storage.ss_family; }
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  uint16_t port() const;
  // "127.0.0.1:53" or "[::1]:53".
  std::string ToString() const;
  // The address alone, without brackets or port: "::1".
  std::string HostString() const;
  // Same family, address and port (IPv6: and scope).
  bool operator==(const SocketAddress& other) const;
};

// Parses an IP literal (no names: a proxy must not need DNS to start).
// `text` is "IP", "IP:PORT", "[IPv6]" or "[IPv6]:PORT"; a bare IPv6 literal
// without brackets takes no port. `default_port` applies when none is given;
// pass -1 to require one.
absl::StatusOr<SocketAddress> ParseSocketAddress(std::string_view text, int default_port);

// Owns a file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    reset(other.release());
    return *this;
  }
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// A UDP socket bound to `address` with SO_REUSEPORT, so every shard binds its
// own and the kernel spreads clients across them. `buffer_bytes` sizes
// SO_RCVBUF/SO_SNDBUF (forced past rmem_max when privileged) so bursts are
// queued rather than dropped. `freebind` (both listeners) sets IP_FREEBIND /
// IPV6_FREEBIND, so an address the host does not have yet can be bound.
// SO_TIMESTAMPNS and SO_RXQ_OVFL: the kernel stamps each datagram when it
// is queued on the socket (Datagram::received_realtime_ns) and attaches the
// socket's drop count (Datagram::socket_drops), so intake can tell how long
// it waited and whether the buffer overflowed. Best effort: without them
// datagrams carry neither.
void EnableReceiveTimestamps(int fd);

// The receive buffer's size as the kernel accounts it (twice what was set,
// for its own overhead), and setting it (`bytes` as for setsockopt:
// SO_RCVBUFFORCE when permitted, else capped by net.core.rmem_max).
int ReceiveBufferBytes(int fd);
void SetReceiveBuffer(int fd, int bytes);

absl::StatusOr<UniqueFd> OpenUdpListener(const SocketAddress& address, int buffer_bytes,
                                         bool freebind = false);

// A listening TCP socket with SO_REUSEPORT.
absl::StatusOr<UniqueFd> OpenTcpListener(const SocketAddress& address, int backlog,
                                         bool freebind = false);

// Steers the datagrams (or connections) of one client prefix to one socket
// of `fd`'s SO_REUSEPORT group, so that one shard sees all of a client's
// queries (the rate limiter's budget is then exact). A classic BPF program
// (SO_ATTACH_REUSEPORT_CBPF) hashes the source address cut to `v4_prefix`
// (IPv4, and IPv4 on a dual-stack socket) or min(`v6_prefix`, 64) (IPv6)
// and picks socket hash % `group_size`; the kernel falls back to its own
// hash when the group has fewer sockets. The program belongs to the group:
// attaching it from every member is harmless.
absl::Status AttachPrefixSteering(int fd, uint32_t group_size, int v4_prefix, int v6_prefix);

// A listening socket the process inherited from its service manager
// (systemd socket activation, see control/socket_activation.h): UDP
// (SOCK_DGRAM) or listening TCP (SOCK_STREAM), bound to `address`. The
// process owns `fd` for its whole life; shards take duplicates of it
// (DuplicateListener) or, when `reuseport`, may open sibling sockets on the
// same address (OpenReusePortSibling). Non-blocking once taken.
struct InheritedListener {
  int fd = -1;
  int type = SOCK_DGRAM;  // SOCK_DGRAM or SOCK_STREAM
  SocketAddress address;
  bool reuseport = false;  // SO_REUSEPORT was set on it

  bool datagram() const { return type == SOCK_DGRAM; }
  // "udp 127.0.0.1:53" or "tcp [::1]:53".
  std::string ToString() const;
};

// A new descriptor for the inherited socket (same socket, close-on-exec):
// closing it leaves the socket open for the rest of the process and for
// the service manager.
absl::StatusOr<UniqueFd> DuplicateListener(const InheritedListener& listener);

// A socket of the same type, family and IPV6_V6ONLY setting, bound with
// SO_REUSEPORT to the inherited one's address, so the kernel spreads clients
// over both. Fails with EADDRINUSE when the inherited socket was created by
// another user (the kernel admits only one effective UID to a reuseport
// group: systemd binds as root, the service may run as a DynamicUser).
// `buffer_bytes` as for OpenUdpListener (UDP only).
absl::StatusOr<UniqueFd> OpenReusePortSibling(const InheritedListener& listener,
                                              int buffer_bytes);

// A non-blocking TCP socket for an upstream connection: TCP_NODELAY, and
// TCP_USER_TIMEOUT so a half-open connection fails instead of hanging.
absl::StatusOr<UniqueFd> OpenTcpClient(int family, int user_timeout_ms);

}  // namespace dotproxy::io
