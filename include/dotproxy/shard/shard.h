#pragma once
// A shard: one thread, one reactor, its own client sockets (SO_REUSEPORT),
// its own upstream TLS connections, query slots, cache and counters. Shards
// share nothing but the immutable Config, so the query path takes no locks.
//
// Lifetime: construct on the control thread, then call Run() on the shard's
// own thread (the ring is created there: SINGLE_ISSUER). Run() reports setup
// success through `ready` and returns after Stop() once in-flight queries are
// answered or failed.

#include <atomic>
#include <cstddef>
#include <functional>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "dotproxy/config/config.h"
#include "dotproxy/dnstap/tap.h"
#include "dotproxy/metrics/stats.h"
#include "dotproxy/upstream/zone_routing.h"

namespace dotproxy::shard {

using metrics::ShardStats;
using metrics::UpstreamStats;

// What one shard needs, in bytes, for a configuration: the cache and the
// fixed pools (query slots, datagram buffers, upstream connections) are
// committed at start; the TCP client buffers are reserved and committed
// only as clients use them (this is their worst case).
struct ShardMemory {
  size_t cache_bytes = 0;
  size_t fixed_bytes = 0;
  size_t tcp_worst_bytes = 0;
  size_t committed_at_start() const { return cache_bytes + fixed_bytes; }
};
ShardMemory EstimateShardMemory(const config::Config& config);
// This shard's share of --cache-size (0: caching off).
size_t CacheEntriesPerShard(const config::Config& config);

// A configuration on its way from the control thread to a shard: one slot,
// the latest wins. Post() and Take() are lock-free (an atomic exchange), so
// the shard's loop only ever loads one pointer per iteration.
class ConfigMailbox {
 public:
  struct Letter {
    std::shared_ptr<const config::Config> config;
    std::shared_ptr<const upstream::ZoneRouting> routing;  // built from `config`
    uint64_t generation = 0;
  };
  ~ConfigMailbox() { delete slot_.exchange(nullptr); }

  // Control thread. A letter the shard had not taken yet is replaced.
  void Post(std::shared_ptr<const config::Config> config,
            std::shared_ptr<const upstream::ZoneRouting> routing, uint64_t generation) {
    delete slot_.exchange(new Letter{std::move(config), std::move(routing), generation},
                          std::memory_order_acq_rel);
  }
  bool has_mail() const { return slot_.load(std::memory_order_relaxed) != nullptr; }
  // Shard thread: the letter, or null.
  std::unique_ptr<Letter> Take() {
    return std::unique_ptr<Letter>(slot_.exchange(nullptr, std::memory_order_acq_rel));
  }

 private:
  std::atomic<Letter*> slot_{nullptr};
};

class Shard {
 public:
  Shard(int index, std::shared_ptr<const config::Config> config);
  ~Shard();

  // Runs the loop on the calling thread until Stop(). `ready` is called once,
  // with OkStatus after setup or with the setup error (then Run returns).
  void Run(const std::function<void(absl::Status)>& ready);

  // Asks the loop to stop: stop intake, drain in-flight queries (≤ 1.5 s),
  // SERVFAIL the rest. Callable from any thread.
  void Stop() { stop_requested_.store(true, std::memory_order_relaxed); }

  // A reload (control thread): the shard applies `config` between two loop
  // iterations, at most 100 ms later, or once the pool a previous reload
  // replaced has drained. Parts that size the shard's tables at start
  // (threads, max_inflight, max_tcp_clients, cache_size, udp_buffer,
  // io_backend, metrics_listen) must be equal to the running ones: main
  // keeps them. applied_generation() tells when it is in force.
  // The zone table is built here, on the control thread, once for all
  // shards posted the same config.
  void PostConfig(std::shared_ptr<const config::Config> config, uint64_t generation);
  uint64_t applied_generation() const { return applied_generation_.load(std::memory_order_acquire); }
  // What the shard could not apply of the last configuration (empty: all
  // of it), e.g. a new listen address that cannot be bound (the old
  // addresses then stay). Read after applied_generation() reached it.
  std::string reload_error() const {
    std::lock_guard lock(reload_error_mutex_);
    return reload_error_;
  }

  // dnstap: this shard logs into `tap` (owned by the dnstap writer, which
  // outlives the shard's loop) and counts it in its stats. Before Run().
  void AttachDnstap(dnstap::Tap* tap) {
    tap_ = tap;
    tap->set_counters({.dropped = &stats_.dnstap_dropped,
                       .written = &stats_.dnstap_written,
                       .lost = &stats_.dnstap_lost});
  }

  // True when the loop ended on an I/O engine error rather than Stop().
  bool failed() const { return failed_.load(std::memory_order_relaxed); }

  const ShardStats& stats() const { return stats_; }
  // metrics::kMaxUpstreamSlots of them, indexed by UpstreamConfig::metrics_slot.
  const UpstreamStats& upstream_stats(size_t slot) const { return upstream_stats_[slot]; }
  const UpstreamStats* upstream_stats() const { return upstream_stats_.get(); }
  int index() const { return index_; }

 private:
  int index_;
  std::shared_ptr<const config::Config> config_;
  std::shared_ptr<const upstream::ZoneRouting> routing_;  // of config_
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> failed_{false};
  ConfigMailbox mailbox_;
  std::atomic<uint64_t> applied_generation_{0};
  // Written by the shard when it applies a configuration, read by the
  // control thread: never on the query path.
  mutable std::mutex reload_error_mutex_;
  std::string reload_error_;
  ShardStats stats_;
  std::unique_ptr<UpstreamStats[]> upstream_stats_;
  dnstap::Tap* tap_ = nullptr;
};

}  // namespace dotproxy::shard
