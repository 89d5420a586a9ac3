#pragma once
// systemd socket activation: the listening sockets a service manager passes
// (LISTEN_FDS / LISTEN_PID, sd_listen_fds(3); systemd/dotproxy.socket, or
// systemd-socket-activate). They replace --listen. Control thread only,
// before the shards start; the descriptors then belong to the process for
// its whole life (shards duplicate them, see io::InheritedListener).
//
//   auto inherited = control::TakeInheritedListeners();
//   if (!inherited.ok()) { /* print, exit 2 */ }
//   config->inherited_listeners = *std::move(inherited);
//   config->listen = control::InheritedAddresses(config->inherited_listeners);

#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "dotproxy/io/socket.h"

namespace dotproxy::control {

// Takes the passed sockets, if any, and clears LISTEN_FDS/LISTEN_PID/
// LISTEN_FDNAMES so nothing we start inherits them. Each must be an IPv4 or
// IPv6 UDP socket or listening TCP socket (Accept=no); each is made
// non-blocking. Not activated (no LISTEN_FDS for this PID): an empty
// vector. Anything else (an AF_UNIX or other socket, a connected stream,
// a non-socket, a build without libsystemd): InvalidArgument naming the fd,
// and no socket is taken. Logs one line listing what was inherited.
absl::StatusOr<std::vector<io::InheritedListener>> TakeInheritedListeners();

// What one passed descriptor is: type, bound address, SO_REUSEPORT; or the
// InvalidArgument above. Does not change the socket. Exposed for tests.
absl::StatusOr<io::InheritedListener> ClassifyInheritedSocket(int fd);

// The distinct addresses of `listeners`, in order (what main shows as the
// listen addresses when activated).
std::vector<io::SocketAddress> InheritedAddresses(std::span<const io::InheritedListener> listeners);

// "socket activation: 2 inherited sockets replace --listen: udp
// 127.0.0.1:53 (fd 3, shared by all shards), tcp 127.0.0.1:53 (fd 4,
// SO_REUSEPORT: a socket per shard)".
std::string DescribeInheritedListeners(std::span<const io::InheritedListener> listeners);

}  // namespace dotproxy::control
