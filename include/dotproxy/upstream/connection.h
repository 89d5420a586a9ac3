#pragma once
// One persistent DNS-over-TLS connection from a shard to an upstream
// (RFC 7858), driving itself: TCP connect, TLS handshake over memory
// buffers, ciphertext receive, plaintext reads split into DNS messages,
// one batched TLS write per loop iteration (many queries per record), one
// send in flight, close. The same connection without TLS is a plain
// DNS-over-TCP one (RFC 7766, kind kTcp: the framed batch goes to the
// socket as it is), and kind kUdp is a connected UDP socket to the upstream
// that sends each query as a datagram (datagram.cc). Kind kHttps is DNS
// over HTTPS (RFC 8484, https.cc): the same TCP connect, TLS handshake,
// verification and batched writes, with ALPN "h2" and an HTTP/2 codec
// (http::DohClient) between TLS and the DNS messages; each query is a
// stream. Pipelined queries are matched by ID (RFC 7766
// §6.2.1) through the connection's own ID table, which maps an upstream ID
// to an opaque token. It reports readiness, answers and its close to a
// ConnectionObserver (the pool) and never touches query slots.
//
// Owned by the pool of one shard; shard thread only. Everything an in-flight
// operation points to lives here, so the connection is recycled (generation
// bumped) only when no operation is in flight.

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dotproxy/dns/message.h"
#include "dotproxy/dns/stream_framer.h"
#include "dotproxy/http/doh_client.h"
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

// What a connection speaks. Fixed for its life; the DoT path tests it only
// where plain streams or datagrams differ.
enum class ConnectionKind : uint8_t {
  kTls,  // DNS over TLS (RFC 7858)
  kTcp,  // plain DNS over TCP, pipelined (RFC 7766)
  kUdp,  // plain DNS over a connected UDP socket (RFC 1035 §4.2.1)
  kHttps,  // DNS over HTTPS (RFC 8484): HTTP/2 streams over TLS
};
const char* ToString(ConnectionKind kind);

// EDNS UDP payload size advertised to plain UDP upstreams (the DNS flag
// day 2020 value: no IP fragmentation on common paths).
inline constexpr uint16_t kUpstreamUdpSize = 1232;
// Largest query a UDP connection keeps for its send and a TC=1 retry.
inline constexpr size_t kMaxDatagramQuery = 1232;

// Largest DNS message on a stream (RFC 1035 §4.2.2: 16-bit length).
inline constexpr size_t kMaxStreamMessage = 65535;
// kHttps: plaintext decrypted per read for the HTTP/2 codec (one TLS
// record's worth).
inline constexpr size_t kDohReadChunk = 16 * 1024;

// What a connection knows of its upstream. Owned by the pool, shared by the
// upstream's connections.
struct UpstreamTarget {
  const io::SocketAddress* address = nullptr;  // borrowed from the Config
  const tls::PeerPolicy* policy = nullptr;     // borrowed from the Config
  tls::ResumptionCache resumption;  // this shard's ticket for the upstream
  metrics::UpstreamStats* stats = nullptr;
  // kHttps: the request :path (borrowed from the Config).
  const std::string* doh_path = nullptr;
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
  // kUdp: queries in flight at once (the pool's per-connection cap); each
  // has a preallocated copy of its query.
  size_t datagram_slots = 128;
  // kHttps: HTTP/2 streams in flight at once (the pool's per-connection
  // cap and room for probes); each has preallocated query and body buffers.
  size_t http_streams = 128;
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
  // kHttps: the query under `token` ended without an answer while the
  // connection stays up (HTTP status, content type, body, stream reset:
  // `upstream_failed`; refused after GOAWAY: not). Its ID is already freed.
  virtual void OnQueryFailed(Connection& connection, uint32_t token, bool upstream_failed,
                             std::string_view detail) = 0;
};

class Connection : private http::DohClient::Observer {
 public:
  Connection(uint32_t index, int upstream, UpstreamTarget& target,
             const ConnectionSettings& settings, io::Reactor& reactor,
             const io::LoopClock& clock, const tls::ClientContext& tls_context, FastRng& rng,
             ConnectionObserver& observer, metrics::ShardStats& stats,
             ConnectionKind kind = ConnectionKind::kTls);
  ~Connection() override;
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
  void Erase(uint16_t id) {
    ids_.Erase(id);
    if (kind_ == ConnectionKind::kUdp) FreeDatagram(id);
    if (kind_ == ConnectionKind::kHttps) doh_->Cancel(id);  // RST_STREAM unless answered
  }
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
  // False once a DoH upstream sent GOAWAY: the streams it still serves
  // finish here, new queries go to another connection.
  bool accepting() const { return kind_ != ConnectionKind::kHttps || !doh_->going_away(); }
  int upstream() const { return upstream_; }
  uint32_t index() const { return index_; }
  ConnectionKind kind() const { return kind_; }
  // This proxy's end of the socket once connected (dnstap), else null.
  const sockaddr* local_address() const {
    return local_length_ > 0 ? reinterpret_cast<const sockaddr*>(&local_) : nullptr;
  }
  // "TLSv1.3 TLS13-CHACHA20-POLY1305-SHA256, resumed", for logs.
  std::string Describe() const;

  // kUdp: the query sent under `id` as it went out (ID included), for a
  // TC=1 answer's retry over TCP and its question check; empty when `id`
  // is not bound here.
  std::span<const uint8_t> SentQuery(uint16_t id) const;
  // kUdp: the query under `id` went on to the upstream's TCP fallback
  // connection under `fallback_id` (kNoFallback: none). It stays bound
  // here, so a Release through the forwarder's binding finds both.
  static constexpr int kNoFallback = -1;
  void SetFallback(uint16_t id, int fallback_id);
  int Fallback(uint16_t id) const;
  // Shutdown: stop the socket so the upstream sees the close at once.
  void ShutdownSocket();

 private:
  void OnConnected(const io::Completion& completion);
  void DriveHandshake();
  void ArmReceive();
  void OnReceive(const io::Completion& completion);
  void ReadPlaintext();
  void ReadFramed();
  void StartSend();
  void OnSendDone(const io::Completion& completion);
  void MaybeRecycle();
  void BecomeReady();
  // Reads the socket's local address (one getsockname per connection).
  void NoteLocalAddress();
  std::vector<uint8_t>& Outbound() {
    return kind_ == ConnectionKind::kTcp ? plain_outbound_ : session_.outbound();
  }
  // kHttps (https.cc).
  bool QueueStream(uint32_t token, std::span<uint8_t> query, uint16_t& id);
  void ReadStreams();
  void FlushStreams();
  bool CloseIfSessionEnded();
  void OnResponse(uint16_t tag, http::DohClient::Result result, int status,
                  std::span<uint8_t> body) override;
  // kUdp (datagram.cc). A query's datagram, borrowed by its SendTo.
  struct DatagramQuery {
    io::MessageHeader header;
    uint16_t length = 0;
    uint16_t id = 0;
    int fallback_id = kNoFallback;
    bool bound = false;    // its ID is in ids_
    bool sending = false;  // queued or in a batch whose sends are in flight
    uint8_t bytes[kMaxDatagramQuery];
  };
  static constexpr uint16_t kNoDatagram = UINT16_MAX;
  absl::Status OpenDatagram();
  bool QueueDatagram(uint32_t token, std::span<uint8_t> query, uint16_t& id);
  void FlushDatagrams();
  void OnDatagram(const io::Completion& completion);
  void OnDatagramSent(const io::Completion& completion);
  void FreeDatagram(uint16_t id);
  void ClearDatagrams();
  io::UserData Tag(io::Op op) const { return {op, index_, generation_}; }

  const uint32_t index_;
  const int upstream_;
  const ConnectionKind kind_;
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
  sockaddr_storage local_{};
  socklen_t local_length_ = 0;
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

  // kTcp: framed queries handed to the socket (what TLS output is for kTls).
  std::vector<uint8_t> plain_outbound_;
  // kUdp: one slot per query in flight, found by its ID; a slot is reused
  // only after its datagram's send completed.
  std::vector<DatagramQuery> datagrams_;
  std::vector<uint16_t> free_datagrams_;
  std::vector<uint16_t> unsent_datagrams_;   // slots queued since the last flush
  std::vector<uint16_t> sent_datagrams_;     // slots whose SendTo may be in flight
  std::unique_ptr<uint16_t[]> datagram_of_id_;  // kNoDatagram when unbound
  int datagram_sends_ = 0;  // SendTo operations in flight

  // kHttps: the HTTP/2 codec, plaintext read from TLS for it, and what it
  // drained for this iteration's one TLS write.
  std::unique_ptr<http::DohClient> doh_;
  std::unique_ptr<uint8_t[]> doh_in_;
  std::vector<uint8_t> doh_out_;
};

}  // namespace dotproxy::upstream
