#pragma once
// The TLS front end of a shard: DNS-over-TLS listeners (RFC 7858) and, by
// the StreamProtocol seam (stream_protocol.h), any protocol that runs over
// a TLS connection (DoH). The room terminates TLS with tls::ServerSession
// on the same reactor and memory-buffer I/O as the upstream side, and keeps
// the RFC 7766 semantics of TcpClients: pipelining, answers in any order,
// idle timeout, a message timeout (which also bounds a handshake: a
// connection that does not finish its handshake within it is closed),
// a connection cap with idle eviction near it, back-pressure and slow
// readers closed.
//
// Handshake budget (a handshake flood must not starve queries):
//   - at most TlsLimits::handshake_steps_per_iteration handshake steps
//     (wolfSSL_accept calls, the costly part: key exchange and signature)
//     per loop iteration; connections whose ClientHello arrived beyond it
//     wait, in arrival order, for the next iteration (tls_handshake_deferred).
//     This bounds the CPU a flood of real handshakes takes from queries.
//   - at most TlsLimits::max_handshakes connections in their handshake at
//     once. A newcomer past it closes the oldest handshake in progress if
//     that one is older than kStalledHandshake (1 s; tls_handshake_evicted):
//     a real client finishes in a round trip or two, so the connections a
//     flood opens and never completes are by construction the oldest, and
//     closing them (not the newcomer) lets real clients in at once. When
//     every handshake in progress is younger, accepting pauses and new
//     connections wait in the kernel's accept backlog (tls_accept_paused)
//     until a handshake ends or the oldest turns stalled (checked every
//     loop turn): a burst of real clients is then delayed, not refused.
//     A connection that has sent nothing for kSilentHandshake (250 ms: a
//     client sends its ClientHello as soon as it is connected) makes room
//     the same way before that: otherwise idle connects at 64 a second
//     would hold every slot and keep the door shut for real clients.
//     The message timeout closes any handshake that never completes.
//
// Memory: per connection slot, the TLS session's ciphertext buffers (64 KiB
// in, 64 KiB out reserved, one 64 KiB send buffer) and the protocol's
// plaintext buffers (DoT: 4 KiB queries, 96 KiB answers), allocated once at
// Open() for max_clients slots and committed only as pages are touched;
// wolfSSL allocates its per-connection state at accept (tls::ServerSession).
// Shard thread only.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "dotproxy/frontend/acl.h"
#include "dotproxy/frontend/client_ref.h"
#include "dotproxy/frontend/connection_timers.h"
#include "dotproxy/frontend/stream_protocol.h"
#include "dotproxy/frontend/tcp_clients.h"
#include "dotproxy/io/clock.h"
#include "dotproxy/io/index_list.h"
#include "dotproxy/io/reactor.h"
#include "dotproxy/io/socket.h"
#include "dotproxy/io/stream_send.h"
#include "dotproxy/metrics/stats.h"
#include "dotproxy/tls/server.h"

namespace dotproxy::frontend {

struct TlsLimits {
  int max_clients = 256;
  std::chrono::milliseconds idle_timeout{10000};
  std::chrono::milliseconds message_timeout{3000};
  uint32_t max_queries_per_client = 128;
  int max_handshakes = 64;
  int handshake_steps_per_iteration = 16;
  bool freebind = false;

  // The TCP front end's cap, timeouts and listener options (the same flags
  // govern both), with the TLS room's own handshake budget.
  static TlsLimits From(const TcpLimits& tcp) {
    TlsLimits limits;
    limits.max_clients = tcp.max_clients;
    limits.idle_timeout = tcp.idle_timeout;
    limits.message_timeout = tcp.message_timeout;
    limits.max_queries_per_client = tcp.max_queries_per_client;
    limits.freebind = tcp.freebind;
    return limits;
  }
};

struct TlsListen {
  io::SocketAddress address;
  TlsListenerKind kind = TlsListenerKind::kDot;
};

class TlsClients final : private StreamProtocol::Host {
 public:
  static constexpr std::chrono::seconds kStalledHandshake{1};
  static constexpr std::chrono::milliseconds kSilentHandshake{250};
  // A client slot at worst (all touched): plaintext queries and answers,
  // ciphertext in, out and in flight (wolfSSL's own state comes on top).
  static constexpr size_t kClientBytes =
      4 * 4096 + StreamProtocol::kOutCapacity + tls::MemoryIo::kInboundCapacity +
      2 * tls::MemoryIo::kOutboundReserve;
  TlsClients(io::Reactor& reactor, const io::LoopClock& clock, const Acl& acl,
             metrics::ShardStats& stats, int shard_index);
  ~TlsClients();
  TlsClients(const TlsClients&) = delete;
  TlsClients& operator=(const TlsClients&) = delete;

  // Binds a listener per address (SO_REUSEPORT: one per shard) and sizes
  // the client table. `context` serves the handshakes (not null when any
  // listener is given).
  // `https` makes the protocol of connections on kHttps listeners (DoH);
  // required when any listener is one.
  absl::Status Open(std::span<const TlsListen> listen,
                    std::shared_ptr<const tls::ServerContext> context, const TlsLimits& limits,
                    const StreamProtocolFactory& https = nullptr);
  void set_sink(QuerySink* sink) { sink_ = sink; }
  // A reload: new handshakes use `context`; sessions established or in
  // progress keep the one they started with until they close.
  void SetContext(std::shared_ptr<const tls::ServerContext> context);
  void SetTimeouts(std::chrono::milliseconds idle, std::chrono::milliseconds message) {
    limits_.idle_timeout = idle;
    limits_.message_timeout = message;
  }

  void Start();
  void StopIntake();

  // Completions routed by the shard.
  void OnAccept(uint32_t listener_index, const io::Completion& completion);
  void OnReceive(uint32_t client_index, const io::Completion& completion);
  void OnSendDone(uint32_t client_index, const io::Completion& completion);

  // End of a loop iteration: deferred handshakes (a fresh budget), then one
  // encryption and one send per client with output.
  void Flush();
  // True when handshakes wait for the next iteration: the loop must not sleep.
  bool has_deferred() const { return !deferred_.empty(); }
  void ExpireIdle();

  // Replier half (through Frontends).
  std::span<uint8_t> BeginReply(const ClientRef& client, size_t max_length);
  void CommitReply(const ClientRef& client, size_t length);
  void QueryDone(const ClientRef& client);
  const sockaddr* LocalAddress(const ClientRef& client) const;

  size_t open_clients() const { return clients_.size() - free_clients_.size(); }
  // Ciphertext buffers over all slots (outbound and in flight), in bytes
  // reserved: fixed at Open (2 x 64 KiB a slot, as kClientBytes counts),
  // however much a client is answered at once.
  size_t ciphertext_capacity() const;
  int handshakes_in_progress() const { return handshakes_in_progress_; }
  std::vector<io::SocketAddress> listen_addresses() const;
  // Per-client rate limiting: each client prefix to one shard's socket of
  // every listen address (io::AttachPrefixSteering), as TcpClients does, so
  // that one shard sees all of a client's TLS queries. Call after Open.
  absl::Status SteerByClientPrefix(uint32_t group_size, int v4_prefix, int v6_prefix);

 private:
  enum class State : uint8_t { kFree, kOpen, kClosing };
  struct Listener {
    io::UniqueFd fd;
    io::SocketAddress address;
    TlsListenerKind kind = TlsListenerKind::kDot;
    bool accepting = false;
  };
  struct Client {
    State state = State::kFree;
    uint32_t generation = 1;
    int ops_in_flight = 0;
    io::UniqueFd fd;
    tls::ServerSession session;
    std::unique_ptr<StreamProtocol> dot;
    std::unique_ptr<StreamProtocol> https;  // null without kHttps listeners
    StreamProtocol* protocol = nullptr;     // the current connection's: one of the two
    std::vector<uint8_t> sending;              // ciphertext of the send in flight
    io::StreamSend send;
    bool recv_in_flight = false;
    bool dirty = false;
    bool read_closed = false;
    // The protocol said the client is leaving (an HTTP/2 GOAWAY): still read
    // (flow-control updates), close once drained.
    bool leaving = false;
    bool reading_paused = false;
    bool handshaking = false;
    bool heard = false;  // has sent a byte (its ClientHello, at least in part)
    bool close_after_send = false;  // an alert is going out, then close
    uint32_t queries_in_flight = 0;
    sockaddr_storage peer{};
    socklen_t peer_length = 0;
    sockaddr_storage local{};
    io::IndexLinks deferred_links;  // handshake waiting for budget
    io::Clock::time_point accepted_at{};
    io::IndexLinks handshake_links;  // handshakes in progress, oldest first
  };

  bool OnQuery(std::span<uint8_t> wire, uint32_t stream) override;
  bool AtQueryLimit() const override;

  bool ShouldAccept() const;
  void ArmAccepts();
  void PauseAccepts();
  Client* Find(const ClientRef& ref);
  void ArmReceive(uint32_t index);
  // Handshake steps and plaintext intake for what the session holds.
  void Process(uint32_t index);
  void CloseAfterSending(uint32_t index);
  bool EncryptOutput(Client& client);
  void HandshakeFailed(uint32_t index);
  void HandshakeEnded(Client& client);
  void Settle(uint32_t index);
  void MarkDirty(uint32_t index);
  void TrySend(uint32_t index);
  void Close(uint32_t index);
  void MaybeRecycle(uint32_t index);
  void Touch(uint32_t index);
  void TrackPartial(uint32_t index);
  void EvictIdleForRoom(uint32_t newcomer);
  bool Backlogged(Client& client) const;
  bool Drained(Client& client) const;
  // Closes the oldest handshake in progress if it is stalled; true if it did.
  bool EvictStalledHandshake();
  bool processing(uint32_t index) const { return processing_ == index; }

  io::Reactor& reactor_;
  const io::LoopClock& clock_;
  const Acl& acl_;
  metrics::ShardStats& stats_;
  int shard_index_;
  QuerySink* sink_ = nullptr;
  TlsLimits limits_;
  std::shared_ptr<const tls::ServerContext> context_;
  bool started_ = false;
  bool intake_stopped_ = false;
  bool accept_paused_ = false;
  int handshakes_in_progress_ = 0;
  int budget_ = 0;
  uint32_t current_ = 0;  // the client whose plaintext is being parsed (OnQuery)
  uint32_t processing_ = io::kNoIndex;  // the client inside Process's read loop
  uint64_t handed_up_ = 0;  // queries handed to the sink, ever (message timer)

  std::vector<Listener> listeners_;
  std::vector<Client> clients_;
  std::vector<uint32_t> free_clients_;
  std::vector<uint32_t> dirty_;
  // Idle and message timers; the message timer also bounds a handshake.
  ConnectionTimers timers_;
  io::IndexList<Client, &Client::deferred_links> deferred_;
  io::IndexList<Client, &Client::handshake_links> handshaking_;
  uint8_t* region_ = nullptr;  // the protocols' plaintext buffers
  size_t region_bytes_ = 0;
};

}  // namespace dotproxy::frontend
