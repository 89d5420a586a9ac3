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

int64_t ReceiveTimestampNs(const msghdr& message) {
  for (const cmsghdr* c = CMSG_FIRSTHDR(&message); c != nullptr;
       c = CMSG_NXTHDR(const_cast<msghdr*>(&message), const_cast<cmsghdr*>(c))) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS &&
        c->cmsg_len >= CMSG_LEN(sizeof(timespec))) {
      timespec stamp;
      std::memcpy(&stamp, CMSG_DATA(c), sizeof(stamp));
      return int64_t{stamp.tv_sec} * 1'000'000'000 + stamp.tv_nsec;
    }
  }
  return 0;
}

void Reactor::Abandon(int fd) {
  ::shutdown(fd, SHUT_RDWR);
  CancelFd(fd);
}

}  // namespace dotproxy::io
