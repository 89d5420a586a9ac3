#pragma once
// One persistent DNS-over-TLS connection from a shard to an upstream.
//
// Pure state, owned by the shard that drives it: the socket, the wolfSSL
// session fed through memory buffers, the stream framer for answers, the ID
// table for pipelined queries (RFC 7766 §6.2.1), and the plaintext batch
// queued in this loop iteration. Everything an in-flight SQE points to lives
// here, so the connection is only recycled when `ops_in_flight` is zero.

#include <chrono>
#include <cstdint>
#include <vector>

#include "dotproxy/dns/stream_framer.h"
#include "dotproxy/io/socket.h"
#include "dotproxy/tls/client.h"
#include "dotproxy/upstream/id_table.h"

namespace dotproxy::upstream {

using Clock = std::chrono::steady_clock;

enum class ConnectionState : uint8_t {
  kIdle,         // no socket; connects on demand
  kConnecting,   // TCP connect submitted
  kHandshaking,  // TLS handshake in progress
  kReady,        // verified; queries flow
  kClosing,      // cancelling its operations; recycled when none remain
};

const char* ToString(ConnectionState state);

// Largest DNS message on a stream (RFC 1035 §4.2.2: 16-bit length).
inline constexpr size_t kMaxStreamMessage = 65535;

struct Connection {
  Connection() : framer(2 * (kMaxStreamMessage + 2)) {
    pending_plain.reserve(64 * 1024);
    sending.reserve(64 * 1024);
  }

  int upstream_index = 0;  // which configured upstream this connects to
  ConnectionState state = ConnectionState::kIdle;
  uint32_t generation = 1;
  int ops_in_flight = 0;
  io::UniqueFd fd;

  tls::Session session;
  dns::StreamFramer framer;
  IdTable ids;

  // Length-prefixed queries queued since the last flush; written as one TLS
  // write at the end of the loop iteration.
  std::vector<uint8_t> pending_plain;
  // Ciphertext handed to the kernel; one send in flight at a time, because
  // two sends on one stream socket may complete out of order.
  std::vector<uint8_t> sending;
  size_t send_offset = 0;
  bool send_in_flight = false;
  bool recv_in_flight = false;

  Clock::time_point connect_deadline{};
  // Last query sent or answer received, for closing idle connections before
  // the upstream does.
  Clock::time_point last_activity{};
  // The upstream's edns-tcp-keepalive timeout (RFC 7828) once it sent one;
  // negative until then.
  std::chrono::milliseconds keepalive_timeout{-1};
  // Receives after connect that still force an immediate ACK (TCP_QUICKACK).
  int quick_acks_left = 0;
  // Queries that timed out on this connection since its last answer.
  int timeouts_since_answer = 0;
};

// Reconnect delay after `failures` consecutive failures: exponential from
// 100 ms, capped at 10 s, with ±25% jitter from `random` (0..2^32-1) so
// shards do not reconnect in lockstep.
std::chrono::milliseconds BackoffDelay(int failures, uint32_t random);

}  // namespace dotproxy::upstream
