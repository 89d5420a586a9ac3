#include "dotproxy/shard/shard.h"

#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dotproxy/cache/packet_cache.h"
#include "dotproxy/control/alloc_counter.h"
#include "dotproxy/control/log.h"
#include "dotproxy/dns/edns.h"
#include "dotproxy/dns/message.h"
#include "dotproxy/frontend/client.h"
#include "dotproxy/io/acl.h"
#include "dotproxy/io/ring.h"
#include "dotproxy/io/socket.h"
#include "dotproxy/tls/client.h"
#include "dotproxy/upstream/connection.h"
#include "dotproxy/upstream/health.h"
#include "dotproxy/upstream/id_table.h"

namespace dotproxy::shard {
namespace {

using control::Log;
using control::Severity;
using frontend::kMaxQuerySize;
using frontend::kMaxUdpReply;
using frontend::TcpClient;
using frontend::TcpClientState;
using frontend::UdpReply;
using upstream::Clock;
using upstream::Connection;
using upstream::ConnectionState;

constexpr uint32_t kNone = UINT32_MAX;

// Sizing of per-shard pools, fixed at start so the query path never allocates.
constexpr unsigned kRingEntries = 4096;
constexpr unsigned kCqEntries = 16384;
constexpr unsigned kUdpBufferCount = 2048;  // provided buffers for datagrams
constexpr unsigned kUdpBufferSize = 2048;   // header + name + payload per buffer
constexpr unsigned kUdpReplySlots = 2048;
constexpr uint16_t kUdpBufferGroup = 0;
// RFC 7766 §6.2.1.1 lets a client pipeline; past this many unanswered
// queries we stop reading its socket until answers drain.
constexpr uint32_t kMaxQueriesPerTcpClient = 128;
// A client that does not read its answers may not make us buffer without end.
constexpr size_t kMaxTcpClientBacklog = 1 << 20;
constexpr auto kDrainBudget = std::chrono::milliseconds(1500);
constexpr auto kMaxWait = std::chrono::milliseconds(100);
constexpr auto kFailureLogInterval = std::chrono::seconds(10);
constexpr auto kHealthLogInterval = std::chrono::seconds(5);
// Consecutive query timeouts on one connection, with no answer in between,
// after which the connection is presumed broken and closed.
constexpr int kConnectionTimeoutLimit = 3;

// What a completion belongs to, packed in user_data: op (8 bits), object
// index (24 bits), object generation (32 bits). The generation guards
// against a completion for an object that was recycled.
enum class Op : uint8_t {
  kUdpRecv = 1,
  kUdpSend,
  kAccept,
  kClientRecv,
  kClientSend,
  kUpstreamConnect,
  kUpstreamRecv,
  kUpstreamSend,
  kCancel,
};

inline uint64_t PackUserData(Op op, uint32_t index, uint32_t generation) {
  return uint64_t{static_cast<uint8_t>(op)} << 56 | uint64_t{index & 0xffffff} << 32 | generation;
}
inline Op UserDataOp(uint64_t data) { return static_cast<Op>(data >> 56); }
inline uint32_t UserDataIndex(uint64_t data) { return (data >> 32) & 0xffffff; }
inline uint32_t UserDataGeneration(uint64_t data) { return static_cast<uint32_t>(data); }

enum class Transport : uint8_t { kUdp, kTcp };

// Where an answer goes back to.
struct ClientRef {
  Transport transport = Transport::kUdp;
  uint16_t udp_socket = 0;
  uint16_t udp_limit = dns::kClassicUdpLimit;
  const sockaddr* udp_address = nullptr;
  socklen_t udp_address_length = 0;
  uint32_t tcp_client = 0;
  uint32_t tcp_generation = 0;
};

// kClient: a client waits for the answer. kProbe: a health probe of an
// unhealthy upstream. kPrefetch: a background cache refresh.
enum class SlotKind : uint8_t { kClient, kProbe, kPrefetch };

// A forwarded query awaiting its answer.
struct QuerySlot {
  bool in_use = false;
  SlotKind kind = SlotKind::kClient;
  Transport transport = Transport::kUdp;
  bool has_edns = false;
  bool dnssec_ok = false;
  uint8_t attempt = 1;  // 2 once retried: a query is retried at most once
  bool stale_candidate = false;  // the cache holds an expired answer (RFC 8767)
  uint16_t client_id = 0;
  uint16_t udp_socket = 0;
  uint16_t udp_limit = 0;
  socklen_t client_address_length = 0;
  sockaddr_in6 client_address{};
  uint32_t tcp_client = 0;
  uint32_t tcp_generation = 0;
  int upstream = -1;
  uint32_t connection = kNone;
  uint16_t upstream_id = 0;
  uint16_t query_length = 0;
  uint16_t question_length = 0;
  Clock::time_point sent_at{};
  Clock::time_point attempt_deadline{};
  Clock::time_point deadline{};
  // Two lists, each in insertion order, which is deadline order because all
  // queries share one timeout: every slot is on the final-deadline list; a
  // first attempt that may still be retried elsewhere is also on the
  // attempt list.
  uint32_t prev = kNone;
  uint32_t next = kNone;
  uint32_t attempt_prev = kNone;
  uint32_t attempt_next = kNone;
  bool on_attempt_list = false;
  // Waiting for connection capacity (every connection at its in-flight cap);
  // linked through attempt_prev/attempt_next, unused until dispatched.
  bool on_wait_list = false;
  // The query as sent upstream (EDNS rewritten, padded), with the current
  // upstream ID; the client's question bytes and letter case untouched.
  uint8_t query[kMaxQuerySize + dns::kUpstreamQueryGrowth];
};

struct SlotList {
  uint32_t head = kNone;
  uint32_t tail = kNone;
};

template <uint32_t QuerySlot::*Prev, uint32_t QuerySlot::*Next>
void ListAppend(std::vector<QuerySlot>& slots, SlotList& list, uint32_t index) {
  QuerySlot& slot = slots[index];
  slot.*Prev = list.tail;
  slot.*Next = kNone;
  if (list.tail != kNone) {
    slots[list.tail].*Next = index;
  } else {
    list.head = index;
  }
  list.tail = index;
}

template <uint32_t QuerySlot::*Prev, uint32_t QuerySlot::*Next>
void ListRemove(std::vector<QuerySlot>& slots, SlotList& list, uint32_t index) {
  QuerySlot& slot = slots[index];
  if (slot.*Prev != kNone) {
    slots[slot.*Prev].*Next = slot.*Next;
  } else {
    list.head = slot.*Next;
  }
  if (slot.*Next != kNone) {
    slots[slot.*Next].*Prev = slot.*Prev;
  } else {
    list.tail = slot.*Prev;
  }
  slot.*Prev = slot.*Next = kNone;
}

// Where the answer to `slot` goes.
ClientRef ClientRefOf(const QuerySlot& slot) {
  ClientRef client;
  client.transport = slot.transport;
  client.udp_socket = slot.udp_socket;
  client.udp_limit = slot.udp_limit;
  client.udp_address = reinterpret_cast<const sockaddr*>(&slot.client_address);
  client.udp_address_length = slot.client_address_length;
  client.tcp_client = slot.tcp_client;
  client.tcp_generation = slot.tcp_generation;
  return client;
}

// What the shard keeps per configured upstream.
struct UpstreamRuntime {
  tls::PeerPolicy policy;
  tls::ResumptionCache resumption;
  std::vector<uint32_t> connections;  // indices into ShardLoop::connections_
  UpstreamStats* stats = nullptr;
  // Connection-level failures back off per upstream, not per connection.
  int connect_failures = 0;
  Clock::time_point retry_at{};
  bool reconnect_pending = false;  // reconnect in the background when backoff ends
  Clock::time_point last_failure_log{};
  Clock::time_point last_health_log{};
  int health_logs_suppressed = 0;
  bool logged_first_connect = false;
};

struct UdpSocket {
  io::UniqueFd fd;
  msghdr recv_template{};
};

struct TcpListener {
  io::UniqueFd fd;
};

}  // namespace

// The loop and all state of one shard. Private to this file.
class ShardLoop {
 public:
  ShardLoop(int index, const config::Config& config, ShardStats& stats,
            UpstreamStats* upstream_stats, std::atomic<bool>& stop_requested)
      : index_(index),
        config_(config),
        stats_(stats),
        upstream_stats_(upstream_stats),
        stop_requested_(stop_requested),
        acl_(config.allow),
        health_(Priorities(config), upstream::HealthPolicy{}) {}
  // The ring goes first: closing it cancels every operation still pointing
  // into the buffers below, before they are freed.
  ~ShardLoop() {
    udp_buffers_.reset();
    ring_.reset();
  }

  absl::Status Setup();
  void Run();

 private:
  // --- intake ---
  void ArmUdpRecv(uint32_t socket_index);
  void OnUdpRecv(uint32_t socket_index, const io_uring_cqe& cqe);
  void HandleQuery(std::span<uint8_t> wire, const ClientRef& client);
  void ReplyError(std::span<const uint8_t> query, const dns::QueryInfo& info, dns::Rcode rcode,
                  const ClientRef& client);
  void SendToClient(const ClientRef& client, std::span<const uint8_t> wire);
  // A free UDP reply buffer addressed to `client`, or null (counted).
  UdpReply* AcquireUdpReply(const ClientRef& client, uint32_t& reply_index);
  void SubmitUdpReply(const ClientRef& client, uint32_t reply_index, size_t length);
  // Answers from cache entry `entry`; false if nothing could be written.
  bool ServeFromCache(uint32_t entry, const ClientRef& client, uint16_t id,
                      std::span<const uint8_t> question, size_t udp_limit, bool stale);
  void StartPrefetch(std::span<const uint8_t> query, const dns::QueryInfo& info);
  bool TryServeStale(QuerySlot& slot);
  void OnUdpSendDone(uint32_t reply_index, const io_uring_cqe& cqe);

  // --- TCP clients ---
  void ArmAccept(uint32_t listener_index);
  void OnAccept(uint32_t listener_index, const io_uring_cqe& cqe);
  void ArmClientRecv(uint32_t client_index);
  void OnClientRecv(uint32_t client_index, const io_uring_cqe& cqe);
  void FlushClient(uint32_t client_index);
  void OnClientSendDone(uint32_t client_index, const io_uring_cqe& cqe);
  void CloseClient(uint32_t client_index);
  void MaybeFinishClient(uint32_t client_index);
  void TouchClient(uint32_t client_index);
  void UnlinkIdle(uint32_t client_index);

  // --- upstreams ---
  static std::vector<int> Priorities(const config::Config& config);
  bool UpstreamUsable(int upstream);
  Connection* AcquireConnection(int upstream);
  bool Dispatch(uint32_t slot_index, int exclude, bool allow_excluded);
  bool AnyUpstreamAlive() const;
  void QueueForCapacity(uint32_t slot_index);
  void DispatchWaiting();
  void QueueOnConnection(QuerySlot& slot, int upstream, Connection& conn);
  void Unbind(QuerySlot& slot);
  void SendProbe(int upstream);
  void UpstreamFailed(int upstream, const std::string& reason);
  void NoteHealth(int upstream, bool changed);
  void StartConnect(uint32_t conn_index);
  void OnUpstreamConnect(uint32_t conn_index, const io_uring_cqe& cqe);
  void DriveHandshake(uint32_t conn_index);
  void ArmUpstreamRecv(uint32_t conn_index);
  void OnUpstreamRecv(uint32_t conn_index, const io_uring_cqe& cqe);
  void ReadUpstreamPlaintext(uint32_t conn_index);
  void OnUpstreamAnswer(Connection& conn, std::span<uint8_t> answer);
  void FlushUpstream(uint32_t conn_index);
  void StartUpstreamSend(uint32_t conn_index);
  void OnUpstreamSendDone(uint32_t conn_index, const io_uring_cqe& cqe);
  void CloseConnection(uint32_t conn_index, bool failure, const std::string& reason);
  void FinishClose(uint32_t conn_index);
  std::chrono::milliseconds IdleTimeout(const Connection& conn) const;
  void NoteConnectionTimeout(uint32_t conn_index);

  // --- slots and timers ---
  uint32_t AllocateSlot();
  void ReleaseSlot(uint32_t slot_index);
  void FailSlot(uint32_t slot_index, std::atomic<uint64_t>& counter);
  void RunTimers();
  void BeginDrain();
  void CancelFd(int fd);
  void ProcessCompletions();

  int index_;
  const config::Config& config_;
  ShardStats& stats_;
  UpstreamStats* upstream_stats_;
  std::atomic<bool>& stop_requested_;
  io::Acl acl_;
  upstream::HealthTracker health_;
  dns::UpstreamQueryOptions query_options_;
  std::unique_ptr<cache::PacketCache> cache_;  // null when --cache-size 0
  uint32_t now_seconds_ = 0;  // monotonic seconds, for cache TTLs

  std::unique_ptr<io::Ring> ring_;
  std::unique_ptr<io::BufferRing> udp_buffers_;
  std::unique_ptr<tls::ClientContext> tls_context_;
  upstream::FastRng rng_;
  Clock::time_point now_ = Clock::now();

  std::vector<UdpSocket> udp_sockets_;
  std::vector<TcpListener> tcp_listeners_;

  std::vector<UdpReply> udp_replies_;
  std::vector<uint32_t> free_udp_replies_;

  std::vector<TcpClient> tcp_clients_;
  std::vector<uint32_t> free_tcp_clients_;
  uint32_t idle_head_ = kNone;
  uint32_t idle_tail_ = kNone;
  std::vector<uint32_t> dirty_clients_;

  std::vector<UpstreamRuntime> upstreams_;
  // max_connections_per_upstream per upstream, grouped by upstream.
  std::vector<std::unique_ptr<Connection>> connections_;
  std::vector<uint32_t> orphaned_slots_;  // scratch for CloseConnection

  std::vector<QuerySlot> slots_;
  std::vector<uint32_t> free_slots_;
  SlotList deadline_list_;
  SlotList attempt_list_;
  SlotList wait_list_;  // queries waiting for connection capacity
  size_t slots_in_use_ = 0;
  // Retrying elsewhere needs somewhere else: with one upstream a query keeps
  // its whole deadline on its first attempt.
  bool retry_on_timeout_ = false;

  bool draining_ = false;
  Clock::time_point drain_deadline_{};
  bool udp_sendto_supported_ = true;  // cleared on the first -EINVAL
};

// ---------------------------------------------------------------------------
// Setup

absl::Status ShardLoop::Setup() {
  ring_ = std::make_unique<io::Ring>();
  if (auto status = ring_->Init(kRingEntries, kCqEntries); !status.ok()) return status;
  udp_buffers_ = std::make_unique<io::BufferRing>();
  if (auto status = udp_buffers_->Init(*ring_, kUdpBufferGroup, kUdpBufferCount, kUdpBufferSize);
      !status.ok()) {
    return status;
  }
  auto context = tls::ClientContext::Create(config_.ca_file);
  if (!context.ok()) return context.status();
  tls_context_ = *std::move(context);

  for (const io::SocketAddress& address : config_.listen) {
    auto udp = io::OpenUdpListener(address, config_.udp_socket_buffer);
    if (!udp.ok()) return udp.status();
    UdpSocket& socket = udp_sockets_.emplace_back();
    socket.fd = *std::move(udp);
    auto tcp = io::OpenTcpListener(address, 1024);
    if (!tcp.ok()) return tcp.status();
    tcp_listeners_.emplace_back().fd = *std::move(tcp);
  }

  udp_replies_ = std::vector<UdpReply>(kUdpReplySlots);
  for (uint32_t i = kUdpReplySlots; i-- > 0;) free_udp_replies_.push_back(i);

  tcp_clients_ = std::vector<TcpClient>(config_.max_tcp_clients);
  for (uint32_t i = config_.max_tcp_clients; i-- > 0;) free_tcp_clients_.push_back(i);
  dirty_clients_.reserve(config_.max_tcp_clients);

  slots_ = std::vector<QuerySlot>(config_.max_inflight);
  free_slots_.reserve(config_.max_inflight);
  for (uint32_t i = config_.max_inflight; i-- > 0;) free_slots_.push_back(i);

  upstreams_ = std::vector<UpstreamRuntime>(config_.upstreams.size());
  for (size_t i = 0; i < config_.upstreams.size(); ++i) {
    const config::UpstreamConfig& upstream = config_.upstreams[i];
    UpstreamRuntime& runtime = upstreams_[i];
    runtime.policy.auth_name = upstream.auth_name;
    runtime.policy.pins = upstream.pins;
    runtime.policy.pin_only = upstream.pin_only;
    runtime.stats = &upstream_stats_[i];
    Set(runtime.stats->healthy, 1);
    for (int c = 0; c < config_.max_connections_per_upstream; ++c) {
      auto conn = std::make_unique<Connection>();
      conn->upstream_index = static_cast<int>(i);
      runtime.connections.push_back(static_cast<uint32_t>(connections_.size()));
      connections_.push_back(std::move(conn));
    }
  }
  orphaned_slots_.reserve(65536);
  if (config_.cache_size > 0) {
    cache::CacheConfig cache_config;
    cache_config.entries = std::max<size_t>(1, config_.cache_size / static_cast<size_t>(config_.threads));
    cache_config.min_ttl = config_.cache_min_ttl;
    cache_config.max_ttl = config_.cache_max_ttl;
    cache_config.negative_max_ttl = config_.cache_negative_max_ttl;
    cache_config.servfail_ttl = config_.cache_servfail_ttl;
    cache_config.stale_window = config_.cache_stale_window;
    cache_ = std::make_unique<cache::PacketCache>(cache_config);
  }
  retry_on_timeout_ = config_.upstreams.size() > 1;
  query_options_.pad = config_.pad_queries;
  query_options_.strip_client_subnet = config_.strip_client_subnet;
  query_options_.request_keepalive = true;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// The loop

void ShardLoop::Run() {
  for (uint32_t i = 0; i < udp_sockets_.size(); ++i) ArmUdpRecv(i);
  for (uint32_t i = 0; i < tcp_listeners_.size(); ++i) ArmAccept(i);
  // Open one connection per upstream at start so the first queries find it
  // ready; more open on demand when in-flight caps are reached.
  for (const UpstreamRuntime& upstream : upstreams_) StartConnect(upstream.connections.front());

  while (true) {
    now_ = Clock::now();
    now_seconds_ = static_cast<uint32_t>(
        std::chrono::duration_cast<std::chrono::seconds>(now_.time_since_epoch()).count());
    if (!draining_ && stop_requested_.load(std::memory_order_relaxed)) BeginDrain();
    RunTimers();
    if (draining_ && (slots_in_use_ == 0 || now_ >= drain_deadline_)) break;

    // End of batch: one TLS write per upstream with queued queries, answers
    // to TCP clients, then one submit for everything (UDP replies included).
    if (wait_list_.head != kNone) DispatchWaiting();
    for (uint32_t i = 0; i < connections_.size(); ++i) FlushUpstream(i);
    for (uint32_t client : dirty_clients_) FlushClient(client);
    dirty_clients_.clear();
    udp_buffers_->Publish();

    auto wait = kMaxWait;
    if (deadline_list_.head != kNone) {
      auto next_deadline = slots_[deadline_list_.head].deadline;
      if (attempt_list_.head != kNone) {
        next_deadline = std::min(next_deadline, slots_[attempt_list_.head].attempt_deadline);
      }
      const auto until = std::chrono::duration_cast<std::chrono::milliseconds>(next_deadline - now_);
      wait = std::clamp(until + std::chrono::milliseconds(1), std::chrono::milliseconds(1), kMaxWait);
    }
    __kernel_timespec timeout{};
    timeout.tv_sec = wait.count() / 1000;
    timeout.tv_nsec = (wait.count() % 1000) * 1000000;
    io_uring_cqe* cqe = nullptr;
    io_uring_submit_and_wait_timeout(ring_->get(), &cqe, 1, &timeout, nullptr);
    now_ = Clock::now();
    ProcessCompletions();
  }

  // Whatever is still in flight gets SERVFAIL, then a last flush.
  while (deadline_list_.head != kNone) FailSlot(deadline_list_.head, stats_.servfail_shutdown);
  for (uint32_t client : dirty_clients_) FlushClient(client);
  dirty_clients_.clear();
  io_uring_submit(ring_->get());
  // Give the final replies a moment to leave (UDP sends complete inline).
  const auto flush_deadline = Clock::now() + std::chrono::milliseconds(200);
  while (free_udp_replies_.size() < kUdpReplySlots && Clock::now() < flush_deadline) {
    __kernel_timespec timeout{.tv_sec = 0, .tv_nsec = 20 * 1000000};
    io_uring_cqe* cqe = nullptr;
    io_uring_submit_and_wait_timeout(ring_->get(), &cqe, 1, &timeout, nullptr);
    ProcessCompletions();
  }
  for (auto& conn : connections_) {
    if (conn->fd) ::shutdown(conn->fd.get(), SHUT_RDWR);
  }
}

void ShardLoop::ProcessCompletions() {
  unsigned head;
  unsigned seen = 0;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(ring_->get(), head, cqe) {
    ++seen;
    const uint64_t data = cqe->user_data;
    const uint32_t index = UserDataIndex(data);
    switch (UserDataOp(data)) {
      case Op::kUdpRecv: OnUdpRecv(index, *cqe); break;
      case Op::kUdpSend: OnUdpSendDone(index, *cqe); break;
      case Op::kAccept: OnAccept(index, *cqe); break;
      case Op::kClientRecv:
      case Op::kClientSend: {
        TcpClient& client = tcp_clients_[index];
        if (client.generation != UserDataGeneration(data)) break;  // cannot happen: see FinishClient
        if (UserDataOp(data) == Op::kClientRecv) {
          OnClientRecv(index, *cqe);
        } else {
          OnClientSendDone(index, *cqe);
        }
        break;
      }
      case Op::kUpstreamConnect:
      case Op::kUpstreamRecv:
      case Op::kUpstreamSend: {
        Connection& conn = *connections_[index];
        if (conn.generation != UserDataGeneration(data)) break;
        if (UserDataOp(data) == Op::kUpstreamConnect) {
          OnUpstreamConnect(index, *cqe);
        } else if (UserDataOp(data) == Op::kUpstreamRecv) {
          OnUpstreamRecv(index, *cqe);
        } else {
          OnUpstreamSendDone(index, *cqe);
        }
        break;
      }
      case Op::kCancel: break;
    }
  }
  io_uring_cq_advance(ring_->get(), seen);
  Bump(stats_.loop_iterations);
  Bump(stats_.completions, seen);
  if (io_uring_cq_has_overflow(ring_->get())) io_uring_get_events(ring_->get());
}

void ShardLoop::CancelFd(int fd) {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(sqe, PackUserData(Op::kCancel, 0, 0));
}

void ShardLoop::BeginDrain() {
  draining_ = true;
  drain_deadline_ = now_ + kDrainBudget;
  Log(Severity::kInfo, "shard %d: stopping; %d queries in flight", index_,
      static_cast<int>(slots_in_use_));
  // Probes and prefetches have no client waiting: drop them now.
  for (uint32_t i = deadline_list_.head; i != kNone;) {
    const uint32_t next = slots_[i].next;
    if (slots_[i].kind != SlotKind::kClient) FailSlot(i, stats_.servfail_shutdown);
    i = next;
  }
  // Stop intake: cancel the multishot receives and accepts. UDP sockets stay
  // open to carry the remaining answers.
  for (auto& socket : udp_sockets_) CancelFd(socket.fd.get());
  for (auto& listener : tcp_listeners_) {
    CancelFd(listener.fd.get());
    ::shutdown(listener.fd.get(), SHUT_RDWR);
  }
}

// ---------------------------------------------------------------------------
// UDP intake

void ShardLoop::ArmUdpRecv(uint32_t socket_index) {
  UdpSocket& socket = udp_sockets_[socket_index];
  socket.recv_template = {};
  // Every buffer reserves room for a full IPv6 source address.
  socket.recv_template.msg_namelen = sizeof(sockaddr_in6);
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_recvmsg_multishot(sqe, socket.fd.get(), &socket.recv_template, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = udp_buffers_->group_id();
  io_uring_sqe_set_data64(sqe, PackUserData(Op::kUdpRecv, socket_index, 0));
}

void ShardLoop::OnUdpRecv(uint32_t socket_index, const io_uring_cqe& cqe) {
  UdpSocket& socket = udp_sockets_[socket_index];
  // Data first: the last CQE of a multishot may still carry a datagram.
  if (cqe.res > 0 && (cqe.flags & IORING_CQE_F_BUFFER)) {
    const uint16_t buffer_id = static_cast<uint16_t>(cqe.flags >> IORING_CQE_BUFFER_SHIFT);
    uint8_t* buffer = udp_buffers_->Buffer(buffer_id);
    io_uring_recvmsg_out* out =
        io_uring_recvmsg_validate(buffer, cqe.res, &socket.recv_template);
    if (out != nullptr && !draining_) {
      if (out->flags & MSG_TRUNC) {
        Bump(stats_.dropped_oversized);
      } else {
        Bump(stats_.udp_queries);
        auto* payload = static_cast<uint8_t*>(io_uring_recvmsg_payload(out, &socket.recv_template));
        const size_t length =
            io_uring_recvmsg_payload_length(out, cqe.res, &socket.recv_template);
        ClientRef client;
        client.transport = Transport::kUdp;
        client.udp_socket = static_cast<uint16_t>(socket_index);
        client.udp_address = static_cast<const sockaddr*>(io_uring_recvmsg_name(out));
        client.udp_address_length = std::min<socklen_t>(out->namelen, sizeof(sockaddr_in6));
        if (acl_.Allows(client.udp_address)) {
          HandleQuery({payload, length}, client);
        } else {
          Bump(stats_.dropped_acl);  // no reply: a spoofed source gets nothing
        }
      }
    }
    udp_buffers_->Recycle(buffer_id);
  } else if (cqe.res < 0 && cqe.res != -ENOBUFS && cqe.res != -ECANCELED) {
    Log(Severity::kWarning, "shard %d: UDP receive failed: %s", index_, std::strerror(-cqe.res));
  }
  if (!(cqe.flags & IORING_CQE_F_MORE)) {
    if (!draining_) {
      udp_buffers_->Publish();  // an empty buffer ring ends the multishot
      ArmUdpRecv(socket_index);
    }
  }
}

void ShardLoop::HandleQuery(std::span<uint8_t> wire, const ClientRef& client) {
  dns::QueryInfo info;
  switch (dns::ParseQuery(wire, info)) {
    case dns::QueryParse::kDrop:
      if (wire.size() < dns::kHeaderSize) {
        Bump(stats_.dropped_short);
      } else {
        Bump(stats_.dropped_response_bit);
      }
      return;
    case dns::QueryParse::kFormErr:
      Bump(stats_.formerr);
      ReplyError(wire, info, dns::Rcode::kFormErr, client);
      return;
    case dns::QueryParse::kNotImp:
      Bump(stats_.notimp);
      ReplyError(wire, info, dns::Rcode::kNotImp, client);
      return;
    case dns::QueryParse::kOk:
      break;
  }
  if (wire.size() > kMaxQuerySize) {
    Bump(stats_.refused_oversized);
    ReplyError(wire, info, dns::Rcode::kRefused, client);
    return;
  }
  bool stale_candidate = false;
  if (cache_ != nullptr) {
    cache::CacheKey key;
    cache::MakeKey(wire.data(), info.question_length, info.has_edns, info.dnssec_ok, key);
    const cache::Found found = cache_->Find(key, now_seconds_);
    if (found.freshness == cache::Freshness::kFresh) {
      if (ServeFromCache(found.entry, client, info.id, key.question, info.udp_response_limit,
                         /*stale=*/false)) {
        Bump(stats_.cache_hits);
        if (found.prefetch_due) {
          cache_->MarkPrefetching(found.entry);
          StartPrefetch(wire, info);
        }
        return;
      }
    }
    Bump(stats_.cache_misses);
    stale_candidate = found.freshness == cache::Freshness::kStale;
  }
  const uint32_t slot_index = AllocateSlot();
  if (slot_index == kNone) {
    Bump(stats_.servfail_overload);
    ReplyError(wire, info, dns::Rcode::kServFail, client);
    return;
  }
  QuerySlot& slot = slots_[slot_index];
  const size_t upstream_length = dns::BuildUpstreamQuery(wire, info, query_options_, slot.query);
  if (upstream_length == 0) {  // malformed EDNS options
    ReleaseSlot(slot_index);
    Bump(stats_.formerr);
    ReplyError(wire, info, dns::Rcode::kFormErr, client);
    return;
  }
  slot.kind = SlotKind::kClient;
  slot.stale_candidate = stale_candidate;
  slot.transport = client.transport;
  slot.has_edns = info.has_edns;
  slot.dnssec_ok = info.dnssec_ok;
  slot.client_id = info.id;
  slot.question_length = info.question_length;
  slot.query_length = static_cast<uint16_t>(upstream_length);
  if (client.transport == Transport::kUdp) {
    slot.udp_socket = client.udp_socket;
    slot.udp_limit = static_cast<uint16_t>(std::min<size_t>(info.udp_response_limit, kMaxUdpReply));
    slot.client_address_length = client.udp_address_length;
    std::memcpy(&slot.client_address, client.udp_address, client.udp_address_length);
  } else {
    slot.tcp_client = client.tcp_client;
    slot.tcp_generation = client.tcp_generation;
    ++tcp_clients_[client.tcp_client].queries_in_flight;
  }
  if (!Dispatch(slot_index, -1, false)) {
    if (AnyUpstreamAlive()) {
      // Upstreams are up but every connection is at its cap: queue rather
      // than fail; answers free capacity, and the deadline still applies.
      QueueForCapacity(slot_index);
    } else {
      FailSlot(slot_index, stats_.servfail_no_upstream);
    }
  }
}

void ShardLoop::QueueForCapacity(uint32_t slot_index) {
  slots_[slot_index].on_wait_list = true;
  ListAppend<&QuerySlot::attempt_prev, &QuerySlot::attempt_next>(slots_, wait_list_, slot_index);
  Bump(stats_.queued_for_capacity);
}

bool ShardLoop::AnyUpstreamAlive() const {
  for (const auto& conn : connections_) {
    if (conn->state == ConnectionState::kReady || conn->state == ConnectionState::kConnecting ||
        conn->state == ConnectionState::kHandshaking) {
      return true;
    }
  }
  return false;
}

void ShardLoop::DispatchWaiting() {
  while (wait_list_.head != kNone) {
    const uint32_t slot_index = wait_list_.head;
    ListRemove<&QuerySlot::attempt_prev, &QuerySlot::attempt_next>(slots_, wait_list_, slot_index);
    slots_[slot_index].on_wait_list = false;
    if (!Dispatch(slot_index, -1, false)) {
      if (AnyUpstreamAlive()) {
        // Still full: back to the head, keep the order.
        QuerySlot& slot = slots_[slot_index];
        slot.on_wait_list = true;
        slot.attempt_prev = kNone;
        slot.attempt_next = wait_list_.head;
        if (wait_list_.head != kNone) {
          slots_[wait_list_.head].attempt_prev = slot_index;
        } else {
          wait_list_.tail = slot_index;
        }
        wait_list_.head = slot_index;
        return;
      }
      FailSlot(slot_index, stats_.servfail_no_upstream);
    }
  }
}

void ShardLoop::ReplyError(std::span<const uint8_t> query, const dns::QueryInfo& info,
                           dns::Rcode rcode, const ClientRef& client) {
  uint8_t reply[dns::kHeaderSize + dns::kMaxQuestionLength + 16];
  const size_t length = dns::BuildErrorReply(query, info, rcode, config_.edns_udp_size, reply);
  if (length > 0) SendToClient(client, {reply, length});
}

void ShardLoop::SendToClient(const ClientRef& client, std::span<const uint8_t> wire) {
  if (client.transport == Transport::kTcp) {
    TcpClient& tcp = tcp_clients_[client.tcp_client];
    if (tcp.state != TcpClientState::kOpen || tcp.generation != client.tcp_generation) return;
    if (tcp.pending_out.size() > kMaxTcpClientBacklog) {
      Bump(stats_.tcp_slow_closed);
      CloseClient(client.tcp_client);
      return;
    }
    const uint8_t prefix[2] = {static_cast<uint8_t>(wire.size() >> 8),
                               static_cast<uint8_t>(wire.size())};
    if (tcp.pending_out.empty() && !tcp.send_in_flight) dirty_clients_.push_back(client.tcp_client);
    tcp.pending_out.insert(tcp.pending_out.end(), prefix, prefix + 2);
    tcp.pending_out.insert(tcp.pending_out.end(), wire.begin(), wire.end());
    return;
  }
  uint32_t reply_index;
  UdpReply* reply = AcquireUdpReply(client, reply_index);
  if (reply == nullptr) return;
  const size_t length = std::min(wire.size(), kMaxUdpReply);
  std::memcpy(reply->data, wire.data(), length);
  SubmitUdpReply(client, reply_index, length);
}

UdpReply* ShardLoop::AcquireUdpReply(const ClientRef& client, uint32_t& reply_index) {
  if (free_udp_replies_.empty()) {
    Bump(stats_.udp_send_no_buffer);
    return nullptr;
  }
  reply_index = free_udp_replies_.back();
  free_udp_replies_.pop_back();
  UdpReply& reply = udp_replies_[reply_index];
  std::memcpy(&reply.destination, client.udp_address, client.udp_address_length);
  return &reply;
}

void ShardLoop::SubmitUdpReply(const ClientRef& client, uint32_t reply_index, size_t length) {
  UdpReply& reply = udp_replies_[reply_index];
  io_uring_sqe* sqe = ring_->GetSqe();
  const int fd = udp_sockets_[client.udp_socket].fd.get();
  if (udp_sendto_supported_) {
    // IORING_OP_SEND with a destination (Linux 6.0+) is sendto: no msghdr
    // and iovec for the kernel to copy in, per datagram.
    io_uring_prep_send(sqe, fd, reply.data, length, 0);
    io_uring_prep_send_set_addr(sqe, reinterpret_cast<const sockaddr*>(&reply.destination),
                                static_cast<uint16_t>(client.udp_address_length));
  } else {
    reply.iov = {reply.data, length};
    reply.message = {};
    reply.message.msg_name = &reply.destination;
    reply.message.msg_namelen = client.udp_address_length;
    reply.message.msg_iov = &reply.iov;
    reply.message.msg_iovlen = 1;
    io_uring_prep_sendmsg(sqe, fd, &reply.message, 0);
  }
  io_uring_sqe_set_data64(sqe, PackUserData(Op::kUdpSend, reply_index, 0));
}

bool ShardLoop::ServeFromCache(uint32_t entry, const ClientRef& client, uint16_t id,
                               std::span<const uint8_t> question, size_t udp_limit, bool stale) {
  if (client.transport == Transport::kUdp) {
    // Straight into the reply buffer: one copy from cache to socket.
    uint32_t reply_index;
    UdpReply* reply = AcquireUdpReply(client, reply_index);
    if (reply == nullptr) return true;  // counted as a send drop
    const size_t limit = std::min(udp_limit, kMaxUdpReply);
    const size_t length = cache_->Serve(entry, reply->data, id, question, limit, now_seconds_, stale);
    if (length == 0) {
      free_udp_replies_.push_back(reply_index);
      return false;
    }
    SubmitUdpReply(client, reply_index, length);
    return true;
  }
  uint8_t answer[cache::kMaxCachedAnswer];
  const size_t length = cache_->Serve(entry, answer, id, question, sizeof(answer), now_seconds_, stale);
  if (length == 0) return false;
  SendToClient(client, {answer, length});
  return true;
}

// Refreshes a cache entry in its last tenth of TTL without a client waiting.
void ShardLoop::StartPrefetch(std::span<const uint8_t> query, const dns::QueryInfo& info) {
  const uint32_t slot_index = AllocateSlot();
  if (slot_index == kNone) return;
  QuerySlot& slot = slots_[slot_index];
  const size_t length = dns::BuildUpstreamQuery(query, info, query_options_, slot.query);
  slot.kind = SlotKind::kPrefetch;
  slot.stale_candidate = false;
  slot.has_edns = info.has_edns;
  slot.dnssec_ok = info.dnssec_ok;
  slot.question_length = info.question_length;
  slot.query_length = static_cast<uint16_t>(length);
  Bump(stats_.cache_prefetches);
  if (length == 0 || !Dispatch(slot_index, -1, false)) FailSlot(slot_index, stats_.cache_prefetches);
}

// RFC 8767: when upstreams fail, an expired answer beats SERVFAIL.
bool ShardLoop::TryServeStale(QuerySlot& slot) {
  if (cache_ == nullptr || !slot.stale_candidate || slot.kind != SlotKind::kClient) return false;
  cache::CacheKey key;
  cache::MakeKey(slot.query, slot.question_length, slot.has_edns, slot.dnssec_ok, key);
  const cache::Found found = cache_->Find(key, now_seconds_);
  if (found.freshness == cache::Freshness::kMiss) return false;
  if (!ServeFromCache(found.entry, ClientRefOf(slot), slot.client_id, key.question, slot.udp_limit,
                      found.freshness == cache::Freshness::kStale)) {
    return false;
  }
  Bump(stats_.cache_stale_answers);
  return true;
}

void ShardLoop::OnUdpSendDone(uint32_t reply_index, const io_uring_cqe& cqe) {
  if (cqe.res == -EINVAL && udp_sendto_supported_) {
    // A kernel before 6.0 rejects a destination on IORING_OP_SEND: fall back
    // to sendmsg from now on. This one reply is lost (the client retries).
    udp_sendto_supported_ = false;
    Log(Severity::kInfo, "shard %d: kernel lacks io_uring sendto; using sendmsg", index_);
  }
  if (cqe.res < 0) Bump(stats_.udp_send_errors);
  free_udp_replies_.push_back(reply_index);
}

// ---------------------------------------------------------------------------
// TCP clients (RFC 7766)

void ShardLoop::ArmAccept(uint32_t listener_index) {
  TcpListener& listener = tcp_listeners_[listener_index];
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_multishot_accept(sqe, listener.fd.get(), nullptr, nullptr,
                                 SOCK_NONBLOCK | SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, PackUserData(Op::kAccept, listener_index, 0));
}

void ShardLoop::OnAccept(uint32_t listener_index, const io_uring_cqe& cqe) {
  if (cqe.res >= 0) {
    io::UniqueFd fd(cqe.res);
    sockaddr_storage peer{};
    socklen_t peer_length = sizeof(peer);
    const bool allowed = getpeername(fd.get(), reinterpret_cast<sockaddr*>(&peer), &peer_length) == 0 &&
                         acl_.Allows(reinterpret_cast<const sockaddr*>(&peer));
    if (!allowed) {
      Bump(stats_.tcp_acl_refused);
    } else if (draining_ || free_tcp_clients_.empty()) {
      if (!draining_) Bump(stats_.tcp_rejected);
    } else {
      const uint32_t client_index = free_tcp_clients_.back();
      free_tcp_clients_.pop_back();
      TcpClient& client = tcp_clients_[client_index];
      client.state = TcpClientState::kOpen;
      client.fd = std::move(fd);
      client.framer.Clear();
      client.pending_out.clear();
      client.sending.clear();
      client.send_offset = 0;
      client.send_in_flight = client.recv_in_flight = false;
      client.read_closed = client.reading_paused = false;
      client.queries_in_flight = 0;
      client.ops_in_flight = 0;
      Bump(stats_.tcp_accepted);
      TouchClient(client_index);
      ArmClientRecv(client_index);
    }
  } else if (cqe.res != -ECANCELED && cqe.res != -EINVAL) {
    Log(Severity::kWarning, "shard %d: accept failed: %s", index_, std::strerror(-cqe.res));
  }
  if (!(cqe.flags & IORING_CQE_F_MORE) && !draining_) ArmAccept(listener_index);
}

void ShardLoop::ArmClientRecv(uint32_t client_index) {
  TcpClient& client = tcp_clients_[client_index];
  auto space = client.framer.WritableSpace();
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_recv(sqe, client.fd.get(), space.data(), space.size(), 0);
  io_uring_sqe_set_data64(sqe, PackUserData(Op::kClientRecv, client_index, client.generation));
  client.recv_in_flight = true;
  ++client.ops_in_flight;
}

void ShardLoop::OnClientRecv(uint32_t client_index, const io_uring_cqe& cqe) {
  TcpClient& client = tcp_clients_[client_index];
  client.recv_in_flight = false;
  --client.ops_in_flight;
  if (client.state != TcpClientState::kOpen) {
    MaybeFinishClient(client_index);
    return;
  }
  if (cqe.res <= 0) {
    // EOF: the client is done sending; answer what it asked, then close.
    client.read_closed = true;
    if (cqe.res < 0 || (client.queries_in_flight == 0 && client.pending_out.empty() &&
                        !client.send_in_flight)) {
      CloseClient(client_index);
    }
    return;
  }
  client.framer.Commit(static_cast<size_t>(cqe.res));
  TouchClient(client_index);
  if (draining_) return;  // no new queries while stopping
  std::span<uint8_t> message;
  while (true) {
    const auto next = client.framer.NextMessage(kMaxQuerySize, message);
    if (next == dns::StreamFramer::Next::kNeedMore) break;
    if (next == dns::StreamFramer::Next::kTooLarge) {
      Bump(stats_.tcp_bad_frame);
      CloseClient(client_index);
      return;
    }
    Bump(stats_.tcp_queries);
    ClientRef ref;
    ref.transport = Transport::kTcp;
    ref.tcp_client = client_index;
    ref.tcp_generation = client.generation;
    HandleQuery(message, ref);
    if (client.state != TcpClientState::kOpen) return;
  }
  client.framer.Compact();
  if (client.queries_in_flight >= kMaxQueriesPerTcpClient) {
    client.reading_paused = true;
  } else {
    ArmClientRecv(client_index);
  }
}

void ShardLoop::FlushClient(uint32_t client_index) {
  TcpClient& client = tcp_clients_[client_index];
  if (client.state != TcpClientState::kOpen || client.send_in_flight ||
      client.pending_out.empty()) {
    return;
  }
  std::swap(client.sending, client.pending_out);
  client.pending_out.clear();
  client.send_offset = 0;
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_send(sqe, client.fd.get(), client.sending.data(), client.sending.size(),
                     MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, PackUserData(Op::kClientSend, client_index, client.generation));
  client.send_in_flight = true;
  ++client.ops_in_flight;
}

void ShardLoop::OnClientSendDone(uint32_t client_index, const io_uring_cqe& cqe) {
  TcpClient& client = tcp_clients_[client_index];
  client.send_in_flight = false;
  --client.ops_in_flight;
  if (client.state != TcpClientState::kOpen) {
    MaybeFinishClient(client_index);
    return;
  }
  if (cqe.res < 0) {
    CloseClient(client_index);
    return;
  }
  client.send_offset += static_cast<size_t>(cqe.res);
  TouchClient(client_index);
  if (client.send_offset < client.sending.size()) {
    // Short write: send the rest before anything queued after it.
    io_uring_sqe* sqe = ring_->GetSqe();
    io_uring_prep_send(sqe, client.fd.get(), client.sending.data() + client.send_offset,
                       client.sending.size() - client.send_offset, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, PackUserData(Op::kClientSend, client_index, client.generation));
    client.send_in_flight = true;
    ++client.ops_in_flight;
    return;
  }
  client.sending.clear();
  if (!client.pending_out.empty()) {
    FlushClient(client_index);
  } else if (client.read_closed && client.queries_in_flight == 0) {
    CloseClient(client_index);
  }
}

void ShardLoop::CloseClient(uint32_t client_index) {
  TcpClient& client = tcp_clients_[client_index];
  if (client.state != TcpClientState::kOpen) return;
  client.state = TcpClientState::kClosing;
  UnlinkIdle(client_index);
  if (client.ops_in_flight > 0) {
    ::shutdown(client.fd.get(), SHUT_RDWR);
    CancelFd(client.fd.get());
  }
  MaybeFinishClient(client_index);
}

void ShardLoop::MaybeFinishClient(uint32_t client_index) {
  TcpClient& client = tcp_clients_[client_index];
  if (client.state != TcpClientState::kClosing || client.ops_in_flight > 0) return;
  // No operation references this client any more: recycle it. Queries it
  // still has in flight find a new generation and drop their answers.
  client.fd.reset();
  client.state = TcpClientState::kFree;
  ++client.generation;
  free_tcp_clients_.push_back(client_index);
}

void ShardLoop::TouchClient(uint32_t client_index) {
  TcpClient& client = tcp_clients_[client_index];
  client.last_activity = now_;
  UnlinkIdle(client_index);
  client.idle_prev = idle_tail_;
  client.idle_next = kNone;
  if (idle_tail_ != kNone) {
    tcp_clients_[idle_tail_].idle_next = client_index;
  } else {
    idle_head_ = client_index;
  }
  idle_tail_ = client_index;
}

void ShardLoop::UnlinkIdle(uint32_t client_index) {
  TcpClient& client = tcp_clients_[client_index];
  const bool linked = client.idle_prev != kNone || client.idle_next != kNone ||
                      idle_head_ == client_index;
  if (!linked) return;
  if (client.idle_prev != kNone) {
    tcp_clients_[client.idle_prev].idle_next = client.idle_next;
  } else {
    idle_head_ = client.idle_next;
  }
  if (client.idle_next != kNone) {
    tcp_clients_[client.idle_next].idle_prev = client.idle_prev;
  } else {
    idle_tail_ = client.idle_prev;
  }
  client.idle_prev = client.idle_next = kNone;
}

// ---------------------------------------------------------------------------
// Upstream connections

std::vector<int> ShardLoop::Priorities(const config::Config& config) {
  std::vector<int> priorities;
  for (const auto& upstream : config.upstreams) priorities.push_back(upstream.priority);
  return priorities;
}

// An upstream can take a query when one of its connections is (being) set
// up and below its in-flight cap, or when it may open another one.
bool ShardLoop::UpstreamUsable(int upstream) {
  const UpstreamRuntime& runtime = upstreams_[upstream];
  const size_t cap = static_cast<size_t>(config_.max_inflight_per_connection);
  bool can_open = false;
  for (uint32_t conn_index : runtime.connections) {
    const Connection& conn = *connections_[conn_index];
    switch (conn.state) {
      case ConnectionState::kReady:
      case ConnectionState::kConnecting:
      case ConnectionState::kHandshaking:
        if (conn.ids.size() < cap) return true;
        break;
      case ConnectionState::kIdle:
        can_open = true;
        break;
      case ConnectionState::kClosing:
        break;
    }
  }
  return can_open && now_ >= runtime.retry_at;
}

Connection* ShardLoop::AcquireConnection(int upstream) {
  const UpstreamRuntime& runtime = upstreams_[upstream];
  const size_t cap = static_cast<size_t>(config_.max_inflight_per_connection);
  // A verified connection first, then one being set up, then a new one.
  for (uint32_t conn_index : runtime.connections) {
    Connection& conn = *connections_[conn_index];
    if (conn.state == ConnectionState::kReady && conn.ids.size() < cap) return &conn;
  }
  for (uint32_t conn_index : runtime.connections) {
    Connection& conn = *connections_[conn_index];
    if ((conn.state == ConnectionState::kConnecting ||
         conn.state == ConnectionState::kHandshaking) &&
        conn.ids.size() < cap) {
      return &conn;
    }
  }
  if (now_ < runtime.retry_at) return nullptr;
  for (uint32_t conn_index : runtime.connections) {
    Connection& conn = *connections_[conn_index];
    if (conn.state != ConnectionState::kIdle) continue;
    StartConnect(conn_index);
    if (conn.state == ConnectionState::kConnecting) return &conn;
    return nullptr;
  }
  return nullptr;
}

// Sends the slot's query to the best usable upstream other than `exclude`
// (or to `exclude` itself when `allow_excluded` and nothing else is usable).
bool ShardLoop::Dispatch(uint32_t slot_index, int exclude, bool allow_excluded) {
  QuerySlot& slot = slots_[slot_index];
  int upstream = health_.Select([this](int i) { return UpstreamUsable(i); }, exclude, rng_.Next());
  if (upstream < 0 && allow_excluded && exclude >= 0 && UpstreamUsable(exclude)) {
    upstream = exclude;
  }
  if (upstream < 0) return false;
  Connection* conn = AcquireConnection(upstream);
  if (conn == nullptr || !conn->ids.Insert(slot_index, rng_, slot.upstream_id)) return false;

  if (slot.on_attempt_list) {
    ListRemove<&QuerySlot::attempt_prev, &QuerySlot::attempt_next>(slots_, attempt_list_, slot_index);
    slot.on_attempt_list = false;
  }
  if (retry_on_timeout_ && slot.attempt == 1 && slot.kind == SlotKind::kClient) {
    // The first attempt gets half the budget so a retry elsewhere still fits.
    slot.attempt_deadline = now_ + config_.query_timeout / 2;
    ListAppend<&QuerySlot::attempt_prev, &QuerySlot::attempt_next>(slots_, attempt_list_, slot_index);
    slot.on_attempt_list = true;
  }
  QueueOnConnection(slot, upstream, *conn);
  Bump(stats_.forwarded);
  return true;
}

// Binds `slot` (its ID already taken in `conn`) to `conn` and queues its
// query there: the batch goes out in one TLS write at the end of this loop
// iteration (or when the handshake completes).
void ShardLoop::QueueOnConnection(QuerySlot& slot, int upstream, Connection& conn) {
  const UpstreamRuntime& runtime = upstreams_[upstream];
  slot.upstream = upstream;
  for (uint32_t i : runtime.connections) {
    if (connections_[i].get() == &conn) slot.connection = i;
  }
  slot.sent_at = now_;
  dns::header::SetId(slot.query, slot.upstream_id);
  const uint8_t prefix[2] = {static_cast<uint8_t>(slot.query_length >> 8),
                             static_cast<uint8_t>(slot.query_length)};
  conn.pending_plain.insert(conn.pending_plain.end(), prefix, prefix + 2);
  conn.pending_plain.insert(conn.pending_plain.end(), slot.query, slot.query + slot.query_length);
  conn.last_activity = now_;
  health_.AddInFlight(upstream);
  Set(runtime.stats->in_flight, health_.get(upstream).in_flight);
  Bump(runtime.stats->queries);
}

void ShardLoop::Unbind(QuerySlot& slot) {
  if (slot.connection == kNone) return;
  Connection& conn = *connections_[slot.connection];
  if (conn.ids.Lookup(slot.upstream_id) == static_cast<uint32_t>(&slot - slots_.data())) {
    conn.ids.Erase(slot.upstream_id);
  }
  health_.RemoveInFlight(slot.upstream);
  Set(upstreams_[slot.upstream].stats->in_flight, health_.get(slot.upstream).in_flight);
  slot.connection = kNone;
}

// A probe asks an unhealthy upstream for the root NS set; any matching
// answer proves it serves again.
void ShardLoop::SendProbe(int upstream) {
  static constexpr uint8_t kProbeQuery[] = {0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
                                            0, 0, 2, 0, 1};  // ". IN NS", RD=1
  const uint32_t slot_index = AllocateSlot();
  if (slot_index == kNone) return;
  QuerySlot& slot = slots_[slot_index];
  dns::QueryInfo info;
  dns::ParseQuery(kProbeQuery, info);
  slot.kind = SlotKind::kProbe;
  slot.has_edns = false;
  slot.question_length = info.question_length;
  slot.query_length =
      static_cast<uint16_t>(dns::BuildUpstreamQuery(kProbeQuery, info, query_options_, slot.query));
  Bump(stats_.probes);
  if (!UpstreamUsable(upstream)) {
    ReleaseSlot(slot_index);
    return;
  }
  // Force this upstream: exclude nothing but only allow it.
  Connection* conn = AcquireConnection(upstream);
  if (conn == nullptr || !conn->ids.Insert(slot_index, rng_, slot.upstream_id)) {
    ReleaseSlot(slot_index);
    return;
  }
  QueueOnConnection(slot, upstream, *conn);
}

void ShardLoop::NoteHealth(int upstream, bool changed) {
  if (!changed) return;
  UpstreamRuntime& runtime = upstreams_[upstream];
  const upstream::UpstreamHealth& health = health_.get(upstream);
  Set(runtime.stats->healthy, health.state == upstream::HealthState::kHealthy ? 1 : 0);
  // Rate-limited: a flapping upstream must not flood the log.
  if (now_ - runtime.last_health_log < kHealthLogInterval) {
    ++runtime.health_logs_suppressed;
    return;
  }
  Log(Severity::kWarning, "shard %d: upstream %s is now %s (%d consecutive failures, latency %.1f ms%s)",
      index_, config_.upstreams[upstream].spec, upstream::ToString(health.state),
      health.consecutive_failures, health.latency_ewma_ms,
      runtime.health_logs_suppressed > 0
          ? absl::StrCat(", ", runtime.health_logs_suppressed, " changes not logged")
          : std::string());
  runtime.last_health_log = now_;
  runtime.health_logs_suppressed = 0;
}

void ShardLoop::UpstreamFailed(int upstream, const std::string& reason) {
  UpstreamRuntime& runtime = upstreams_[upstream];
  Bump(stats_.upstream_connect_failures);
  Bump(runtime.stats->connect_failures);
  ++runtime.connect_failures;
  runtime.retry_at = now_ + upstream::BackoffDelay(runtime.connect_failures, rng_.Next());
  runtime.reconnect_pending = true;
  if (runtime.connect_failures == 1 || now_ - runtime.last_failure_log >= kFailureLogInterval) {
    Log(Severity::kWarning, "shard %d: upstream %s: %s (failure %d, retry in %d ms)", index_,
        config_.upstreams[upstream].spec, reason, runtime.connect_failures,
        static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                             runtime.retry_at - now_).count()));
    runtime.last_failure_log = now_;
  }
  NoteHealth(upstream, health_.RecordFailure(upstream, now_));
}

void ShardLoop::StartConnect(uint32_t conn_index) {
  Connection& conn = *connections_[conn_index];
  const config::UpstreamConfig& upstream = config_.upstreams[conn.upstream_index];
  auto fd = io::OpenTcpClient(upstream.address.family(),
                              static_cast<int>(config_.connect_timeout.count()));
  if (!fd.ok()) {
    UpstreamFailed(conn.upstream_index, std::string(fd.status().message()));
    return;
  }
  conn.fd = *std::move(fd);
  conn.state = ConnectionState::kConnecting;
  conn.connect_deadline = now_ + config_.connect_timeout;
  conn.last_activity = now_;
  conn.keepalive_timeout = std::chrono::milliseconds(-1);
  conn.quick_acks_left = 8;
  conn.timeouts_since_answer = 0;
  conn.framer.Clear();
  conn.sending.clear();
  conn.send_offset = 0;
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_connect(sqe, conn.fd.get(), upstream.address.get(), upstream.address.length);
  io_uring_sqe_set_data64(sqe, PackUserData(Op::kUpstreamConnect, conn_index, conn.generation));
  ++conn.ops_in_flight;
}

void ShardLoop::OnUpstreamConnect(uint32_t conn_index, const io_uring_cqe& cqe) {
  Connection& conn = *connections_[conn_index];
  --conn.ops_in_flight;
  if (conn.state != ConnectionState::kConnecting) {
    FinishClose(conn_index);
    return;
  }
  if (cqe.res < 0) {
    CloseConnection(conn_index, true, absl::StrCat("connect: ", std::strerror(-cqe.res)));
    return;
  }
  UpstreamRuntime& runtime = upstreams_[conn.upstream_index];
  if (auto status = conn.session.Start(*tls_context_, runtime.policy, &runtime.resumption);
      !status.ok()) {
    CloseConnection(conn_index, true, std::string(status.message()));
    return;
  }
  conn.state = ConnectionState::kHandshaking;
  ArmUpstreamRecv(conn_index);
  DriveHandshake(conn_index);
}

void ShardLoop::DriveHandshake(uint32_t conn_index) {
  Connection& conn = *connections_[conn_index];
  UpstreamRuntime& runtime = upstreams_[conn.upstream_index];
  const auto step = conn.session.Handshake();
  StartUpstreamSend(conn_index);
  if (step == tls::Session::Step::kWantRead) return;
  if (step == tls::Session::Step::kError) {
    // A handshake that fails after the server spoke is a verification or
    // protocol failure: never use this connection.
    Bump(stats_.upstream_verify_failures);
    Bump(runtime.stats->verify_failures);
    if (conn.session.pin_mismatch()) Bump(runtime.stats->pin_failures);
    CloseConnection(conn_index, true, absl::StrCat("TLS handshake: ", conn.session.error()));
    return;
  }
  conn.state = ConnectionState::kReady;
  conn.last_activity = now_;
  Bump(stats_.upstream_connects);
  Bump(runtime.stats->connection_opens);
  if (conn.session.resumed()) Bump(runtime.stats->resumptions);
  if (runtime.connect_failures > 0 || !runtime.logged_first_connect) {
    Log(Severity::kInfo, "shard %d: upstream %s: %s (%s)", index_,
        config_.upstreams[conn.upstream_index].spec,
        runtime.logged_first_connect ? "connected again" : "connected", conn.session.Describe());
    runtime.logged_first_connect = true;
  }
  // connect_failures is reset by the first answer, not here: an upstream
  // that completes TLS but never answers must keep backing off.
  runtime.reconnect_pending = false;
  // Queries that waited for the handshake go out with this iteration's batch;
  // data that arrived with the last handshake flight is read now.
  ReadUpstreamPlaintext(conn_index);
}

void ShardLoop::ArmUpstreamRecv(uint32_t conn_index) {
  Connection& conn = *connections_[conn_index];
  auto space = conn.session.InboundSpace();
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_recv(sqe, conn.fd.get(), space.data(), space.size(), 0);
  io_uring_sqe_set_data64(sqe, PackUserData(Op::kUpstreamRecv, conn_index, conn.generation));
  conn.recv_in_flight = true;
  ++conn.ops_in_flight;
}

void ShardLoop::OnUpstreamRecv(uint32_t conn_index, const io_uring_cqe& cqe) {
  Connection& conn = *connections_[conn_index];
  conn.recv_in_flight = false;
  --conn.ops_in_flight;
  if (conn.state == ConnectionState::kClosing) {
    FinishClose(conn_index);
    return;
  }
  if (cqe.res <= 0) {
    const bool during_handshake = conn.state != ConnectionState::kReady;
    if (!during_handshake) Bump(stats_.upstream_closed);
    // An upstream closing an established connection is routine (public
    // resolvers do it after ~10 s idle); only a failed setup counts.
    CloseConnection(conn_index, during_handshake,
                    cqe.res == 0 ? std::string("closed by upstream")
                                 : absl::StrCat("receive: ", std::strerror(-cqe.res)));
    return;
  }
  conn.session.CommitInbound(static_cast<size_t>(cqe.res));
  if (conn.quick_acks_left > 0) {
    // Right after the handshake the upstream often has two small writes in
    // a row (session ticket, then our first answer); with Nagle on its side
    // and delayed ACKs on ours the answer would wait ~40 ms. Once queries
    // flow, our own segments carry the ACKs.
    --conn.quick_acks_left;
    const int one = 1;
    setsockopt(conn.fd.get(), IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
  }
  if (conn.state == ConnectionState::kHandshaking) {
    DriveHandshake(conn_index);
  } else {
    ReadUpstreamPlaintext(conn_index);
  }
  if ((conn.state == ConnectionState::kHandshaking || conn.state == ConnectionState::kReady) &&
      !conn.recv_in_flight) {
    ArmUpstreamRecv(conn_index);
  }
}

void ShardLoop::ReadUpstreamPlaintext(uint32_t conn_index) {
  Connection& conn = *connections_[conn_index];
  while (conn.state == ConnectionState::kReady) {
    auto space = conn.framer.WritableSpace();
    const int n = conn.session.Read(space);
    if (n == 0) break;
    if (n < 0) {
      const bool failure = !conn.session.error().empty();
      if (!failure) Bump(stats_.upstream_closed);
      CloseConnection(conn_index, failure,
                      failure ? absl::StrCat("TLS: ", conn.session.error())
                              : std::string("TLS close_notify from upstream"));
      return;
    }
    conn.framer.Commit(static_cast<size_t>(n));
    std::span<uint8_t> answer;
    while (true) {
      const auto next = conn.framer.NextMessage(upstream::kMaxStreamMessage, answer);
      if (next != dns::StreamFramer::Next::kMessage) break;
      OnUpstreamAnswer(conn, answer);
    }
    conn.framer.Compact();
  }
  // Reading may have produced TLS output (key updates, alerts).
  StartUpstreamSend(conn_index);
}

void ShardLoop::OnUpstreamAnswer(Connection& conn, std::span<uint8_t> answer) {
  dns::ResponseInfo info;
  if (!dns::ParseResponse(answer, info)) {
    Bump(stats_.upstream_malformed);
    return;
  }
  const uint32_t slot_index = conn.ids.Lookup(info.id);
  if (slot_index == upstream::IdTable::kFree) {
    Bump(stats_.upstream_unknown_id);
    return;
  }
  QuerySlot& slot = slots_[slot_index];
  const std::span<const uint8_t> asked(slot.query + dns::kHeaderSize, slot.question_length);
  const std::span<const uint8_t> answered(answer.data() + dns::kHeaderSize, info.question_length);
  if (!dns::QuestionsMatch(asked, answered)) {
    // Keep waiting: the right answer may still come, or the deadline fails it.
    Bump(stats_.upstream_question_mismatch);
    return;
  }
  conn.last_activity = now_;
  conn.timeouts_since_answer = 0;
  const int upstream = slot.upstream;
  UpstreamRuntime& runtime = upstreams_[upstream];
  runtime.connect_failures = 0;
  Unbind(slot);
  const auto latency = std::chrono::duration_cast<std::chrono::microseconds>(now_ - slot.sent_at);
  NoteHealth(upstream, health_.RecordAnswer(upstream, latency, now_));
  Bump(runtime.stats->answers);
  Set(runtime.stats->latency_us, static_cast<uint64_t>(health_.get(upstream).latency_ewma_ms * 1000));

  // Transport options (keepalive, padding) are for this hop only.
  int keepalive = -1;
  size_t length = dns::RewriteAnswerOpt(answer, answer.size(), slot.has_edns, &keepalive);
  if (keepalive >= 0) conn.keepalive_timeout = std::chrono::milliseconds(keepalive * 100);
  if (slot.kind == SlotKind::kProbe) {
    ReleaseSlot(slot_index);
    return;
  }
  if (cache_ != nullptr) {
    cache::CacheKey key;
    cache::MakeKey(slot.query, slot.question_length, slot.has_edns, slot.dnssec_ok, key);
    const bool upstream_failed = dns::header::GetRcode(answer.data()) == dns::Rcode::kServFail;
    if (upstream_failed && TryServeStale(slot)) {
      ReleaseSlot(slot_index);
      return;
    }
    if (!cache_->Insert(key, {answer.data(), length}, now_seconds_) &&
        slot.kind == SlotKind::kPrefetch) {
      cache_->PrefetchDone(key);
    }
    Set(stats_.cache_evictions, cache_->counters().evictions);
    Set(stats_.cache_entries, cache_->counters().entries);
    if (slot.kind == SlotKind::kPrefetch) {
      ReleaseSlot(slot_index);
      return;
    }
  }

  // Give the answer back its client: client ID, client's question bytes
  // (0x20 letter case) and, for UDP, the client's size limit.
  dns::header::SetId(answer.data(), slot.client_id);
  std::memcpy(answer.data() + dns::kHeaderSize, asked.data(), asked.size());
  if (slot.transport == Transport::kUdp && length > slot.udp_limit) {
    length = dns::TruncateResponse(answer, length, slot.udp_limit);
    Bump(stats_.truncated);
  }
  SendToClient(ClientRefOf(slot), {answer.data(), length});
  Bump(stats_.answered);
  ReleaseSlot(slot_index);
}

void ShardLoop::FlushUpstream(uint32_t conn_index) {
  Connection& conn = *connections_[conn_index];
  if (conn.state != ConnectionState::kReady || conn.pending_plain.empty()) return;
  // One wolfSSL_write for the whole batch: many DNS messages per TLS record.
  if (!conn.session.Write(conn.pending_plain)) {
    conn.pending_plain.clear();
    CloseConnection(conn_index, true, absl::StrCat("TLS write: ", conn.session.error()));
    return;
  }
  conn.pending_plain.clear();
  StartUpstreamSend(conn_index);
}

void ShardLoop::StartUpstreamSend(uint32_t conn_index) {
  Connection& conn = *connections_[conn_index];
  if (conn.send_in_flight || conn.session.outbound().empty() || !conn.fd) return;
  std::swap(conn.sending, conn.session.outbound());
  conn.session.outbound().clear();
  conn.send_offset = 0;
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_send(sqe, conn.fd.get(), conn.sending.data(), conn.sending.size(), MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, PackUserData(Op::kUpstreamSend, conn_index, conn.generation));
  conn.send_in_flight = true;
  ++conn.ops_in_flight;
}

void ShardLoop::OnUpstreamSendDone(uint32_t conn_index, const io_uring_cqe& cqe) {
  Connection& conn = *connections_[conn_index];
  conn.send_in_flight = false;
  --conn.ops_in_flight;
  if (conn.state == ConnectionState::kClosing) {
    FinishClose(conn_index);
    return;
  }
  if (cqe.res < 0) {
    CloseConnection(conn_index, true, absl::StrCat("send: ", std::strerror(-cqe.res)));
    return;
  }
  conn.send_offset += static_cast<size_t>(cqe.res);
  if (conn.send_offset < conn.sending.size()) {
    io_uring_sqe* sqe = ring_->GetSqe();
    io_uring_prep_send(sqe, conn.fd.get(), conn.sending.data() + conn.send_offset,
                       conn.sending.size() - conn.send_offset, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, PackUserData(Op::kUpstreamSend, conn_index, conn.generation));
    conn.send_in_flight = true;
    ++conn.ops_in_flight;
    return;
  }
  conn.sending.clear();
  StartUpstreamSend(conn_index);
}

void ShardLoop::CloseConnection(uint32_t conn_index, bool failure, const std::string& reason) {
  Connection& conn = *connections_[conn_index];
  if (conn.state == ConnectionState::kClosing || conn.state == ConnectionState::kIdle) return;
  const int upstream = conn.upstream_index;
  if (failure) UpstreamFailed(upstream, reason);
  conn.state = ConnectionState::kClosing;

  // Queries bound to this connection are retried once (elsewhere when
  // possible) or fail now rather than at their deadline.
  orphaned_slots_.clear();
  for (uint32_t id = 0; id < upstream::IdTable::kIds && orphaned_slots_.size() < conn.ids.size();
       ++id) {
    const uint32_t slot_index = conn.ids.Lookup(static_cast<uint16_t>(id));
    if (slot_index != upstream::IdTable::kFree) orphaned_slots_.push_back(slot_index);
  }
  // Cleared before any retry: a retry may reopen this very connection and
  // bind new IDs in it.
  conn.ids.Clear();
  conn.pending_plain.clear();
  if (conn.ops_in_flight > 0) {
    ::shutdown(conn.fd.get(), SHUT_RDWR);
    CancelFd(conn.fd.get());
  }
  FinishClose(conn_index);
  for (uint32_t slot_index : orphaned_slots_) {
    QuerySlot& slot = slots_[slot_index];
    Unbind(slot);
    if (slot.kind != SlotKind::kClient) {
      FailSlot(slot_index, stats_.servfail_connection_lost);  // no client: just released
    } else if (slot.attempt == 1 && !draining_) {
      slot.attempt = 2;
      Bump(stats_.retried);
      if (!Dispatch(slot_index, upstream, /*allow_excluded=*/true)) {
        if (AnyUpstreamAlive()) {
          QueueForCapacity(slot_index);
        } else {
          FailSlot(slot_index, failure ? stats_.servfail_no_upstream : stats_.servfail_connection_lost);
        }
      }
    } else {
      FailSlot(slot_index, failure ? stats_.servfail_no_upstream : stats_.servfail_connection_lost);
    }
  }
}

void ShardLoop::FinishClose(uint32_t conn_index) {
  Connection& conn = *connections_[conn_index];
  if (conn.state != ConnectionState::kClosing || conn.ops_in_flight > 0) return;
  conn.fd.reset();
  conn.session.Reset();
  conn.framer.Clear();
  conn.sending.clear();
  conn.send_in_flight = conn.recv_in_flight = false;
  ++conn.generation;
  conn.state = ConnectionState::kIdle;  // reopened when a query needs it
}

// A query timed out on `conn_index` (kNone: it was not bound). A stream that
// stops answering while others are sent on it is broken: a half-open TCP
// connection, or an upstream whose framing went wrong (a partial message
// that never completes would swallow every later answer). Close it; the next
// queries open a fresh one.
void ShardLoop::NoteConnectionTimeout(uint32_t conn_index) {
  if (conn_index == kNone) return;
  Connection& conn = *connections_[conn_index];
  if (conn.state != ConnectionState::kReady) return;
  ++conn.timeouts_since_answer;
  if (!conn.framer.empty()) {
    CloseConnection(conn_index, true, "query timed out while a partial answer was pending");
  } else if (conn.timeouts_since_answer >= kConnectionTimeoutLimit) {
    CloseConnection(conn_index, true,
                    absl::StrCat(conn.timeouts_since_answer, " queries timed out without an answer"));
  }
}

std::chrono::milliseconds ShardLoop::IdleTimeout(const Connection& conn) const {
  if (conn.keepalive_timeout.count() < 0) return config_.upstream_idle_timeout;  // none sent
  // 0: the upstream wants the connection closed as soon as it is idle.
  if (conn.keepalive_timeout.count() == 0) return std::chrono::milliseconds(0);
  // Close just before the upstream would (RFC 7828 §3.2.2), leaving room
  // for a query already on its way.
  const auto margin = std::max(std::chrono::milliseconds(200), conn.keepalive_timeout / 10);
  return std::clamp(conn.keepalive_timeout - margin, std::chrono::milliseconds(100),
                    config_.upstream_idle_timeout);
}

// ---------------------------------------------------------------------------
// Slots and timers

uint32_t ShardLoop::AllocateSlot() {
  if (free_slots_.empty()) return kNone;
  const uint32_t slot_index = free_slots_.back();
  free_slots_.pop_back();
  QuerySlot& slot = slots_[slot_index];
  slot.in_use = true;
  slot.attempt = 1;
  slot.upstream = -1;
  slot.connection = kNone;
  slot.on_attempt_list = false;
  slot.on_wait_list = false;
  slot.deadline = now_ + config_.query_timeout;
  ListAppend<&QuerySlot::prev, &QuerySlot::next>(slots_, deadline_list_, slot_index);
  ++slots_in_use_;
  return slot_index;
}

void ShardLoop::ReleaseSlot(uint32_t slot_index) {
  QuerySlot& slot = slots_[slot_index];
  if (!slot.in_use) return;
  Unbind(slot);
  if (slot.kind == SlotKind::kClient && slot.transport == Transport::kTcp) {
    TcpClient& client = tcp_clients_[slot.tcp_client];
    if (client.generation == slot.tcp_generation && client.state == TcpClientState::kOpen) {
      --client.queries_in_flight;
      if (client.reading_paused && client.queries_in_flight < kMaxQueriesPerTcpClient / 2) {
        client.reading_paused = false;
        if (!client.recv_in_flight && !client.read_closed) ArmClientRecv(slot.tcp_client);
      }
      if (client.read_closed && client.queries_in_flight == 0 && client.pending_out.empty() &&
          !client.send_in_flight) {
        CloseClient(slot.tcp_client);
      }
    }
  }
  ListRemove<&QuerySlot::prev, &QuerySlot::next>(slots_, deadline_list_, slot_index);
  if (slot.on_attempt_list) {
    ListRemove<&QuerySlot::attempt_prev, &QuerySlot::attempt_next>(slots_, attempt_list_, slot_index);
    slot.on_attempt_list = false;
  }
  if (slot.on_wait_list) {
    ListRemove<&QuerySlot::attempt_prev, &QuerySlot::attempt_next>(slots_, wait_list_, slot_index);
    slot.on_wait_list = false;
  }
  slot.in_use = false;
  free_slots_.push_back(slot_index);
  --slots_in_use_;
}

void ShardLoop::FailSlot(uint32_t slot_index, std::atomic<uint64_t>& counter) {
  QuerySlot& slot = slots_[slot_index];
  if (slot.kind == SlotKind::kPrefetch && cache_ != nullptr) {
    cache::CacheKey key;
    cache::MakeKey(slot.query, slot.question_length, slot.has_edns, slot.dnssec_ok, key);
    cache_->PrefetchDone(key);
  }
  if (slot.kind != SlotKind::kClient) {
    ReleaseSlot(slot_index);
    return;
  }
  if (TryServeStale(slot)) {
    ReleaseSlot(slot_index);
    return;
  }
  Bump(counter);
  dns::QueryInfo info;
  info.id = slot.client_id;
  info.question_length = slot.question_length;
  info.has_edns = slot.has_edns;
  info.dnssec_ok = slot.dnssec_ok;
  uint8_t reply[dns::kHeaderSize + dns::kMaxQuestionLength + 16];
  const size_t length = dns::BuildErrorReply({slot.query, slot.query_length}, info,
                                             dns::Rcode::kServFail, config_.edns_udp_size, reply);
  if (length > 0) {
    dns::header::SetId(reply, slot.client_id);
    SendToClient(ClientRefOf(slot), {reply, length});
  }
  ReleaseSlot(slot_index);
}

void ShardLoop::RunTimers() {
  // First attempts past half the budget: count a timeout against their
  // upstream and retry once elsewhere if anything else is usable.
  while (attempt_list_.head != kNone && slots_[attempt_list_.head].attempt_deadline <= now_) {
    const uint32_t slot_index = attempt_list_.head;
    QuerySlot& slot = slots_[slot_index];
    ListRemove<&QuerySlot::attempt_prev, &QuerySlot::attempt_next>(slots_, attempt_list_, slot_index);
    slot.on_attempt_list = false;
    const int upstream = slot.upstream;
    if (upstream < 0) continue;
    const uint32_t timed_out_on = slot.connection;
    Bump(upstreams_[upstream].stats->timeouts);
    NoteHealth(upstream, health_.RecordFailure(upstream, now_));
    if (!draining_ &&
        health_.Select([this](int i) { return UpstreamUsable(i); }, upstream, rng_.Next()) >= 0) {
      Unbind(slot);
      slot.attempt = 2;
      Bump(stats_.retried);
      if (!Dispatch(slot_index, upstream, /*allow_excluded=*/false)) {
        FailSlot(slot_index, stats_.servfail_no_upstream);
      }
    }  // else nowhere else to go: keep waiting here
    NoteConnectionTimeout(timed_out_on);
  }
  // Final deadlines: the list is in deadline order, so stop at the first
  // live one. New queries never extend an old query's deadline.
  while (deadline_list_.head != kNone && slots_[deadline_list_.head].deadline <= now_) {
    const uint32_t slot_index = deadline_list_.head;
    QuerySlot& slot = slots_[slot_index];
    const uint32_t timed_out_on = slot.connection;
    if (slot.upstream >= 0 && slot.connection != kNone &&
        (slot.attempt == 2 || !retry_on_timeout_) && slot.kind == SlotKind::kClient) {
      Bump(upstreams_[slot.upstream].stats->timeouts);
      NoteHealth(slot.upstream, health_.RecordFailure(slot.upstream, now_));
    }
    FailSlot(slot_index, stats_.servfail_timeout);
    NoteConnectionTimeout(timed_out_on);
  }
  // Idle TCP clients (RFC 7766 §6.2.3), oldest activity first.
  while (idle_head_ != kNone &&
         now_ - tcp_clients_[idle_head_].last_activity >= config_.tcp_idle_timeout) {
    Bump(stats_.tcp_idle_closed);
    CloseClient(idle_head_);
  }
  for (uint32_t i = 0; i < connections_.size(); ++i) {
    Connection& conn = *connections_[i];
    if ((conn.state == ConnectionState::kConnecting ||
         conn.state == ConnectionState::kHandshaking) &&
        now_ >= conn.connect_deadline) {
      CloseConnection(i, true, "connect/handshake timed out");
    } else if (conn.state == ConnectionState::kReady && conn.ids.size() == 0 &&
               conn.pending_plain.empty() && now_ - conn.last_activity >= IdleTimeout(conn)) {
      Bump(stats_.upstream_idle_closed);
      CloseConnection(i, false, "idle");
    }
  }
  if (draining_) return;
  for (int u = 0; u < static_cast<int>(upstreams_.size()); ++u) {
    UpstreamRuntime& runtime = upstreams_[u];
    // After a failure, keep trying in the background (with backoff) so the
    // upstream is ready again as soon as it comes back.
    if (runtime.reconnect_pending && now_ >= runtime.retry_at) {
      runtime.reconnect_pending = false;
      bool any_open = false;
      for (uint32_t conn_index : runtime.connections) {
        if (connections_[conn_index]->state != ConnectionState::kIdle) any_open = true;
      }
      if (!any_open) StartConnect(runtime.connections.front());
    }
    if (health_.ProbeDue(u, now_)) {
      health_.ProbeSent(u, now_);
      SendProbe(u);
    }
  }
}

// ---------------------------------------------------------------------------
// Shard

Shard::Shard(int index, std::shared_ptr<const config::Config> config)
    : index_(index),
      config_(std::move(config)),
      upstream_stats_(new UpstreamStats[config_->upstreams.size()]) {}

Shard::~Shard() = default;

void Shard::Run(const std::function<void(absl::Status)>& ready) {
  control::SetThreadAllocationCounters(&stats_.heap_allocations, &stats_.tls_allocations);
  ShardLoop loop(index_, *config_, stats_, upstream_stats_.get(), stop_requested_);
  absl::Status status = loop.Setup();
  ready(status);
  if (!status.ok()) return;
  loop.Run();
}

}  // namespace dotproxy::shard
