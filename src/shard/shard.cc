// The shard's reactor loop and the one place where its rooms are wired
// together:
//
//   UdpFrontend ─┐                          ┌─> PacketCache
//   TcpClients  ─┤
//   TlsClients  ─┼─ QuerySink ─> Forwarder ─┼─> PoolSet ─> UpstreamPool ─> Connection
//                └──── Replier (Frontends) <┘      AnswerSink <─┘
//
// One iteration: apply a reloaded configuration if one was posted → reap
// completions and route each by its Op to the room that issued it → timers
// → flush batches (waiting queries, TLS writes, TCP answers; UDP replies
// are already queued) → one submit-and-wait.

#include "dotproxy/shard/shard.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "dotproxy/cache/packet_cache.h"
#include "dotproxy/control/alloc_counter.h"
#include "dotproxy/control/log.h"
#include "dotproxy/frontend/acl.h"
#include "dotproxy/frontend/doh_protocol.h"
#include "dotproxy/frontend/frontends.h"
#include "dotproxy/frontend/rate_limiter.h"
#include "dotproxy/frontend/tcp_clients.h"
#include "dotproxy/frontend/tls_clients.h"
#include "dotproxy/frontend/udp_frontend.h"
#include "dotproxy/io/clock.h"
#include "dotproxy/io/reactor.h"
#include "dotproxy/shard/forwarder.h"
#include "dotproxy/tls/client.h"
#include "dotproxy/upstream/id_table.h"
#include "dotproxy/upstream/pool.h"
#include "dotproxy/upstream/pool_set.h"
#include "src/shard/sizing.h"

namespace dotproxy::shard {
namespace {

using control::Log;
using control::Severity;
using metrics::Bump;

constexpr auto kDrainBudget = std::chrono::milliseconds(1500);
constexpr auto kMaxWait = std::chrono::milliseconds(100);
// A reactor that fails this many times in a row is not coming back: stop
// the process rather than spin.
constexpr int kMaxConsecutiveSubmitErrors = 1000;
// After a reload, queries in flight on the replaced pool get their own
// timeout plus this to be answered there; then they are retried on the new.
constexpr auto kRetireGrace = std::chrono::milliseconds(500);

dns::UpstreamQueryOptions QueryOptions(const config::Config& config) {
  dns::UpstreamQueryOptions options;
  options.pad = config.pad_queries;
  options.strip_client_subnet = config.strip_client_subnet;
  options.request_keepalive = true;
  return options;
}

// UDP intake calls overload later than the capacity queue: cutting the
// receive buffers drops datagrams, so it waits for 200 ms in which no read
// datagram had waited less than 25 ms (a shard that truly cannot keep up,
// not one that lost its CPU for a moment), read at least 8 times (a
// multishot receive never says the socket ran dry, so two stragglers that
// each waited behind a busy loop would otherwise pass for a queue: CI's
// sanitizer run shed a lone query so during a TLS handshake flood); the
// cut buffer then holds about 6 ms of service (an eighth of overload_wait).
constexpr io::StandingQueueSettings kIntakeQueue{.standing_after = std::chrono::milliseconds(200),
                                                 .overload_wait = std::chrono::milliseconds(50),
                                                 .max_wait = std::chrono::milliseconds(200),
                                                 .min_old = 8};

ForwarderSettings MakeForwarderSettings(const config::Config& config) {
  ForwarderSettings settings;
  settings.query_timeout = config.query_timeout;
  // Retries stay inside a zone's group: worth a shorter first attempt when
  // some group has another upstream to go to.
  settings.retry_on_timeout = config.upstreams.size() > 1;
  for (const config::ZoneConfig& zone : config.zones) {
    settings.retry_on_timeout = settings.retry_on_timeout || zone.upstreams.size() > 1;
  }
  settings.edns_udp_size = config.edns_udp_size;
  settings.max_udp_size = static_cast<uint16_t>(config.max_udp_size);
  settings.query_options = QueryOptions(config);
  settings.max_inflight = static_cast<size_t>(config.max_inflight);
  settings.minimal_any = config.minimal_any;
  settings.policy = config.policy_tables.get();
  return settings;
}

bool SameRateLimit(const config::Config& a, const config::Config& b) {
  if (a.rate_limit_exempt.size() != b.rate_limit_exempt.size()) return false;
  for (size_t i = 0; i < a.rate_limit_exempt.size(); ++i) {
    if (a.rate_limit_exempt[i].text != b.rate_limit_exempt[i].text) return false;
  }
  return a.rate_limit == b.rate_limit && a.rate_limit_burst == b.rate_limit_burst &&
         a.rate_limit_prefix == b.rate_limit_prefix && a.rate_limit_slip == b.rate_limit_slip;
}

upstream::PoolSettings MakePoolSettings(const config::Config& config) {
  upstream::PoolSettings settings;
  settings.connection.connect_timeout = config.connect_timeout;
  settings.connection.idle_timeout = config.upstream_idle_timeout;
  settings.max_inflight_per_connection = static_cast<size_t>(config.max_inflight_per_connection);
  settings.max_connections_per_upstream = config.max_connections_per_upstream;
  settings.probe_timeout = config.query_timeout;
  settings.query_options = QueryOptions(config);
  return settings;
}

bool SameUpstream(const config::UpstreamConfig& a, const config::UpstreamConfig& b) {
  return a.spec == b.spec && a.address == b.address && a.transport == b.transport &&
         a.peer.auth_name == b.peer.auth_name && a.peer.pins == b.peer.pins &&
         a.peer.pin_only == b.peer.pin_only && a.priority == b.priority &&
         a.metrics_slot == b.metrics_slot && a.doh_path == b.doh_path;
}

// Whether a reload from `a` to `b` needs a new upstream pool: anything a
// pool or its connections were built from.
bool SameUpstreams(const std::vector<config::UpstreamConfig>& a,
                   const std::vector<config::UpstreamConfig>& b) {
  if (a.size() != b.size()) return false;
  for (size_t u = 0; u < a.size(); ++u) {
    if (!SameUpstream(a[u], b[u])) return false;
  }
  return true;
}

// Zones are replaced whole: any change to any zone makes a new generation.
bool SameZones(const config::Config& a, const config::Config& b) {
  if (a.zones.size() != b.zones.size()) return false;
  for (size_t z = 0; z < a.zones.size(); ++z) {
    const config::ZoneConfig& x = a.zones[z];
    const config::ZoneConfig& y = b.zones[z];
    if (x.name != y.name || x.cache != y.cache || !SameUpstreams(x.upstreams, y.upstreams)) {
      return false;
    }
  }
  return true;
}

bool PoolChanged(const config::Config& a, const config::Config& b) {
  if (!SameUpstreams(a.upstreams, b.upstreams) || !SameZones(a, b)) return true;
  return a.ca_file != b.ca_file || a.connect_timeout != b.connect_timeout ||
         a.upstream_idle_timeout != b.upstream_idle_timeout ||
         a.max_inflight_per_connection != b.max_inflight_per_connection ||
         a.max_connections_per_upstream != b.max_connections_per_upstream ||
         a.query_timeout != b.query_timeout || a.pad_queries != b.pad_queries ||
         a.strip_client_subnet != b.strip_client_subnet;
}

// Validated by the config layer; all types if it somehow is not.
dnstap::MessageMask DnstapMask(const config::Config& config) {
  return dnstap::ParseMessageTypes(config.dnstap_messages).value_or(dnstap::kAllMessages);
}

}  // namespace

// All state of one shard. Private to this file.
class ShardLoop {
 public:
  ShardLoop(int index, std::shared_ptr<const config::Config> config,
            std::shared_ptr<const upstream::ZoneRouting> routing, ShardStats& stats,
            UpstreamStats* upstream_stats, std::atomic<bool>& stop_requested,
            ConfigMailbox& mailbox, std::atomic<uint64_t>& applied_generation,
            const std::function<void(std::string)>& report_reload_error)
      : index_(index),
        config_(std::move(config)),
        routing_(std::move(routing)),
        stats_(stats),
        upstream_stats_(upstream_stats),
        stop_requested_(stop_requested),
        mailbox_(mailbox),
        applied_generation_(applied_generation),
        report_reload_error_(report_reload_error),
        acl_(config_->allow) {}
  // The reactor goes first: closing the ring cancels every operation still
  // pointing into the rooms' buffers, before the rooms free them.
  ~ShardLoop() { reactor_.reset(); }

  absl::Status Setup();
  // Before Setup: dnstap on (null: off).
  void set_dnstap(dnstap::Tap* tap) { tap_ = tap; }
  // Returns false when the loop ended on a reactor failure.
  bool Run();

 private:
  void Route(const io::Completion& completion);
  void BeginDrain();
  // The pools (with their TLS context) for `routing`'s upstream groups,
  // tagged for the PoolSet.
  absl::StatusOr<upstream::PoolGeneration> MakePool(
      std::shared_ptr<const upstream::ZoneRouting> routing);
  // The posted configuration, applied between iterations (see Shard::PostConfig).
  void ApplyPostedConfig();
  // The rate limiter `config` asks for (none when rate_limit is 0), and
  // the listeners steered for it.
  void MakeRateLimiter(const config::Config& config);
  // Submits and waits; false once errors persist.
  bool SubmitAndWait(std::chrono::milliseconds wait);
  // While UDP intake stands: tells the front end how long the shard was
  // off its CPU at a time since the last turn (it sizes the cut receive
  // buffers).
  void NoteOffCpu();

  int index_;
  // The configuration in force; the pools keep the one they were built
  // from (they borrow its addresses and policies).
  std::shared_ptr<const config::Config> config_;
  std::shared_ptr<const upstream::ZoneRouting> routing_;  // for Setup's first pools
  ShardStats& stats_;
  UpstreamStats* upstream_stats_;
  std::atomic<bool>& stop_requested_;
  ConfigMailbox& mailbox_;
  std::atomic<uint64_t>& applied_generation_;
  const std::function<void(std::string)>& report_reload_error_;
  frontend::Acl acl_;  // the front ends hold a reference: reassigned on reload
  io::LoopClock clock_;
  // The last turn's loop time, thread CPU time and context switches,
  // while UDP intake stands (switches -1: not measuring).
  io::Clock::time_point last_turn_wall_{};
  int64_t last_turn_cpu_ns_ = 0;
  int64_t last_turn_switches_ = -1;

  // Rooms. Declared before the reactor, destroyed after it (see ~ShardLoop).
  std::unique_ptr<cache::PacketCache> cache_;  // null when --cache-size 0
  std::unique_ptr<frontend::UdpFrontend> udp_;
  std::unique_ptr<frontend::TcpClients> tcp_;
  std::unique_ptr<frontend::TlsClients> tls_;
  std::unique_ptr<frontend::Frontends> frontends_;
  upstream::PoolSet pools_;
  std::unique_ptr<Forwarder> forwarder_;
  std::unique_ptr<frontend::RateLimiter> rate_limiter_;  // null: no limit
  dnstap::Tap* tap_ = nullptr;                           // null: dnstap off
  upstream::PoolGeneration first_pool_;  // made by Setup, installed by Run
  std::unique_ptr<io::Reactor> reactor_;

  bool draining_ = false;
  io::Clock::time_point drain_deadline_{};
  int consecutive_submit_errors_ = 0;
};

absl::Status ShardLoop::Setup() {
  const config::Config& config = *config_;
  io::ReactorOptions reactor_options = kReactorOptions;
  reactor_options.backend =
      config.io_backend == "epoll" ? io::IoBackend::kEpoll : io::IoBackend::kUring;
  auto reactor = io::Reactor::Create(reactor_options);
  if (!reactor.ok()) return reactor.status();
  reactor_ = *std::move(reactor);

  udp_ = std::make_unique<frontend::UdpFrontend>(*reactor_, acl_, stats_, index_);
  // A query's waiting budget is the same in the socket as in the forwarder.
  udp_->EnableIntakeShedding(&clock_, kIntakeQueue);
  // Inherited sockets (socket activation), when any, replace --listen.
  if (auto status = udp_->Open(config.listen, config.inherited_listeners,
                               config.udp_socket_buffer, kUdpReplySlots, config.freebind);
      !status.ok()) {
    return status;
  }
  tcp_ = std::make_unique<frontend::TcpClients>(*reactor_, clock_, acl_, stats_, index_);
  frontend::TcpLimits tcp_limits;
  tcp_limits.max_clients = config.max_tcp_clients;
  tcp_limits.idle_timeout = config.tcp_idle_timeout;
  tcp_limits.message_timeout = config.tcp_message_timeout;
  tcp_limits.freebind = config.freebind;
  if (auto status = tcp_->Open(config.listen, config.inherited_listeners, tcp_limits);
      !status.ok()) {
    return status;
  }
  tls_ = std::make_unique<frontend::TlsClients>(*reactor_, clock_, acl_, stats_, index_);
  std::vector<frontend::TlsListen> tls_listen;
  for (const auto& address : config.listen_tls) tls_listen.push_back({address});  // DoT
  for (const auto& a : config.listen_https) tls_listen.push_back({a, frontend::TlsListenerKind::kHttps});
  const auto tls_limits = frontend::TlsLimits::From(tcp_limits);
  auto status = tls_->Open(tls_listen, config.tls_server, tls_limits, frontend::DohProtocolFactory(stats_));
  if (!status.ok()) return status;
  frontends_ = std::make_unique<frontend::Frontends>(*udp_, *tcp_, *tls_);

  if (config.cache_size > 0) {
    cache::CacheConfig cache_config = config.cache;
    cache_config.entries = CacheEntriesPerShard(config);
    auto cache = cache::PacketCache::Create(cache_config);
    if (!cache.ok()) return cache.status();
    cache_ = *std::move(cache);
  }

  forwarder_ = std::make_unique<Forwarder>(MakeForwarderSettings(config), clock_, *frontends_,
                                           pools_, cache_.get(), stats_);
  MakeRateLimiter(config);
  if (tap_ != nullptr) {
    tap_->set_mask(DnstapMask(config));
    forwarder_->set_dnstap(tap_);
  }
  auto pool = MakePool(std::move(routing_));
  if (!pool.ok()) return pool.status();
  // Started by Run(): connections open once the loop turns.
  first_pool_ = *std::move(pool);
  udp_->set_sink(forwarder_.get());
  tcp_->set_sink(forwarder_.get());
  tls_->set_sink(forwarder_.get());
  return absl::OkStatus();
}

void ShardLoop::MakeRateLimiter(const config::Config& config) {
  rate_limiter_.reset();
  if (config.rate_limit > 0) {
    frontend::RateLimitSettings settings;
    settings.qps = static_cast<uint32_t>(config.rate_limit);
    settings.burst = static_cast<uint32_t>(config.rate_limit_burst);
    (void)config::ParsePrefixLengths(config.rate_limit_prefix, settings.v4_prefix,
                                     settings.v6_prefix);  // validated by the config layer
    settings.slip = static_cast<uint32_t>(config.rate_limit_slip);
    settings.exempt = config.rate_limit_exempt;
    rate_limiter_ = std::make_unique<frontend::RateLimiter>(settings, &stats_.rate_limit_evictions);
    // One shard sees all of a client's queries, so its budget is exact.
    for (absl::Status status :
         {udp_->SteerByClientPrefix(static_cast<uint32_t>(config.threads), settings.v4_prefix,
                                    settings.v6_prefix),
          tcp_->SteerByClientPrefix(static_cast<uint32_t>(config.threads), settings.v4_prefix,
                                    settings.v6_prefix),
          tls_->SteerByClientPrefix(static_cast<uint32_t>(config.threads), settings.v4_prefix,
                                    settings.v6_prefix)}) {
      if (!status.ok()) {
        Log(Severity::kWarning, "shard %d: clients not steered by prefix (%s): each shard "
            "limits the share of a client's queries it receives", index_, status.message());
      }
    }
  }
  forwarder_->set_rate_limiter(rate_limiter_.get());
}

absl::StatusOr<upstream::PoolGeneration> ShardLoop::MakePool(
    std::shared_ptr<const upstream::ZoneRouting> routing) {
  // Upstream numbers and connection indices of a generation carry its tag
  // above these many bits (UpstreamPool).
  const size_t upstreams = upstream::GroupedUpstreamCount(*routing->config);
  if (upstreams >= (size_t{1} << upstream::UpstreamPool::kUpstreamTagShift) ||
      upstreams * static_cast<size_t>(routing->config->max_connections_per_upstream) >=
          (size_t{1} << upstream::UpstreamPool::kConnectionTagShift)) {
    return absl::InvalidArgumentError(absl::StrCat(
        upstreams, " upstreams in distinct zone groups: too many for one shard (give zones "
        "with the same resolvers the same upstream list)"));
  }
  auto context = tls::ClientContext::Create(routing->config->ca_file);
  if (!context.ok()) return context.status();
  const upstream::PoolDependencies deps{*reactor_, clock_, stats_, upstream_stats_, index_,
                                        forwarder_.get()};
  return pools_.MakeGeneration(routing, *std::move(context), MakePoolSettings(*routing->config),
                               deps);
}

void ShardLoop::ApplyPostedConfig() {
  std::unique_ptr<ConfigMailbox::Letter> letter = mailbox_.Take();
  if (!letter) return;
  std::shared_ptr<const config::Config> next = std::move(letter->config);
  std::string error;
  if (config_->listen != next->listen) {
    // All or nothing per front end: a UDP failure changes nothing; a TCP
    // failure after UDP succeeded puts UDP back.
    absl::Status status = udp_->SetListeners(next->listen);
    if (status.ok()) {
      status = tcp_->SetListeners(next->listen);
      if (!status.ok()) (void)udp_->SetListeners(config_->listen);
    }
    if (!status.ok()) {
      error = absl::StrCat("listen addresses kept: ", status.message());
      Log(Severity::kError, "shard %d: reload: %s", index_, error);
      auto kept = std::make_shared<config::Config>(*next);
      kept->listen = config_->listen;
      next = std::move(kept);
    }
  }
  acl_ = frontend::Acl(next->allow);
  if (!SameRateLimit(*config_, *next) || config_->listen != next->listen) {
    MakeRateLimiter(*next);
  }
  tcp_->SetIdleTimeout(next->tcp_idle_timeout);
  tcp_->SetMessageTimeout(next->tcp_message_timeout);
  tls_->SetTimeouts(next->tcp_idle_timeout, next->tcp_message_timeout);
  tls_->SetContext(next->tls_server);  // new handshakes only; sessions keep theirs
  if (cache_) cache_->SetPolicy(next->cache);
  forwarder_->UpdateSettings(MakeForwarderSettings(*next));
  // The destination is restart-only (main's writer); the types are not.
  if (tap_ != nullptr) tap_->set_mask(DnstapMask(*next));
  if (PoolChanged(pools_.current_config(), *next)) {
    auto pool = MakePool(letter->routing);
    if (pool.ok()) {
      // Queries in flight on the old pool finish there (or are retried on
      // the new one when their time there is up).
      pools_.Install(*std::move(pool),
                     clock_.now() + pools_.current_config().query_timeout + kRetireGrace);
    } else {
      // main checked the trust store; if it changed since, keep serving.
      Log(Severity::kError, "shard %d: reload: upstreams kept: %s", index_, pool.status().message());
    }
  }
  config_ = std::move(next);
  report_reload_error_(std::move(error));
  applied_generation_.store(letter->generation, std::memory_order_release);
}

void ShardLoop::Route(const io::Completion& completion) {
  const uint32_t index = completion.data.index;
  switch (completion.data.op) {
    case io::Op::kUdpRecv: udp_->OnReceive(index, completion); break;
    case io::Op::kUdpSend: udp_->OnSendDone(index, completion); break;
    case io::Op::kAccept: tcp_->OnAccept(index, completion); break;
    case io::Op::kClientRecv: tcp_->OnReceive(index, completion); break;
    case io::Op::kClientSend: tcp_->OnSendDone(index, completion); break;
    case io::Op::kTlsAccept: tls_->OnAccept(index, completion); break;
    case io::Op::kTlsRecv: tls_->OnReceive(index, completion); break;
    case io::Op::kTlsSend: tls_->OnSendDone(index, completion); break;
    case io::Op::kUpstreamConnect:
    case io::Op::kUpstreamRecv:
    case io::Op::kUpstreamSend: pools_.OnCompletion(index, completion); break;
    case io::Op::kCancel:
    case io::Op::kNone: break;
  }
}

void ShardLoop::NoteOffCpu() {
  const io::ThreadSchedule now = io::ReadThreadSchedule();
  const io::Clock::time_point wall = clock_.now();
  if (last_turn_switches_ >= 0 && now.switches > last_turn_switches_) {
    const auto off_cpu =
        (wall - last_turn_wall_) - std::chrono::nanoseconds(now.cpu_ns - last_turn_cpu_ns_);
    udp_->NoteOffCpu(off_cpu / (now.switches - last_turn_switches_));
  }
  last_turn_wall_ = wall;
  last_turn_cpu_ns_ = now.cpu_ns;
  last_turn_switches_ = now.switches;
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
  tls_->Start();
  pools_.Install(std::move(first_pool_), clock_.now());
  bool healthy = true;
  while (true) {
    clock_.Update();
    // /health reads this: an idle loop still turns every kMaxWait.
    stats_.loop_heartbeat_ns.store(
        std::chrono::duration_cast<std::chrono::nanoseconds>(clock_.now().time_since_epoch())
            .count(),
        std::memory_order_relaxed);
    if (!draining_ && stop_requested_.load(std::memory_order_relaxed)) BeginDrain();
    // One reload at a time: the next waits until the pool the last one
    // replaced has drained.
    if (!draining_ && mailbox_.has_mail() && pools_.CanReplace()) ApplyPostedConfig();
    // Timers.
    forwarder_->RunTimers(draining_);
    tcp_->ExpireIdle();
    tls_->ExpireIdle();
    pools_.RunTimers(draining_);
    if (draining_ && (forwarder_->in_flight() == 0 || clock_.now() >= drain_deadline_)) break;

    // End of batch: waiting queries, one TLS write per upstream connection
    // with queued queries, answers to TCP clients, then one submit for
    // everything (UDP replies included).
    forwarder_->DispatchWaiting();
    pools_.Flush();
    tcp_->Flush();
    tls_->Flush();
    reactor_->PublishBuffers();

    auto wait = kMaxWait;
    const auto next_deadline = forwarder_->NextDeadline();
    if (next_deadline != io::Clock::time_point::max()) {
      const auto until =
          std::chrono::duration_cast<std::chrono::milliseconds>(next_deadline - clock_.now());
      wait = std::clamp(until + std::chrono::milliseconds(1), std::chrono::milliseconds(1),
                        kMaxWait);
    }
    if (tls_->has_deferred()) wait = std::chrono::milliseconds(0);  // handshakes waiting
    if (!SubmitAndWait(wait)) {
      healthy = false;
      break;
    }
    clock_.Update();
    if (udp_->intake_standing()) {
      NoteOffCpu();
    } else {
      last_turn_switches_ = -1;
    }
    const size_t reaped = reactor_->Reap([this](const io::Completion& c) { Route(c); });
    Bump(stats_.loop_iterations);
    Bump(stats_.completions, reaped);
  }

  // Whatever is still in flight gets SERVFAIL, then a last flush.
  forwarder_->FailAll();
  tcp_->Flush();
  tls_->Flush();
  (void)reactor_->Submit();
  // Give the final replies a moment to leave (UDP sends complete inline).
  const auto flush_deadline = io::Clock::now() + std::chrono::milliseconds(200);
  while (!udp_->idle() && io::Clock::now() < flush_deadline) {
    if (!reactor_->SubmitAndWait(std::chrono::milliseconds(20)).ok()) break;
    reactor_->Reap([this](const io::Completion& c) { Route(c); });
  }
  pools_.Shutdown();
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
  tls_->StopIntake();
}

namespace {

// The zone routing of `config`: built once per configuration (the control
// thread posts the same one to every shard) and shared read-only.
std::shared_ptr<const upstream::ZoneRouting> RoutingFor(
    const std::shared_ptr<const config::Config>& config) {
  static std::mutex mutex;  // control thread; never on the query path
  static std::weak_ptr<const config::Config> last_config;
  static std::shared_ptr<const upstream::ZoneRouting> last_routing;
  std::lock_guard lock(mutex);
  if (last_routing == nullptr || last_config.lock() != config) {
    last_routing = upstream::MakeZoneRouting(config);
    last_config = config;
  }
  return last_routing;
}

}  // namespace

void Shard::PostConfig(std::shared_ptr<const config::Config> config, uint64_t generation) {
  std::shared_ptr<const upstream::ZoneRouting> routing = RoutingFor(config);
  mailbox_.Post(std::move(config), std::move(routing), generation);
}

Shard::Shard(int index, std::shared_ptr<const config::Config> config)
    : index_(index),
      config_(std::move(config)),
      routing_(RoutingFor(config_)),
      upstream_stats_(new UpstreamStats[metrics::kMaxUpstreamSlots]) {}

Shard::~Shard() = default;

void Shard::Run(const std::function<void(absl::Status)>& ready) {
  control::SetThreadAllocationCounters(&stats_.heap_allocations, &stats_.tls_allocations);
  const std::function<void(std::string)> report_reload_error = [this](std::string error) {
    std::lock_guard lock(reload_error_mutex_);
    reload_error_ = std::move(error);
  };
  ShardLoop loop(index_, config_, routing_, stats_, upstream_stats_.get(), stop_requested_, mailbox_,
                 applied_generation_, report_reload_error);
  loop.set_dnstap(tap_);
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
