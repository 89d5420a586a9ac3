// Backend-neutral parts of io::Reactor, and the choice of backend.

#include "dotproxy/io/reactor.h"

#include <sys/socket.h>

#include <cstring>

#include "src/io/epoll_reactor.h"
#include "src/io/uring_reactor.h"

namespace dotproxy::io {

const char* ToString(IoBackend backend) {
  return backend == IoBackend::kUring ? "uring" : "epoll";
}

absl::StatusOr<std::unique_ptr<Reactor>> Reactor::Create(const ReactorOptions& options) {
  if (options.backend == IoBackend::kEpoll) return EpollReactor::Create(options);
  return UringReactor::Create(options);
}

void ReadReceiveControl(const cmsghdr& c, Datagram& datagram) {
  if (c.cmsg_level != SOL_SOCKET) return;
  if (c.cmsg_type == SCM_TIMESTAMPNS && c.cmsg_len >= CMSG_LEN(sizeof(timespec))) {
    timespec stamp;
    std::memcpy(&stamp, CMSG_DATA(&c), sizeof(stamp));
    datagram.received_realtime_ns = int64_t{stamp.tv_sec} * 1'000'000'000 + stamp.tv_nsec;
  } else if (c.cmsg_type == SO_RXQ_OVFL && c.cmsg_len >= CMSG_LEN(sizeof(uint32_t))) {
    std::memcpy(&datagram.socket_drops, CMSG_DATA(&c), sizeof(uint32_t));
  }
}

void ReadReceiveControl(const msghdr& message, Datagram& datagram) {
  for (const cmsghdr* c = CMSG_FIRSTHDR(&message); c != nullptr;
       c = CMSG_NXTHDR(const_cast<msghdr*>(&message), const_cast<cmsghdr*>(c))) {
    ReadReceiveControl(*c, datagram);
  }
}

void Reactor::Abandon(int fd) {
  ::shutdown(fd, SHUT_RDWR);
  CancelFd(fd);
}

}  // namespace dotproxy::io
