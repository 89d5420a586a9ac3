#include "dotproxy/frontend/stream_accept.h"

#include <netinet/in.h>
#include <netinet/tcp.h>

namespace dotproxy::frontend {

bool AllowedPeer(int fd, const Acl& acl, sockaddr_storage& peer, socklen_t& peer_length) {
  peer = {};
  peer_length = sizeof(peer);
  return getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_length) == 0 &&
         acl.Allows(reinterpret_cast<const sockaddr*>(&peer));
}

void TakeConnection(int fd, sockaddr_storage& local) {
  // Answers are small and often follow each other: without NODELAY the
  // second one waits for the client's delayed ACK (~40 ms).
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  socklen_t local_length = sizeof(local);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_length) != 0) {
    local.ss_family = AF_UNSPEC;
  }
}

}  // namespace dotproxy::frontend
