// dotproxy: flags -> config -> shards. main() only starts things and waits
// for signals; all DNS work happens on the shard threads.

#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include <algorithm>
#include <condition_variable>
#include <string_view>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "dotproxy/config/config.h"
#include "dotproxy/control/alloc_counter.h"
#include "dotproxy/control/log.h"
#include "dotproxy/shard/shard.h"
#include "dotproxy/tls/client.h"
#include "dotproxy_build_config.h"

#if DOTPROXY_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

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

namespace {

using dotproxy::control::Log;
using dotproxy::control::Severity;

void Notify(const char* state) {
#if DOTPROXY_HAVE_SYSTEMD
  sd_notify(0, state);
#else
  (void)state;
#endif
}

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

void PrintStats(const std::vector<std::unique_ptr<dotproxy::shard::Shard>>& shards) {
  std::string line = "counters:";
#define DOTPROXY_SUM_COUNTER(name, help)                                      \
  {                                                                           \
    uint64_t total = 0;                                                       \
    for (const auto& shard : shards) total += shard->stats().name.load(std::memory_order_relaxed); \
    if (total > 0) absl::StrAppend(&line, " ", #name, "=", total);           \
  }
  DOTPROXY_SHARD_COUNTERS(DOTPROXY_SUM_COUNTER)
#undef DOTPROXY_SUM_COUNTER
  Log(Severity::kInfo, "%s", line);
}

// One line per upstream: counters summed over shards; gauges as min/max
// over shards where they differ per shard (health, latency).
void PrintUpstreamStats(const dotproxy::config::Config& config,
                        const std::vector<std::unique_ptr<dotproxy::shard::Shard>>& shards) {
  for (size_t u = 0; u < config.upstreams.size(); ++u) {
    std::string line = absl::StrCat("upstream ", config.upstreams[u].spec, ":");
    uint64_t healthy_shards = 0;
    uint64_t latency_max = 0;
#define DOTPROXY_SUM_UPSTREAM(name, help)                                       \
    {                                                                           \
      uint64_t total = 0;                                                       \
      for (const auto& shard : shards) total += shard->upstream_stats(u).name.load(std::memory_order_relaxed); \
      if (std::string_view(#name) == "healthy") healthy_shards = total;         \
      else if (std::string_view(#name) == "latency_us") {                       \
        for (const auto& shard : shards)                                        \
          latency_max = std::max<uint64_t>(latency_max, shard->upstream_stats(u).latency_us.load(std::memory_order_relaxed)); \
      } else absl::StrAppend(&line, " ", #name, "=", total);                    \
    }
    DOTPROXY_UPSTREAM_COUNTERS(DOTPROXY_SUM_UPSTREAM)
#undef DOTPROXY_SUM_UPSTREAM
    absl::StrAppend(&line, " healthy_shards=", healthy_shards, "/", shards.size(),
                    " latency_ms=", absl::StrFormat("%.2f", latency_max / 1000.0));
    Log(Severity::kInfo, "%s", line);
  }
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
  const std::vector<int> cpus = UsableCpus();
  if (config->threads == 0) config->threads = cpus.empty() ? 1 : static_cast<int>(cpus.size());

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
  if (config->check_config) {
    std::string upstreams;
    for (const auto& upstream : config->upstreams) {
      absl::StrAppend(&upstreams, upstreams.empty() ? "" : ", ", upstream.address.ToString(),
                      "#", upstream.auth_name);
    }
    std::string listen;
    for (const auto& address : config->listen) {
      absl::StrAppend(&listen, listen.empty() ? "" : ", ", address.ToString());
    }
    std::string allow;
    for (const auto& cidr : config->allow) absl::StrAppend(&allow, allow.empty() ? "" : ", ", cidr.text);
    std::printf("configuration OK: listen %s; upstreams %s; %d shards; allow %s\n", listen.c_str(),
                upstreams.c_str(), config->threads, allow.c_str());
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
  std::vector<std::unique_ptr<dotproxy::shard::Shard>> shards;
  std::vector<std::thread> threads;
  std::mutex mutex;
  std::condition_variable setup_done;
  int reported = 0;
  absl::Status first_error;

  for (int i = 0; i < config->threads; ++i) {
    shards.push_back(std::make_unique<dotproxy::shard::Shard>(i, shared_config));
  }
  for (int i = 0; i < config->threads; ++i) {
    const int cpu = cpus.empty() ? -1 : cpus[i % cpus.size()];
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
  }
  {
    std::unique_lock lock(mutex);
    setup_done.wait(lock, [&] { return reported == config->threads; });
  }
  int exit_code = 0;
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
    Notify("READY=1");
    while (true) {
      int signal_number = 0;
      if (sigwait(&signals, &signal_number) != 0) continue;
      if (signal_number == SIGUSR1) {
        PrintStats(shards);
        PrintUpstreamStats(*config, shards);
        continue;
      }
      if (signal_number == SIGHUP) {
        Log(Severity::kInfo, "SIGHUP ignored: restart to apply configuration changes");
        continue;
      }
      Log(Severity::kInfo, "signal %d: stopping", signal_number);
      break;
    }
    Notify("STOPPING=1");
  }
  for (auto& shard : shards) shard->Stop();
  for (auto& thread : threads) thread.join();
  if (exit_code == 0) {
    PrintStats(shards);
    PrintUpstreamStats(*config, shards);
  }
  return exit_code;
}
