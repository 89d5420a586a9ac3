#pragma once
// What the TCP and TLS rooms do alike with a socket they accepted: ask
// whether its peer may come in, and set up the connection they take.

#include <sys/socket.h>

#include "dotproxy/frontend/acl.h"

namespace dotproxy::frontend {

// The peer of accepted socket `fd` in `peer`, and whether the ACL lets it
// in (false too when the kernel gives no address).
bool AllowedPeer(int fd, const Acl& acl, sockaddr_storage& peer, socklen_t& peer_length);

// A connection taken into a slot: TCP_NODELAY, and in `local` the address
// it reached (for dnstap; AF_UNSPEC when unknown).
void TakeConnection(int fd, sockaddr_storage& local);

}  // namespace dotproxy::frontend
