#pragma once
// Client-side state a shard keeps: UDP reply buffers and TCP client
// connections (RFC 7766). Pure state owned by one shard; the shard's loop
// drives it. Anything an SQE points to lives here until its completion.

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <chrono>
#include <cstdint>
#include <vector>

#include "dotproxy/dns/stream_framer.h"
#include "dotproxy/io/socket.h"

namespace dotproxy::frontend {

using Clock = std::chrono::steady_clock;

// Largest UDP reply we send; larger answers are truncated (TC=1) even for
// clients advertising more, so a reply buffer has a fixed size.
inline constexpr size_t kMaxUdpReply = 4096;
// Largest query accepted; a slot stores the query for its lifetime.
inline constexpr size_t kMaxQuerySize = 1024;

// One UDP reply in flight: the sendmsg header, the destination and the bytes.
struct UdpReply {
  msghdr message{};
  iovec iov{};
  sockaddr_in6 destination{};
  uint8_t data[kMaxUdpReply];
};

enum class TcpClientState : uint8_t { kFree, kOpen, kClosing };

struct TcpClient {
  TcpClient() : framer(4 * (kMaxQuerySize + 2)) {}

  TcpClientState state = TcpClientState::kFree;
  uint32_t generation = 1;
  int ops_in_flight = 0;
  io::UniqueFd fd;
  dns::StreamFramer framer;

  // Answers queued while a send is in flight; swapped into `sending`.
  std::vector<uint8_t> pending_out;
  std::vector<uint8_t> sending;
  size_t send_offset = 0;
  bool send_in_flight = false;
  bool recv_in_flight = false;
  bool read_closed = false;   // client sent FIN: answer what is pending, then close
  bool reading_paused = false;  // too many queries in flight from this client

  uint32_t queries_in_flight = 0;
  Clock::time_point last_activity{};
  // Intrusive list ordered by last activity (oldest first) for idle expiry.
  uint32_t idle_prev = UINT32_MAX;
  uint32_t idle_next = UINT32_MAX;
};

}  // namespace dotproxy::frontend
