// Backend-neutral parts of io::Reactor, and the choice of backend.

#include "dotproxy/io/reactor.h"

#include <sys/socket.h>

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

void Reactor::Abandon(int fd) {
  ::shutdown(fd, SHUT_RDWR);
  CancelFd(fd);
}

}  // namespace dotproxy::io
