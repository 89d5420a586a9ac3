#pragma once
// One persistent DNS-over-TLS connection from a shard to an upstream
// (RFC 7858), driving itself: TCP connect, TLS handshake over memory
// buffers, ciphertext receive, plaintext reads split into DNS messages,
// one batched TLS write per loop iteration (many queries per record), one
// send in flight, close. Pipelined queries are matched by ID (RFC 7766
// §6.2.1) through the connection's own ID table, which maps an upstream ID
// to an opaque token. It reports readiness, answers and its close to a
// ConnectionObserver (the pool) and never touches query slots.
//
// Owned by the pool of one shard; shard thread only. Everything an in-flight
// operation points to lives here, so the connection is recycled (generation
// bumped) only when no operation is in flight.

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dotproxy/dns/message.h"
#include "dotproxy/dns/stream_framer.h"
#include "dotproxy/io/clock.h"
#include "dotproxy/io/reactor.h"
#include "dotproxy/io/socket.h"
#include "dotproxy/io/stream_send.h"
#include "dotproxy/metrics/stats.h"
#include "dotproxy/tls/client.h"
#include "dotproxy/upstream/id_table.h"

namespace dotproxy::upstream {

enum class ConnectionState : uint8_t {
  kIdle,         // no socket; connects on demand
  kConnecting,   // TCP connect submitted
  kHandshaking,  // TLS handshake in progress
  kReady,        // verified; queries flow
  kClosing,      // cancelling its operations; recycled when none remain
};
const char* ToString(ConnectionState state);

// Why a connection closed. The first four are failures of the upstream
// (backoff, health); the others are routine.
enum class CloseReason : uint8_t {
  kConnectFailed,   // TCP connect or socket error before TLS
  kHandshakeFailed, // TLS handshake failed (protocol, peer closed, timeout)
  kVerifyFailed,    // certificate, name or pin verification failed
  kBroken,          // stopped answering, framing stuck, TLS error or send failure
  kPeerClosed,      // upstream closed an established connection (routine)
  kIdle,            // we closed it for idleness
  kShutdown,        // the shard stops
  kRetired,         // a reload replaced its pool (routine)
};
bool IsFailure(CloseReason reason);

// Largest DNS message on a stream (RFC 1035 §4.2.2: 16-bit length).
inline constexpr size_t kMaxStreamMessage = 65535;

// What a connection knows of its upstream. Owned by the pool, shared by the
// upstream's connections.
struct UpstreamTarget {
  const io::SocketAddress* address = nullptr;  // borrowed from the Config
  const tls::PeerPolicy* policy = nullptr;     // borrowed from the Config
  tls::ResumptionCache resumption;  // this shard's ticket for the upstream
  metrics::UpstreamStats* stats = nullptr;
};

struct ConnectionSettings {
  // Connect + handshake budget; also TCP_USER_TIMEOUT for half-open streams.
  std::chrono::milliseconds connect_timeout{3000};
  // Closed after this idle, or just before the upstream's own
  // edns-tcp-keepalive timeout when it sent one (RFC 7828).
  std::chrono::milliseconds idle_timeout{8000};
  // Consecutive query timeouts with no answer in between after which the
  // connection is presumed broken.
  int timeout_limit = 3;
};

class Connection;

class ConnectionObserver {
 public:
  virtual ~ConnectionObserver() = default;
  virtual void OnReady(Connection& connection) = 0;
  // One complete DNS message read from the stream.
  virtual void OnMessage(Connection& connection, std::span<uint8_t> message) = 0;
  // The connection closed. `lost` holds the tokens that were in flight on it
  // (their IDs are already freed); it borrows the connection's scratch.
  virtual void OnClosed(Connection& connection, CloseReason reason, std::string_view detail,
                        std::span<const uint32_t> lost) = 0;
};

class Connection {
 public:
  Connection(uint32_t index, int upstream, UpstreamTarget& target,
             const ConnectionSettings& settings, io::Reactor& reactor,
             const io::LoopClock& clock, const tls::ClientContext& tls_context, FastRng& rng,
             ConnectionObserver& observer, metrics::ShardStats& stats);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // kIdle -> kConnecting. An error (no socket) leaves it idle.
  absl::Status Connect();
  // Routes its completions (connect, receive, send); stale ones are ignored.
  void OnCompletion(const io::Completion& completion);

  // Binds a random free ID to `token`, writes it into `query` and appends
  // the query to this iteration's batch. False when the ID table is full.
  bool Queue(uint32_t token, std::span<uint8_t> query, uint16_t& id);
  // End of the loop iteration: the batch as one TLS write (when ready).
  void Flush();
  void Close(CloseReason reason, std::string_view detail);

  // The token bound to `id`, or IdTable::kFree.
  uint32_t Lookup(uint16_t id) const { return ids_.Lookup(id); }
  void Erase(uint16_t id) { ids_.Erase(id); }
  // An answer matched: the stream is alive.
  void NoteAnswered();
  // A query on this connection timed out; may close it (kBroken).
  void NoteTimeout();
  // The upstream's edns-tcp-keepalive, in units of 100 ms (RFC 7828).
  void NoteKeepalive(int units) { keepalive_timeout_ = std::chrono::milliseconds(units * 100); }

  // Timers: the setup deadline passed, or idle past IdleTimeout().
  void CheckTimers();
  std::chrono::milliseconds IdleTimeout() const;

  ConnectionState state() const { return state_; }
  bool alive() const {
    return state_ == ConnectionState::kReady || state_ == ConnectionState::kConnecting ||
           state_ == ConnectionState::kHandshaking;
  }
  size_t in_flight() const { return ids_.size(); }
  int upstream() const { return upstream_; }
  uint32_t index() const { return index_; }
  // "TLSv1.3 TLS13-CHACHA20-POLY1305-SHA256, resumed", for logs.
  std::string Describe() const { return session_.Describe(); }
  // Shutdown: stop the socket so the upstream sees the close at once.
  void ShutdownSocket();

 private:
  void OnConnected(const io::Completion& completion);
  void DriveHandshake();
  void ArmReceive();
  void OnReceive(const io::Completion& completion);
  void ReadPlaintext();
  void StartSend();
  void OnSendDone(const io::Completion& completion);
  void MaybeRecycle();
  io::UserData Tag(io::Op op) const { return {op, index_, generation_}; }

  const uint32_t index_;
  const int upstream_;
  UpstreamTarget& target_;
  const ConnectionSettings& settings_;
  io::Reactor& reactor_;
  const io::LoopClock& clock_;
  const tls::ClientContext& tls_context_;
  FastRng& rng_;
  ConnectionObserver& observer_;
  metrics::ShardStats& stats_;

  ConnectionState state_ = ConnectionState::kIdle;
  uint32_t generation_ = 1;
  int ops_in_flight_ = 0;
  io::UniqueFd fd_;
  tls::Session session_;
  dns::StreamFramer framer_;
  IdTable ids_;
  std::vector<uint32_t> lost_;  // scratch for Close

  // Length-prefixed queries queued since the last flush.
  std::vector<uint8_t> pending_plain_;
  // Ciphertext handed to the kernel, one send in flight at a time.
  std::vector<uint8_t> sending_;
  io::StreamSend send_;
  bool recv_in_flight_ = false;

  io::Clock::time_point connect_deadline_{};
  io::Clock::time_point last_activity_{};  // last query sent or answer received
  std::chrono::milliseconds keepalive_timeout_{-1};  // negative: none received
  int quick_acks_left_ = 0;  // receives after connect that still force an ACK
  int timeouts_since_answer_ = 0;
};

}  // namespace dotproxy::upstream
