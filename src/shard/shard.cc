// The shard's reactor loop and the one place where its rooms are wired
// together:
//
//   UdpFrontend ─┐                          ┌─> PacketCache
//   TcpClients  ─┼─ QuerySink ─> Forwarder ─┼─> UpstreamPool ─> Connection
//                └──── Replier (Frontends) <┘      AnswerSink <─┘
//
// One iteration: reap completions and route each by its Op to the room that
// issued it → timers → flush batches (waiting queries, TLS writes, TCP
// answers; UDP replies are already queued) → one submit-and-wait.

#include "dotproxy/shard/shard.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "dotproxy/cache/packet_cache.h"
#include "dotproxy/control/alloc_counter.h"
#include "dotproxy/control/log.h"
#include "dotproxy/frontend/acl.h"
#include "dotproxy/frontend/frontends.h"
#include "dotproxy/frontend/tcp_clients.h"
#include "dotproxy/frontend/udp_frontend.h"
#include "dotproxy/io/clock.h"
#include "dotproxy/io/reactor.h"
#include "dotproxy/shard/forwarder.h"
#include "dotproxy/tls/client.h"
#include "dotproxy/upstream/id_table.h"
#include "dotproxy/upstream/pool.h"

namespace dotproxy::shard {
namespace {

using control::Log;
using control::Severity;
using metrics::Bump;

// Sizing of per-shard pools, fixed at start so the query path never allocates.
constexpr io::ReactorOptions kReactorOptions{
    .submission_entries = 4096,
    .completion_entries = 16384,
    .datagram_buffers = 2048,
    .datagram_buffer_size = 2048,
};
constexpr size_t kUdpReplySlots = 2048;
constexpr auto kDrainBudget = std::chrono::milliseconds(1500);
constexpr auto kMaxWait = std::chrono::milliseconds(100);
// A reactor that fails this many times in a row is not coming back: stop
// the process rather than spin.
constexpr int kMaxConsecutiveSubmitErrors = 1000;

}  // namespace

// All state of one shard. Private to this file.
class ShardLoop {
 public:
  ShardLoop(int index, const config::Config& config, ShardStats& stats,
            UpstreamStats* upstream_stats, std::atomic<bool>& stop_requested)
      : index_(index),
        config_(config),
        stats_(stats),
        upstream_stats_(upstream_stats),
        stop_requested_(stop_requested),
        acl_(config.allow) {}
  // The reactor goes first: closing the ring cancels every operation still
  // pointing into the rooms' buffers, before the rooms free them.
  ~ShardLoop() { reactor_.reset(); }

  absl::Status Setup();
  // Returns false when the loop ended on a reactor failure.
  bool Run();

 private:
  void Route(const io::Completion& completion);
  void BeginDrain();
  // Submits and waits; false once errors persist.
  bool SubmitAndWait(std::chrono::milliseconds wait);

  int index_;
  const config::Config& config_;
  ShardStats& stats_;
  UpstreamStats* upstream_stats_;
  std::atomic<bool>& stop_requested_;
  frontend::Acl acl_;
  io::LoopClock clock_;

  // Rooms. Declared before the reactor, destroyed after it (see ~ShardLoop).
  std::unique_ptr<tls::ClientContext> tls_context_;
  std::unique_ptr<cache::PacketCache> cache_;  // null when --cache-size 0
  std::unique_ptr<frontend::UdpFrontend> udp_;
  std::unique_ptr<frontend::TcpClients> tcp_;
  std::unique_ptr<frontend::Frontends> frontends_;
  std::unique_ptr<upstream::UpstreamPool> pool_;
  std::unique_ptr<Forwarder> forwarder_;
  std::unique_ptr<io::Reactor> reactor_;

  bool draining_ = false;
  io::Clock::time_point drain_deadline_{};
  int consecutive_submit_errors_ = 0;
};

absl::Status ShardLoop::Setup() {
  io::ReactorOptions reactor_options = kReactorOptions;
  reactor_options.backend =
      config_.io_backend == "epoll" ? io::IoBackend::kEpoll : io::IoBackend::kUring;
  auto reactor = io::Reactor::Create(reactor_options);
  if (!reactor.ok()) return reactor.status();
  reactor_ = *std::move(reactor);
  auto context = tls::ClientContext::Create(config_.ca_file);
  if (!context.ok()) return context.status();
  tls_context_ = *std::move(context);

  udp_ = std::make_unique<frontend::UdpFrontend>(*reactor_, acl_, stats_, index_);
  // Inherited sockets (socket activation), when any, replace --listen.
  if (auto status = udp_->Open(config_.listen, config_.inherited_listeners,
                               config_.udp_socket_buffer, kUdpReplySlots);
      !status.ok()) {
    return status;
  }
  tcp_ = std::make_unique<frontend::TcpClients>(*reactor_, clock_, acl_, stats_, index_);
  frontend::TcpLimits tcp_limits;
  tcp_limits.max_clients = config_.max_tcp_clients;
  tcp_limits.idle_timeout = config_.tcp_idle_timeout;
  if (auto status = tcp_->Open(config_.listen, config_.inherited_listeners, tcp_limits);
      !status.ok()) {
    return status;
  }
  frontends_ = std::make_unique<frontend::Frontends>(*udp_, *tcp_);

  dns::UpstreamQueryOptions query_options;
  query_options.pad = config_.pad_queries;
  query_options.strip_client_subnet = config_.strip_client_subnet;
  query_options.request_keepalive = true;

  upstream::PoolSettings pool_settings;
  pool_settings.connection.connect_timeout = config_.connect_timeout;
  pool_settings.connection.idle_timeout = config_.upstream_idle_timeout;
  pool_settings.max_inflight_per_connection =
      static_cast<size_t>(config_.max_inflight_per_connection);
  pool_settings.max_connections_per_upstream = config_.max_connections_per_upstream;
  pool_settings.probe_timeout = config_.query_timeout;
  pool_settings.query_options = query_options;
  pool_ = std::make_unique<upstream::UpstreamPool>(config_.upstreams, pool_settings, *reactor_,
                                                   clock_, *tls_context_, stats_,
                                                   upstream_stats_, index_);

  if (config_.cache_size > 0) {
    cache::CacheConfig cache_config = config_.cache;
    cache_config.entries = CacheEntriesPerShard(config_);
    auto cache = cache::PacketCache::Create(cache_config);
    if (!cache.ok()) return cache.status();
    cache_ = *std::move(cache);
  }

  ForwarderSettings forwarder_settings;
  forwarder_settings.query_timeout = config_.query_timeout;
  forwarder_settings.retry_on_timeout = config_.upstreams.size() > 1;
  forwarder_settings.edns_udp_size = config_.edns_udp_size;
  forwarder_settings.query_options = query_options;
  forwarder_settings.max_inflight = static_cast<size_t>(config_.max_inflight);
  forwarder_ = std::make_unique<Forwarder>(forwarder_settings, clock_, *frontends_, *pool_,
                                           cache_.get(), stats_);
  udp_->set_sink(forwarder_.get());
  tcp_->set_sink(forwarder_.get());
  pool_->set_sink(forwarder_.get());
  return absl::OkStatus();
}

void ShardLoop::Route(const io::Completion& completion) {
  const uint32_t index = completion.data.index;
  switch (completion.data.op) {
    case io::Op::kUdpRecv: udp_->OnReceive(index, completion); break;
    case io::Op::kUdpSend: udp_->OnSendDone(index, completion); break;
    case io::Op::kAccept: tcp_->OnAccept(index, completion); break;
    case io::Op::kClientRecv: tcp_->OnReceive(index, completion); break;
    case io::Op::kClientSend: tcp_->OnSendDone(index, completion); break;
    case io::Op::kUpstreamConnect:
    case io::Op::kUpstreamRecv:
    case io::Op::kUpstreamSend: pool_->OnCompletion(index, completion); break;
    case io::Op::kCancel:
    case io::Op::kNone: break;
  }
}

bool ShardLoop::SubmitAndWait(std::chrono::milliseconds wait) {
  const absl::Status status = reactor_->SubmitAndWait(wait);
  if (status.ok()) {
    consecutive_submit_errors_ = 0;
    return true;
  }
  Bump(stats_.submit_errors);
  if (consecutive_submit_errors_++ == 0) {
    Log(Severity::kWarning, "shard %d: %s", index_, status.message());
  }
  if (consecutive_submit_errors_ < kMaxConsecutiveSubmitErrors) {
    // Do not spin at full speed on an error that persists.
    usleep(1000);
    return true;
  }
  Log(Severity::kError, "shard %d: stopping after %d failed submits: %s", index_,
      consecutive_submit_errors_, status.message());
  return false;
}

bool ShardLoop::Run() {
  udp_->Start();
  tcp_->Start();
  pool_->Start();
  bool healthy = true;
  while (true) {
    clock_.Update();
    // /health reads this: an idle loop still turns every kMaxWait.
    stats_.loop_heartbeat_ns.store(
        std::chrono::duration_cast<std::chrono::nanoseconds>(clock_.now().time_since_epoch())
            .count(),
        std::memory_order_relaxed);
    if (!draining_ && stop_requested_.load(std::memory_order_relaxed)) BeginDrain();
    // Timers.
    forwarder_->RunTimers(draining_);
    tcp_->ExpireIdle();
    pool_->RunTimers(draining_);
    if (draining_ && (forwarder_->in_flight() == 0 || clock_.now() >= drain_deadline_)) break;

    // End of batch: waiting queries, one TLS write per upstream connection
    // with queued queries, answers to TCP clients, then one submit for
    // everything (UDP replies included).
    forwarder_->DispatchWaiting();
    pool_->Flush();
    tcp_->Flush();
    reactor_->PublishBuffers();

    auto wait = kMaxWait;
    const auto next_deadline = forwarder_->NextDeadline();
    if (next_deadline != io::Clock::time_point::max()) {
      const auto until =
          std::chrono::duration_cast<std::chrono::milliseconds>(next_deadline - clock_.now());
      wait = std::clamp(until + std::chrono::milliseconds(1), std::chrono::milliseconds(1),
                        kMaxWait);
    }
    if (!SubmitAndWait(wait)) {
      healthy = false;
      break;
    }
    clock_.Update();
    const size_t reaped = reactor_->Reap([this](const io::Completion& c) { Route(c); });
    Bump(stats_.loop_iterations);
    Bump(stats_.completions, reaped);
  }

  // Whatever is still in flight gets SERVFAIL, then a last flush.
  forwarder_->FailAll();
  tcp_->Flush();
  (void)reactor_->Submit();
  // Give the final replies a moment to leave (UDP sends complete inline).
  const auto flush_deadline = io::Clock::now() + std::chrono::milliseconds(200);
  while (!udp_->idle() && io::Clock::now() < flush_deadline) {
    if (!reactor_->SubmitAndWait(std::chrono::milliseconds(20)).ok()) break;
    reactor_->Reap([this](const io::Completion& c) { Route(c); });
  }
  pool_->Shutdown();
  return healthy;
}

void ShardLoop::BeginDrain() {
  draining_ = true;
  drain_deadline_ = clock_.now() + kDrainBudget;
  Log(Severity::kInfo, "shard %d: stopping; %d queries in flight", index_,
      static_cast<int>(forwarder_->in_flight()));
  forwarder_->BeginDrain();
  // Stop intake. UDP sockets stay open to carry the remaining answers.
  udp_->StopIntake();
  tcp_->StopIntake();
}

size_t CacheEntriesPerShard(const config::Config& config) {
  if (config.cache_size == 0) return 0;
  return std::max<size_t>(1, config.cache_size / static_cast<size_t>(std::max(1, config.threads)));
}

ShardMemory EstimateShardMemory(const config::Config& config) {
  ShardMemory memory;
  memory.cache_bytes = cache::PacketCache::MemoryBytes(CacheEntriesPerShard(config));
  const size_t connections =
      config.upstreams.size() * static_cast<size_t>(config.max_connections_per_upstream);
  // Per connection: ID table, framer (two largest messages), plaintext and
  // ciphertext batches, the close scratch list.
  const size_t per_connection = upstream::IdTable::kIds * sizeof(uint32_t) * 2 +
                                2 * (upstream::kMaxStreamMessage + 2) + 2 * 64 * 1024;
  memory.fixed_bytes =
      static_cast<size_t>(config.max_inflight) * sizeof(QuerySlot) +
      size_t{kReactorOptions.datagram_buffers} * kReactorOptions.datagram_buffer_size +
      kUdpReplySlots * (frontend::kMaxUdpReply + 128) + connections * per_connection;
  memory.tcp_worst_bytes = static_cast<size_t>(config.max_tcp_clients) *
                           (frontend::TcpClients::kOutCapacity + frontend::TcpClients::kInCapacity);
  return memory;
}

Shard::Shard(int index, std::shared_ptr<const config::Config> config)
    : index_(index),
      config_(std::move(config)),
      upstream_stats_(new UpstreamStats[config_->upstreams.size()]) {}

Shard::~Shard() = default;

void Shard::Run(const std::function<void(absl::Status)>& ready) {
  control::SetThreadAllocationCounters(&stats_.heap_allocations, &stats_.tls_allocations);
  ShardLoop loop(index_, *config_, stats_, upstream_stats_.get(), stop_requested_);
  absl::Status status = loop.Setup();
  if (status.ok()) stats_.serving.store(true, std::memory_order_relaxed);
  ready(status);
  if (!status.ok()) return;
  const bool clean = loop.Run();
  stats_.serving.store(false, std::memory_order_relaxed);
  if (!clean) {
    failed_.store(true, std::memory_order_relaxed);
    // The control thread waits for signals: tell it this shard is gone.
    kill(getpid(), SIGTERM);
  }
}

}  // namespace dotproxy::shard
