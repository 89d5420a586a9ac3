#include "dotproxy/control/socket_activation.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "dotproxy/control/log.h"
#include "dotproxy_build_config.h"

#if DOTPROXY_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace dotproxy::control {
namespace {

absl::Status Refused(int fd, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(
      "socket activation: fd ", fd, " ", what,
      "; dotproxy takes IPv4/IPv6 UDP sockets (ListenDatagram=) and listening TCP sockets "
      "(ListenStream=, Accept=no)"));
}

#if DOTPROXY_HAVE_SYSTEMD
// Names what a refused descriptor is, for the error.
std::string WhatItIs(int fd) {
  if (sd_is_socket(fd, AF_UNIX, 0, -1) > 0) return "is an AF_UNIX socket";
  if (sd_is_socket_inet(fd, AF_UNSPEC, SOCK_STREAM, 0, 0) > 0) {
    return "is a TCP socket that is not listening (Accept=yes is not supported)";
  }
  if (sd_is_socket_inet(fd, AF_UNSPEC, 0, -1, 0) > 0) return "is an IP socket of another type";
  if (sd_is_socket(fd, AF_UNSPEC, 0, -1) > 0) return "is a socket of an unsupported family";
  struct stat st{};
  if (fstat(fd, &st) != 0) return absl::StrCat("cannot be examined: ", std::strerror(errno));
  return "is not a socket";
}
#endif

}  // namespace

absl::StatusOr<io::InheritedListener> ClassifyInheritedSocket(int fd) {
#if DOTPROXY_HAVE_SYSTEMD
  io::InheritedListener listener;
  listener.fd = fd;
  if (sd_is_socket_inet(fd, AF_UNSPEC, SOCK_DGRAM, -1, 0) > 0) {
    listener.type = SOCK_DGRAM;
  } else if (sd_is_socket_inet(fd, AF_UNSPEC, SOCK_STREAM, 1, 0) > 0) {
    listener.type = SOCK_STREAM;
  } else {
    return Refused(fd, WhatItIs(fd));
  }
  listener.address.length = sizeof(listener.address.storage);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&listener.address.storage),
                  &listener.address.length) != 0) {
    return Refused(fd, absl::StrCat("has no address: ", std::strerror(errno)));
  }
  if (listener.address.port() == 0) return Refused(fd, "is not bound to a port");
  int reuseport = 0;
  socklen_t length = sizeof(reuseport);
  listener.reuseport =
      getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &reuseport, &length) == 0 && reuseport != 0;
  return listener;
#else
  return Refused(fd, "cannot be examined: dotproxy was built without libsystemd");
#endif
}

std::vector<io::SocketAddress> InheritedAddresses(
    std::span<const io::InheritedListener> listeners) {
  std::vector<io::SocketAddress> addresses;
  for (const io::InheritedListener& listener : listeners) {
    bool seen = false;
    for (const io::SocketAddress& address : addresses) seen = seen || address == listener.address;
    if (!seen) addresses.push_back(listener.address);
  }
  return addresses;
}

std::string DescribeInheritedListeners(std::span<const io::InheritedListener> listeners) {
  std::string text = absl::StrCat("socket activation: ", listeners.size(),
                                  listeners.size() == 1 ? " inherited socket" : " inherited sockets",
                                  " replace --listen:");
  const char* separator = " ";
  for (const io::InheritedListener& listener : listeners) {
    absl::StrAppend(&text, separator, listener.ToString(), " (fd ", listener.fd,
                    listener.reuseport ? ", SO_REUSEPORT: a socket per shard)"
                                       : ", shared by all shards)");
    separator = ", ";
  }
  return text;
}

absl::StatusOr<std::vector<io::InheritedListener>> TakeInheritedListeners() {
  std::vector<io::InheritedListener> listeners;
#if DOTPROXY_HAVE_SYSTEMD
  // unset_environment=1: whatever we start later must not see them.
  const int n = sd_listen_fds(1);
  if (n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket activation: sd_listen_fds: ", std::strerror(-n)));
  }
  for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; ++fd) {
    auto listener = ClassifyInheritedSocket(fd);
    if (!listener.ok()) return listener.status();
    listeners.push_back(*listener);
  }
  for (const io::InheritedListener& listener : listeners) {
    // Shards share the socket (or a duplicate of it): an accept or read
    // that another shard won must return EAGAIN, not block the loop.
    const int flags = fcntl(listener.fd, F_GETFL);
    if (flags < 0 || fcntl(listener.fd, F_SETFL, flags | O_NONBLOCK) != 0) {
      return Refused(listener.fd, absl::StrCat("cannot be made non-blocking: ",
                                               std::strerror(errno)));
    }
  }
#else
  if (std::getenv("LISTEN_FDS") != nullptr) {
    return absl::InvalidArgumentError(
        "socket activation: LISTEN_FDS is set but dotproxy was built without libsystemd "
        "(meson -Dsystemd=enabled); use --listen");
  }
#endif
  if (!listeners.empty()) Log(Severity::kInfo, "%s", DescribeInheritedListeners(listeners));
  return listeners;
}

}  // namespace dotproxy::control
