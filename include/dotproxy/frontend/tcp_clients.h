#pragma once
// The TCP front end of a shard (RFC 7766): SO_REUSEPORT listeners (or the
// sockets inherited from systemd) with multishot accept, and a fixed table
// of client connections. Each client has a framer for its queries
// (pipelined, any split of the byte stream) and a fixed, preallocated answer buffer; one send in flight at a time. Reading
// pauses while a client has too many queries in flight or unsent answers
// (back-pressure instead of unbounded buffering); a client whose answers no
// longer fit is closed as slow. Idle clients are closed oldest first, and a
// client whose current message stays incomplete past the message timeout is
// closed whatever its idle time (slowloris: a byte a second would otherwise
// keep a connection forever).
//
// Memory per shard, worst case: max_tcp_clients x kClientBytes (96 KiB
// answers + 8 KiB queries) = 1024 x 104 KiB = 104 MiB, in one region
// reserved at Open() and committed only as buffers are touched. When a
// client closes, the pages of its answer buffer past the first are given
// back (MADV_DONTNEED), so memory follows the clients open now, not the
// most ever open. Shard thread only; nothing allocates after Open().

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "dotproxy/dns/stream_framer.h"
#include "dotproxy/frontend/acl.h"
#include "dotproxy/frontend/client_ref.h"
#include "dotproxy/frontend/connection_timers.h"
#include "dotproxy/io/clock.h"
#include "dotproxy/io/index_list.h"
#include "dotproxy/io/reactor.h"
#include "dotproxy/io/socket.h"
#include "dotproxy/io/stream_send.h"
#include "dotproxy/metrics/stats.h"

namespace dotproxy::frontend {

struct TcpLimits {
  int max_clients = 1024;
  std::chrono::milliseconds idle_timeout{10000};
  // A message whose first byte arrived this long ago and that is still
  // incomplete closes the connection (reading paused by back-pressure does
  // not count: the timer restarts when reading resumes).
  std::chrono::milliseconds message_timeout{3000};
  // RFC 7766 §6.2.1.1 lets a client pipeline; past this many unanswered
  // queries its socket is not read until answers drain.
  uint32_t max_queries_per_client = 128;
  // IP_FREEBIND on the listeners: bind addresses the host does not have yet.
  bool freebind = false;
};

class TcpClients {
 public:
  // Answers queued for one client, at most. Holds the largest DNS message
  // (65,535 bytes + prefix) with room to spare while a send is in flight.
  static constexpr size_t kOutCapacity = 96 * 1024;
  // Reading pauses while this much is queued and unsent.
  static constexpr size_t kOutPauseThreshold = kOutCapacity / 4;
  static constexpr size_t kInCapacity = 4 * (kMaxQuerySize + 2);
  // A client's slot in the buffer region: answers, then queries, each
  // starting on a page.
  static constexpr size_t kPageSize = 4096;
  static constexpr size_t kOutSlot = (kOutCapacity + kPageSize - 1) / kPageSize * kPageSize;
  static constexpr size_t kInSlot = (kInCapacity + kPageSize - 1) / kPageSize * kPageSize;
  static constexpr size_t kClientBytes = kOutSlot + kInSlot;

  TcpClients(io::Reactor& reactor, const io::LoopClock& clock, const Acl& acl,
             metrics::ShardStats& stats, int shard_index);
  ~TcpClients();
  TcpClients(const TcpClients&) = delete;
  TcpClients& operator=(const TcpClients&) = delete;

  // Binds a listener per `listen` address (SO_REUSEPORT) and sizes the
  // client table. When `inherited` holds any socket (socket activation, of
  // either transport), those replace `listen`: this room accepts on the
  // stream ones, shard 0 on a duplicate of the passed socket, other shards
  // on a sibling SO_REUSEPORT listener when the passed one has SO_REUSEPORT
  // (else, or when the kernel refuses the sibling, on a duplicate: every
  // shard then accepts from the one shared socket, and a shard whose client
  // table is full stops accepting from it so that another shard takes the
  // connection).
  absl::Status Open(std::span<const io::SocketAddress> listen,
                    std::span<const io::InheritedListener> inherited, const TcpLimits& limits);
  void set_sink(QuerySink* sink) { sink_ = sink; }

  void Start();       // arms the accepts
  void StopIntake();  // no new connections or queries; answers still go out

  // Changes the listen addresses of a running room (SIGHUP reload).
  // Listeners of addresses in both lists are kept as they are. New
  // addresses are bound first, all or nothing: on an error nothing changed
  // and the error names the address. Removed listeners stop accepting at
  // once (the multishot accept is cancelled) and are closed when its last
  // completion has arrived; connections not yet accepted from a removed
  // listener are reset by the kernel, and clients accepted on it earlier
  // keep being served until they or the idle timeout close them.
  // REQUIRES: shard thread, between loop iterations (not from inside a
  // completion handler), after Open(); takes effect in the reactor at the
  // next submit. FailedPrecondition when the listeners were inherited
  // (socket activation: the socket unit owns the addresses) or intake has
  // stopped. Allocates (control plane), never on the query path.
  absl::Status SetListeners(std::span<const io::SocketAddress> listen);
  // Per-client rate limiting: each client prefix to one shard's socket of
  // every listen address (io::AttachPrefixSteering). Call after Open and
  // after SetListeners; `group_size` is the number of shards.
  absl::Status SteerByClientPrefix(uint32_t group_size, int v4_prefix, int v6_prefix);
  // Addresses currently accepting or able to (not the ones still closing).
  std::vector<io::SocketAddress> listen_addresses() const;
  // Listeners removed by SetListeners that are not closed yet.
  size_t closing_listeners() const;

  // Completions routed by the shard.
  void OnAccept(uint32_t listener_index, const io::Completion& completion);
  void OnReceive(uint32_t client_index, const io::Completion& completion);
  void OnSendDone(uint32_t client_index, const io::Completion& completion);

  // End of a loop iteration: one send per client with queued answers.
  void Flush();
  // Closes clients idle for longer than the idle timeout (RFC 7766 §6.2.3),
  // and those whose current message is incomplete past the message timeout.
  void ExpireIdle();
  // A reload: the timeouts apply from the next expiry check.
  void SetIdleTimeout(std::chrono::milliseconds timeout) { limits_.idle_timeout = timeout; }
  void SetMessageTimeout(std::chrono::milliseconds timeout) { limits_.message_timeout = timeout; }

  // Replier half (through Frontends).
  std::span<uint8_t> BeginReply(const ClientRef& client, size_t max_length);
  void CommitReply(const ClientRef& client, size_t length);
  void QueryDone(const ClientRef& client);
  // The client connection's local address (getsockname at accept).
  const sockaddr* LocalAddress(const ClientRef& client) const {
    if (client.tcp_client >= clients_.size()) return nullptr;
    const Client& c = clients_[client.tcp_client];
    return c.generation == client.tcp_generation
               ? reinterpret_cast<const sockaddr*>(&c.local)
               : nullptr;
  }

  size_t open_clients() const { return clients_.size() - free_clients_.size(); }
  // Clients with answers queued for the next Flush (each once).
  size_t clients_to_flush() const { return dirty_.size(); }
  // Bytes of answer buffers given back to the kernel at client closes.
  uint64_t returned_bytes() const { return returned_bytes_; }

 private:
  enum class State : uint8_t { kFree, kOpen, kClosing };
  // One listening socket; its index is the accept's UserData index, its
  // generation changes when the slot is reused.
  struct Listener {
    State state = State::kFree;
    uint32_t generation = 1;
    io::UniqueFd fd;
    io::SocketAddress address;
    bool shared = false;     // a duplicate of an inherited socket other shards accept on
    bool accepting = false;  // a multishot accept is armed (its last completion not seen)
  };
  struct Client {
    // The buffers are slots of the region (Open() points them there).
    Client() : framer(std::span<uint8_t>{}) {}
    State state = State::kFree;
    uint32_t generation = 1;
    int ops_in_flight = 0;  // recycled only at zero: SQEs point into this client
    io::UniqueFd fd;
    dns::StreamFramer framer;
    // Answers: [0, send_end) is being sent (or was, once `send` is idle),
    // [send_end, out_end) waits for the next send.
    uint8_t* out = nullptr;  // kOutCapacity bytes in the region
    size_t send_end = 0;
    size_t out_end = 0;
    size_t out_high = 0;  // the most of `out` used since accept
    io::StreamSend send;
    bool recv_in_flight = false;
    bool dirty = false;           // on dirty_ (answers queued this iteration)
    bool read_closed = false;     // client sent FIN: answer what is pending, then close
    bool reading_paused = false;  // back-pressure, see TcpLimits
    uint32_t queries_in_flight = 0;
    sockaddr_storage peer{};  // for the forwarder's rate limiter
    socklen_t peer_length = 0;
    sockaddr_storage local{};  // where the client connected to (dnstap)
  };

  bool ShouldAccept(const Listener& listener) const;
  void ArmAccept(uint32_t listener_index);
  void MaybeCloseListener(uint32_t listener_index);
  absl::Status AddInherited(const io::InheritedListener& listener);
  Client* Find(const ClientRef& ref);
  void ArmReceive(uint32_t index);
  void StartSend(uint32_t index);
  void Close(uint32_t index);
  void MaybeRecycle(uint32_t index);
  void Touch(uint32_t index);
  // Near the cap, closes the least recently active client that waits for
  // nothing (no query in flight, no answer unsent), so that a newcomer finds
  // room: RFC 7766 §6.2.3 lets a server close idle connections under
  // resource pressure. Connections opened and left idle by a flood are
  // evicted oldest first, while a real client, which sends its query at
  // once, is busy, not idle, until answered. Never `newcomer`, the client
  // just accepted.
  void EvictIdleForRoom(uint32_t newcomer);
  // Hands the buffered complete queries to the sink while the client is
  // below its in-flight limit, then settles.
  void HandUp(uint32_t index);
  // After reading: starts, keeps or ends the timer of a partial message;
  // `completed` says whether a message ended in what was just read.
  void TrackPartial(uint32_t index, bool completed);
  // Drops what was sent: moves the queued answers to the front.
  static void Compact(Client& client);
  // Resumes reading or closes a half-closed client once it has nothing left.
  void Settle(uint32_t index);
  // Reads and hands up no more: at its in-flight limit, or too many of its
  // answers unsent.
  bool Backlogged(const Client& client) const {
    return client.queries_in_flight >= limits_.max_queries_per_client ||
           client.out_end - client.send_end >= kOutPauseThreshold;
  }
  bool Drained(const Client& client) const {
    return client.queries_in_flight == 0 && client.out_end == 0 && !client.send.in_flight();
  }

  io::Reactor& reactor_;
  const io::LoopClock& clock_;
  const Acl& acl_;
  metrics::ShardStats& stats_;
  int shard_index_;
  QuerySink* sink_ = nullptr;
  TcpLimits limits_;
  bool started_ = false;
  bool intake_stopped_ = false;
  bool inherited_ = false;

  std::vector<Listener> listeners_;
  std::vector<Client> clients_;
  std::vector<uint32_t> free_clients_;
  std::vector<uint32_t> dirty_;
  // Idle and message timers (the message's first byte: slowloris).
  ConnectionTimers timers_;
  // Every client's buffers: max_clients x kClientBytes, reserved with mmap
  // (MAP_NORESERVE) and committed page by page as they are touched.
  uint8_t* region_ = nullptr;
  size_t region_bytes_ = 0;
  uint64_t returned_bytes_ = 0;
};

}  // namespace dotproxy::frontend
