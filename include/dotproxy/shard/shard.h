#pragma once
// A shard: one thread, one io_uring, its own client sockets (SO_REUSEPORT),
// its own upstream TLS connections, query slots and counters. Shards share
// nothing but the immutable Config, so the query path takes no locks.
//
// Lifetime: construct on the control thread, then call Run() on the shard's
// own thread (the ring is created there: SINGLE_ISSUER). Run() reports setup
// success through `ready` and returns after Stop() once in-flight queries are
// answered or failed.

#include <atomic>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "dotproxy/config/config.h"
#include "dotproxy/shard/stats.h"

namespace dotproxy::shard {

class ShardLoop;

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

  const ShardStats& stats() const { return stats_; }
  // One per configured upstream, in configuration order.
  const UpstreamStats& upstream_stats(size_t upstream) const { return upstream_stats_[upstream]; }
  int index() const { return index_; }

 private:
  int index_;
  std::shared_ptr<const config::Config> config_;
  std::atomic<bool> stop_requested_{false};
  ShardStats stats_;
  std::unique_ptr<UpstreamStats[]> upstream_stats_;
};

}  // namespace dotproxy::shard
