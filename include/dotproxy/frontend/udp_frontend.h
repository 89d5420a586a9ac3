#pragma once
// The UDP front end of a shard: one SO_REUSEPORT socket per listen address
// (or the sockets inherited from systemd),
// a multishot datagram receive on each (the reactor's provided buffers), the
// client ACL, and a fixed pool of reply slots sent as one datagram each.
// Queries go to the QuerySink; answers come back through the Replier half.
// Shard thread only; everything is sized at Open() and never allocates.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "dotproxy/frontend/acl.h"
#include "dotproxy/frontend/client_ref.h"
#include "dotproxy/io/clock.h"
#include "dotproxy/io/reactor.h"
#include "dotproxy/io/socket.h"
#include "dotproxy/io/standing_queue.h"
#include "dotproxy/metrics/stats.h"

namespace dotproxy::frontend {

class UdpFrontend {
 public:
  UdpFrontend(io::Reactor& reactor, const Acl& acl, metrics::ShardStats& stats, int shard_index);

  // Binds one socket per `listen` address (SO_REUSEPORT; IP_FREEBIND with
  // `freebind`, also for sockets SetListeners adds) and sizes
  // `reply_slots`. When `inherited` holds any socket (socket activation, of
  // either transport), those replace `listen`: this front end reads the
  // datagram ones, shard 0 through a duplicate of the passed socket, other
  // shards through a sibling SO_REUSEPORT socket when the passed one has
  // SO_REUSEPORT (else, or when the kernel refuses the sibling, through a
  // duplicate too: every shard then reads the one shared socket).
  absl::Status Open(std::span<const io::SocketAddress> listen,
                    std::span<const io::InheritedListener> inherited, int socket_buffer_bytes,
                    size_t reply_slots, bool freebind = false);
  void set_sink(QuerySink* sink) { sink_ = sink; }
  // Sheds datagrams that waited too long in the kernel's receive buffer
  // (their SO_TIMESTAMPNS stamp against `clock`'s wall time), by the same
  // standing-queue rule as the forwarder's capacity queue: when the shard
  // cannot keep up, reading and dropping a stale datagram costs a small
  // part of answering it, so the backlog drains and what is answered is
  // fresh, instead of every query waiting for the whole buffer and its
  // client having given up. Off until called (unit tests).
  void EnableIntakeShedding(const io::LoopClock* clock, const io::StandingQueueSettings& settings) {
    clock_ = clock;
    intake_queue_ = io::StandingQueue(settings, clock->now());
    rate_window_start_ = clock->now();
  }

  // Arms the datagram receives.
  void Start();
  // Stops intake (cancels receives); sockets stay open for the last answers.
  void StopIntake();
  bool idle() const { return free_replies_.size() == replies_.size(); }

  // Changes the listen addresses of a running front end (SIGHUP reload).
  // Sockets of addresses in both the old and the new list are kept as they
  // are. New addresses are bound first, all or nothing: on an error nothing
  // changed and the error names the address. Then removed addresses stop
  // intake at once (their receive is cancelled); each such socket still
  // carries the answers to queries it received and is closed only once its
  // receive has completed, its replies are sent and its queries are done
  // (QueryDone), so nothing in flight points at a closed descriptor.
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
  // Addresses currently receiving (not the ones still closing), for tests
  // and logs.
  std::vector<io::SocketAddress> listen_addresses() const;
  // Sockets removed by SetListeners that are not closed yet.
  size_t closing_sockets() const;

  // While intake stands, the shard's loop reports, each turn, how long it
  // stayed off its CPU at a time since the last one (wall time less the
  // thread's CPU time, over its context switches): the cut buffer must
  // hold what the shard serves across its longest such stall, and need
  // hold no more (see CutDatagrams).
  bool intake_standing() const { return buffers_shrunk_; }
  void NoteOffCpu(std::chrono::nanoseconds off_cpu) {
    longest_off_cpu_ = std::max(longest_off_cpu_, off_cpu);
  }

  // The least a cut buffer holds: a loop turn's batch.
  static constexpr int64_t kCutFloor = 16;
  // What a shard that served `served_per_window` datagrams in `window`
  // serves in twice `longest_stall`, within [kCutFloor, max(kCutFloor, cap)].
  static int64_t CutDatagramsFor(int64_t served_per_window, std::chrono::nanoseconds window,
                                 std::chrono::nanoseconds longest_stall, int64_t cap);

  // Completions routed by the shard.
  void OnReceive(uint32_t socket_index, const io::Completion& completion);
  void OnSendDone(uint32_t reply_index, const io::Completion& completion);

  // Replier half (through Frontends).
  std::span<uint8_t> BeginReply(const ClientRef& client, size_t max_length);
  void CommitReply(const ClientRef& client, size_t length);
  void QueryDone(const ClientRef& client);
  // The listen address of the socket the client's query came in on.
  const sockaddr* LocalAddress(const ClientRef& client) const {
    return client.udp_socket < sockets_.size() ? sockets_[client.udp_socket].address.get()
                                               : nullptr;
  }

 private:
  struct Reply {
    io::MessageHeader header;
    sockaddr_in6 destination{};
    socklen_t destination_length = 0;
    uint16_t socket = 0;
    uint8_t data[kMaxUdpReply];
  };
  enum class SocketState : uint8_t { kFree, kOpen, kClosing };
  // One listening socket. ClientRef::udp_socket is its index; a slot is
  // reused only once nothing refers to it (see SetListeners).
  struct Socket {
    SocketState state = SocketState::kFree;
    io::UniqueFd fd;
    io::SocketAddress address;
    bool inherited = false;  // from socket activation: never shut down here
    bool receiving = false;  // a receive is armed (its last completion not seen)
    uint32_t sends_in_flight = 0;
    uint32_t queries_in_flight = 0;
    int restore_receive_buffer = 0;  // while shrunk: the size to set back
    uint32_t last_drops = 0;         // the kernel's drop count at the last read
  };

  void Arm(uint32_t index);
  void MaybeClose(uint32_t index);
  // The datagram waited past the intake queue's bound (and is counted).
  bool Stale(const io::Datagram& datagram, Socket& socket);
  // While intake stands, each socket's receive buffer holds a few ms of
  // what the shard serves (CutDatagrams), so the kernel drops the excess
  // for free instead of the shard reading and dropping it (which would
  // spend the capacity the flood already exceeds); restored once the
  // queue is short again.
  void ShrinkReceiveBuffers(bool shrink);
  // At most an eighth of overload_wait of the last window's intake.
  int64_t CutCap() const;
  // What the shard serves in twice its longest stall off the CPU in the
  // last window, within [kCutFloor, CutCap()].
  int64_t CutDatagrams() const;
  void CutReceiveBuffers(int64_t datagrams);
  absl::Status AddInherited(const io::InheritedListener& listener, int socket_buffer_bytes);

  io::Reactor& reactor_;
  const Acl& acl_;
  metrics::ShardStats& stats_;
  int shard_index_;
  QuerySink* sink_ = nullptr;
  const io::LoopClock* clock_ = nullptr;  // null: no intake shedding
  io::StandingQueue intake_queue_;
  bool buffers_shrunk_ = false;
  // The longest time off the CPU reported in the current window.
  std::chrono::nanoseconds longest_off_cpu_{0};
  // Datagrams served (not shed) in the current and the last 100 ms window:
  // the shard's intake rate, which sizes shrunk buffers.
  io::Clock::time_point rate_window_start_{};
  uint32_t served_in_window_ = 0;
  uint32_t served_last_window_ = 0;
  bool started_ = false;
  bool intake_stopped_ = false;
  bool inherited_ = false;
  int socket_buffer_bytes_ = 0;
  bool freebind_ = false;

  std::vector<Socket> sockets_;
  std::vector<Reply> replies_;
  std::vector<uint32_t> free_replies_;
  uint32_t open_reply_ = UINT32_MAX;  // between BeginReply and CommitReply
};

}  // namespace dotproxy::frontend
