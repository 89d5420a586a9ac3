// dotproxy: flags -> config -> shards. main() only starts things and waits
// for signals; all DNS work happens on the shard threads.

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "dotproxy/config/config.h"
#include "dotproxy/control/alloc_counter.h"
#include "dotproxy/control/log.h"
#include "dotproxy/control/socket_activation.h"
#include "dotproxy/daemon/reload.h"
#include "dotproxy/daemon/systemd.h"
#include "dotproxy/io/reactor.h"
#include "dotproxy/metrics/http_server.h"
#include "dotproxy/metrics/prometheus.h"
#include "dotproxy/metrics/stats_format.h"
#include "dotproxy/metrics/upstream_slots.h"
#include "dotproxy/dnstap/writer.h"
#include "dotproxy/policy/tables.h"
#include "dotproxy/shard/shard.h"
#include "dotproxy/tls/client.h"
#include "dotproxy/tls/server.h"
#include "dotproxy_build_config.h"


// Every C++ allocation is counted when it happens on a shard thread; the
// query path is meant to make none (see control/alloc_counter.h).
void* operator new(std::size_t size) {
  dotproxy::control::CountHeapAllocation();
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return operator new(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
// The nothrow forms too (PacketCache::Create uses one). The library's own
// call operator new(size) above, but AddressSanitizer replaces them with its
// allocator, and their blocks then reached our operator delete (free):
// alloc-dealloc-mismatch at shard exit. With the whole set replaced, new and
// delete stay paired in every build, sanitized or not.
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  dotproxy::control::CountHeapAllocation();
  return std::malloc(size == 0 ? 1 : size);
}
void* operator new[](std::size_t size, const std::nothrow_t& tag) noexcept {
  return operator new(size, tag);
}
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

using dotproxy::control::Log;
using dotproxy::control::Severity;
using dotproxy::daemon::Notify;
using dotproxy::daemon::ShardList;

// CPUs this process may run on (respects taskset/cgroups), in order.
std::vector<int> UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
    }
  }
  return cpus;
}

void PrintStats(const dotproxy::config::Config& config, const ShardList& shards,
                const dotproxy::metrics::ControlStats& control) {
  std::vector<dotproxy::metrics::ShardCounters> counters;
  for (const auto& shard : shards) counters.push_back({&shard->stats(), shard->upstream_stats()});
  Log(Severity::kInfo, "%s config_reloads=%d config_reload_failures=%d",
      dotproxy::metrics::FormatTotals(counters), control.reloads.load(),
      control.reload_failures.load());
  std::vector<size_t> printed;  // an upstream in several zones counts in one slot
  for (const auto* upstream : dotproxy::config::AllUpstreams(config)) {
    if (std::find(printed.begin(), printed.end(), upstream->metrics_slot) != printed.end()) continue;
    printed.push_back(upstream->metrics_slot);
    Log(Severity::kInfo, "%s",
        dotproxy::metrics::FormatUpstream(upstream->spec, upstream->metrics_slot, counters));
  }
}

// Resolves --io-backend auto to what this host allows: io_uring unless ring
// setup is refused (a container's default seccomp profile, the
// kernel.io_uring_disabled sysctl, a kernel without io_uring), then epoll.
// An explicit "uring" that cannot run is an error that says what to do.
absl::Status ChooseIoBackend(dotproxy::config::Config& config, std::string& line) {
  if (config.io_backend == "epoll") {
    line = "io backend: epoll (as configured)";
    return absl::OkStatus();
  }
  const int probe = dotproxy::io::ProbeIoUring();
  if (probe == 0) {
    line = config.io_backend == "uring" ? "io backend: uring (as configured)"
                                        : "io backend: uring (auto: io_uring available)";
    config.io_backend = "uring";
    return absl::OkStatus();
  }
  const std::string reason = absl::StrCat("io_uring_queue_init: ", std::strerror(-probe));
  const bool refused = probe == -EPERM || probe == -ENOSYS || probe == -EACCES;
  if (config.io_backend == "uring" || !refused) {
    return absl::UnavailableError(absl::StrCat(
        "io_uring cannot run here (", reason, "); use --io-backend epoll, or allow "
        "io_uring_setup, io_uring_enter and io_uring_register in the seccomp profile"));
  }
  line = absl::StrCat("io backend: epoll (auto: io_uring refused: ", reason, ")");
  config.io_backend = "epoll";
  return absl::OkStatus();
}

std::string Mib(size_t bytes) { return absl::StrFormat("%.1f MiB", bytes / 1048576.0); }

// The shards commit their cache and pools at start: more than the machine's
// memory (or the address-space limit) would end in an allocation failure
// or the OOM killer, so it is refused with the figures.
absl::Status CheckMemory(const dotproxy::config::Config& config,
                         const dotproxy::shard::ShardMemory& memory) {
  const double shards = config.threads;
  const double at_start = static_cast<double>(memory.committed_at_start()) * shards;
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  const double physical = pages > 0 && page_size > 0 ? static_cast<double>(pages) * page_size : 0;
  if (memory.cache_bytes == SIZE_MAX ||
      (physical > 0 && at_start > physical * 0.9)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "--cache-size %d and --threads %d need %s at start (cache %s per shard), more than this "
        "machine's %s of memory; lower --cache-size, --threads or --max-inflight",
        config.cache_size, config.threads,
        memory.cache_bytes == SIZE_MAX ? std::string("more than can be indexed")
                                       : Mib(static_cast<size_t>(at_start)),
        memory.cache_bytes == SIZE_MAX ? std::string("too much") : Mib(memory.cache_bytes),
        Mib(static_cast<size_t>(physical))));
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    const double worst = at_start + static_cast<double>(memory.tcp_worst_bytes) * shards;
    if (worst > static_cast<double>(limit.rlim_cur)) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "--cache-size %d, --threads %d and --max-tcp-clients %d need up to %s, more than the "
          "address-space limit (ulimit -v) of %s",
          config.cache_size, config.threads, config.max_tcp_clients,
          Mib(static_cast<size_t>(worst)), Mib(static_cast<size_t>(limit.rlim_cur))));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  auto command_line = dotproxy::config::ParseCommandLine(argc, argv);
  if (!command_line.ok()) {
    std::fprintf(stderr, "dotproxy: %s\n", std::string(command_line.status().message()).c_str());
    return 2;
  }
  if (command_line->show_help) {
    std::fputs(dotproxy::config::UsageText().c_str(), stdout);
    return 0;
  }
  if (command_line->show_version) {
    std::printf("dotproxy %s\n", DOTPROXY_VERSION);
    return 0;
  }
  auto config = std::make_shared<dotproxy::config::Config>(std::move(command_line->config));
  dotproxy::control::ConfigureLogging(config->log_level, config->log_format);
  const std::vector<int> cpus = UsableCpus();
  const int default_threads = cpus.empty() ? 1 : static_cast<int>(cpus.size());
  if (config->threads == 0) config->threads = default_threads;
  const std::string requested_backend = config->io_backend;
  // Each upstream counts in the slot of its spec, kept across reloads.
  dotproxy::metrics::UpstreamSlots upstream_slots;
  {
    // Zones' upstreams too; the same spec in two zones shares a slot.
    const std::vector<dotproxy::config::UpstreamConfig*> all = dotproxy::config::AllUpstreams(*config);
    std::vector<std::string> specs;
    for (const auto* upstream : all) specs.push_back(upstream->spec);
    auto slots = upstream_slots.Assign(specs);
    if (!slots.ok()) {
      std::fprintf(stderr, "dotproxy: %s\n", std::string(slots.status().message()).c_str());
      return 2;
    }
    for (size_t u = 0; u < all.size(); ++u) all[u]->metrics_slot = (*slots)[u];
  }

  dotproxy::control::InstallTlsAllocationCounting();
  dotproxy::tls::GlobalInit();
  {
    // Catch trust-store problems before any thread starts.
    auto context = dotproxy::tls::ClientContext::Create(config->ca_file);
    if (!context.ok()) {
      std::fprintf(stderr, "dotproxy: %s\n", std::string(context.status().message()).c_str());
      return 2;
    }
  }
  if (!config->listen_tls.empty() || !config->listen_https.empty()) {
    // The TLS listeners' certificate: read and checked once, shared by every shard.
    auto server = dotproxy::tls::ServerContext::Create(
        {config->tls_cert, config->tls_key, config->tls_client_ca});
    if (!server.ok()) {
      std::fprintf(stderr, "dotproxy: %s\n", std::string(server.status().message()).c_str());
      return 2;
    }
    config->tls_server = *std::move(server);
  }
  // The I/O engine, chosen once so that every shard runs the same one.
  std::string backend_line;
  if (auto status = ChooseIoBackend(*config, backend_line); !status.ok()) {
    std::fprintf(stderr, "dotproxy: %s\n", std::string(status.message()).c_str());
    return 2;
  }

  // Refuse what this machine cannot hold, before binding anything.
  const dotproxy::shard::ShardMemory memory = dotproxy::shard::EstimateShardMemory(*config);
  if (auto status = CheckMemory(*config, memory); !status.ok()) {
    std::fprintf(stderr, "dotproxy: %s\n", std::string(status.message()).c_str());
    return 2;
  }
  const std::string memory_line = absl::StrFormat(
      "memory: %s committed at start (cache %s for %d entries, pools %s; %d shards); "
      "TCP client buffers up to %s more",
      Mib(memory.committed_at_start() * config->threads),
      Mib(memory.cache_bytes * config->threads),
      dotproxy::shard::CacheEntriesPerShard(*config) * config->threads,
      Mib(memory.fixed_bytes * config->threads), config->threads,
      Mib(memory.tcp_worst_bytes * config->threads));
  // --- socket activation (systemd/dotproxy.socket): passed sockets replace
  // --listen; see control/socket_activation.h. ---
  if (auto inherited = dotproxy::control::TakeInheritedListeners(); inherited.ok()) {
    config->inherited_listeners = *std::move(inherited);
    // For the logs and --check-config; the front ends use the sockets.
    if (!config->inherited_listeners.empty()) {
      config->listen = dotproxy::control::InheritedAddresses(config->inherited_listeners);
    }
  } else {
    std::fprintf(stderr, "dotproxy: %s\n", std::string(inherited.status().message()).c_str());
    return 2;
  }
  // --- end socket activation ---
  if (config->check_config) {
    std::string upstreams;
    for (const auto& upstream : config->upstreams) {
      absl::StrAppend(&upstreams, upstreams.empty() ? "" : ", ",
                      upstream.transport == dotproxy::config::Transport::kTls
                          ? absl::StrCat(upstream.address.ToString(), "#", upstream.peer.auth_name)
                          : upstream.spec);
    }
    std::string listen;
    for (const auto& address : config->listen) {
      absl::StrAppend(&listen, listen.empty() ? "" : ", ", address.ToString());
    }
    std::string allow;
    for (const auto& cidr : config->allow) absl::StrAppend(&allow, allow.empty() ? "" : ", ", cidr.text);
    std::printf("configuration OK: listen %s; upstreams %s; %zu forward zones; %d shards; "
                "allow %s\n%s\n%s\n",
                listen.c_str(), upstreams.c_str(), config->zones.size(), config->threads,
                allow.c_str(),
                backend_line.c_str(), memory_line.c_str());
    return 0;
  }

  // Signals are taken by sigwait on this thread only.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::shared_ptr<const dotproxy::config::Config> shared_config = config;
  // Declared before the shards: their taps live in it, so it goes last.
  std::unique_ptr<dotproxy::dnstap::Writer> dnstap_writer;
  std::vector<std::unique_ptr<dotproxy::shard::Shard>> shards;
  std::vector<std::thread> threads;
  std::mutex mutex;
  std::condition_variable setup_done;
  int reported = 0;
  absl::Status first_error;

  for (int i = 0; i < config->threads; ++i) {
    shards.push_back(std::make_unique<dotproxy::shard::Shard>(i, shared_config));
  }
  if (!config->dnstap.empty()) {
    dotproxy::dnstap::WriterOptions options;
    options.destination = config->dnstap;
    options.identity = config->dnstap_identity;
    if (options.identity.empty()) {
      char host[256] = {};
      if (gethostname(host, sizeof host - 1) == 0) options.identity = host;
    }
    options.version = "dotproxy " DOTPROXY_VERSION;
    auto writer = dotproxy::dnstap::Writer::Create(options, shards.size());
    if (!writer.ok()) {
      std::fprintf(stderr, "dotproxy: %s\n", std::string(writer.status().message()).c_str());
      return 1;
    }
    dnstap_writer = *std::move(writer);
    for (size_t i = 0; i < shards.size(); ++i) shards[i]->AttachDnstap(&dnstap_writer->tap(i));
    Log(Severity::kInfo, "dnstap to %s (%s; %d KiB ring per shard, full rings drop)",
        config->dnstap, config->dnstap_messages,
        static_cast<int>(dotproxy::dnstap::kRingBytesPerShard / 1024));
  }
  Log(Severity::kInfo, "%s", backend_line);
  Log(Severity::kInfo, "%s", memory_line);
  // The metrics endpoint runs on its own threads beside this one and reads
  // the shards' counters at scrape time; it answers /ready with 503 until
  // every shard has bound its sockets. Bound before the shards start, so a
  // taken port fails the start at once.
  dotproxy::metrics::ControlStats control_stats;
  std::unique_ptr<dotproxy::metrics::MetricsServer> metrics_server;
  std::shared_ptr<dotproxy::metrics::ShardCollector> collector;
  if (config->metrics_listen.has_value()) {
    std::vector<dotproxy::metrics::ShardCounters> counters;
    for (const auto& shard : shards) counters.push_back({&shard->stats(), shard->upstream_stats()});
    collector = std::make_shared<dotproxy::metrics::ShardCollector>(
        std::move(counters), upstream_slots.specs(), DOTPROXY_VERSION);
    collector->set_control(&control_stats);
    collector->set_blocklist_names([] { return dotproxy::policy::ListSlotNames(); });
    auto server =
        dotproxy::metrics::MetricsServer::Start(config->metrics_listen->ToString(), collector);
    if (!server.ok()) {
      std::fprintf(stderr, "dotproxy: %s\n", std::string(server.status().message()).c_str());
      return 1;
    }
    metrics_server = *std::move(server);
    Log(Severity::kInfo, "metrics on http://%s/metrics (/health, /ready)",
        config->metrics_listen->ToString());
  }
  // Started last before the shards: every early return above destroys a
  // writer whose thread never ran (Stop() may leave a stuck thread behind,
  // and only the exit path below knows to let it be).
  if (dnstap_writer) dnstap_writer->Start();
  int started = 0;
  for (int i = 0; i < config->threads; ++i) {
    const int cpu = cpus.empty() ? -1 : cpus[i % cpus.size()];
    try {
    threads.emplace_back([&, i, cpu] {
      if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
      }
      shards[i]->Run([&](absl::Status status) {
        std::lock_guard lock(mutex);
        if (!status.ok() && first_error.ok()) first_error = status;
        ++reported;
        setup_done.notify_all();
      });
    });
    } catch (const std::system_error& error) {
      // The machine refused a thread (RLIMIT_NPROC, memory): stop cleanly.
      std::lock_guard lock(mutex);
      first_error = absl::ResourceExhaustedError(
          absl::StrCat("cannot start shard thread ", i + 1, " of ", config->threads, ": ",
                       error.what()));
      break;
    }
    ++started;
  }
  {
    std::unique_lock lock(mutex);
    setup_done.wait(lock, [&] { return reported == started; });
  }
  int exit_code = 0;
  std::shared_ptr<const dotproxy::config::Config> running = config;
  if (!first_error.ok()) {
    std::fprintf(stderr, "dotproxy: %s\n", std::string(first_error.message()).c_str());
    exit_code = 1;
  } else {
    std::string listen;
    for (const auto& address : config->listen) {
      absl::StrAppend(&listen, listen.empty() ? "" : " ", address.ToString());
    }
    Log(Severity::kInfo, "serving on %s with %d shards, %d upstreams", listen, config->threads,
        static_cast<int>(config->upstreams.size()));
    if (!config->listen_tls.empty()) {
      std::string tls_listen;
      for (const auto& address : config->listen_tls) {
        absl::StrAppend(&tls_listen, tls_listen.empty() ? "" : " ", address.ToString());
      }
      Log(Severity::kInfo, "DNS-over-TLS on %s (certificate %s%s)", tls_listen, config->tls_cert,
          config->tls_client_ca.empty() ? ""
                                        : absl::StrCat("; client certificates from ",
                                                       config->tls_client_ca, " required"));
    }
    if (!config->listen_https.empty()) {
      std::string https_listen;
      for (const auto& address : config->listen_https) {
        absl::StrAppend(&https_listen, https_listen.empty() ? "" : " ", address.ToString());
      }
      Log(Severity::kInfo, "DNS-over-HTTPS (HTTP/2, /dns-query) on %s (certificate %s%s)", https_listen,
          config->tls_cert, config->tls_client_ca.empty() ? "" : "; client certificates required");
    }
    Log(Severity::kInfo, "configuration: %s", dotproxy::daemon::ConfigSummary(*config));
    for (const auto& upstream : config->upstreams) {
      if (dotproxy::config::IsEncrypted(upstream.transport)) continue;
      Log(Severity::kWarning,
          "upstream %s: plain DNS for the default zone (allow_plaintext): queries and answers "
          "travel unencrypted and unauthenticated",
          upstream.spec);
    }
    Notify(absl::StrFormat("READY=1\nSTATUS=serving on %s with %d shards, %d upstreams", listen,
                           config->threads, static_cast<int>(config->upstreams.size())));
    dotproxy::daemon::ReloadContext reload;
    reload.argc = argc;
    reload.argv = argv;
    reload.requested_backend = requested_backend;
    reload.default_threads = default_threads;
    reload.running = config;
    reload.shards = &shards;
    reload.slots = &upstream_slots;
    if (collector) {
      reload.upstreams_changed = [&collector](const std::vector<std::string>& specs,
                                              std::vector<size_t> configured) {
        collector->SetUpstreams(specs, std::move(configured));
      };
    }
    reload.control = &control_stats;
    // Under WatchdogSec= the keep-alive is sent at half the interval, and
    // only while every shard's loop turns: a stuck shard gets the service
    // restarted. Signals are waited for in between.
    const std::chrono::microseconds watchdog = dotproxy::daemon::WatchdogInterval();
    const auto wait = watchdog.count() > 0
                          ? std::min<std::chrono::microseconds>(watchdog / 2, std::chrono::seconds(1))
                          : std::chrono::microseconds(std::chrono::seconds(1));
    if (watchdog.count() > 0) {
      Log(Severity::kInfo, "watchdog: every %d ms while all shards turn",
          static_cast<int>(watchdog.count() / 2000));
    }
    int last_stuck = -1;
    while (true) {
      if (watchdog.count() > 0) {
        const int stuck = dotproxy::daemon::StuckShard(shards, std::chrono::seconds(1));
        if (stuck < 0) Notify("WATCHDOG=1");
        if (stuck >= 0 && stuck != last_stuck) {
          Log(Severity::kError, "shard %d: loop has not turned for over 1 s; watchdog withheld",
              stuck);
        }
        last_stuck = stuck;
      }
      timespec timeout{};
      timeout.tv_sec = static_cast<time_t>(wait.count() / 1000000);
      timeout.tv_nsec = static_cast<long>(wait.count() % 1000000) * 1000;
      const int signal_number = sigtimedwait(&signals, nullptr, &timeout);
      if (signal_number < 0) continue;  // timeout or EINTR
      if (signal_number == SIGUSR1) {
        PrintStats(*reload.running, shards, control_stats);
        continue;
      }
      if (signal_number == SIGHUP) {
        dotproxy::daemon::Reload(reload);
        continue;
      }
      Log(Severity::kInfo, "signal %d: stopping", signal_number);
      break;
    }
    Notify("STOPPING=1\nSTATUS=stopping");
    running = reload.running;
  }
  for (auto& shard : shards) shard->Stop();
  for (auto& thread : threads) thread.join();
  // The shards are done: write what their rings hold, then close.
  if (dnstap_writer && !dnstap_writer->Stop()) {
    Log(Severity::kWarning,
        "dnstap: the writer did not finish within 2 s (a reader that accepts but never "
        "answers the handshake?); exiting without it");
    // Its thread still holds the rings and the stream: leave them be.
    static_cast<void>(dnstap_writer.release());
  }
  metrics_server.reset();
  for (const auto& shard : shards) {
    if (shard->failed()) {
      std::fprintf(stderr, "dotproxy: shard %d stopped on an I/O engine error\n", shard->index());
      exit_code = 1;
    }
  }
  PrintStats(*running, shards, control_stats);
  Log(Severity::kInfo, "exit %d", exit_code);
  return exit_code;
}
