#pragma once
// The shard's upstream pools: one generation per configuration, each
// holding one pool per upstream group (the default zone and the forward
// zones, see ZoneRouting) and the zone table that picks the group of a
// query by its question name. Across a reload the current generation takes
// every new query; the one a reload replaced (at most one) keeps what it
// has in flight until it is answered or lost, then goes. Everything about
// a bound query (release, timeout, completions) goes to the pool that
// bound it: its Binding's and connections' numbers carry the generation's
// tag, and within a generation each pool numbers its upstreams and
// connections after the previous pool's (PoolNumbering).
//
//   PoolSet pools;
//   pools.Install(pools.MakeGeneration(routing, std::move(tls), settings, deps), {});
//   forwarder = Forwarder(..., /*router=*/pools, ...);
//   ...
//   if (pools.CanReplace()) pools.Install(pools.MakeGeneration(...), retire_deadline);
//
// A generation comes with what it borrows (its Config's addresses and
// policies through the routing, its TLS context), kept alive while it
// lives. Shard thread only.

#include <array>
#include <memory>
#include <vector>

#include "dotproxy/config/config.h"
#include "dotproxy/io/clock.h"
#include "dotproxy/tls/client.h"
#include "dotproxy/upstream/pool.h"
#include "dotproxy/upstream/router.h"
#include "dotproxy/upstream/zone_routing.h"

namespace dotproxy::upstream {

// A configuration's pools and what they borrow.
struct PoolGeneration {
  std::shared_ptr<const config::Config> config;
  std::shared_ptr<const ZoneRouting> routing;
  std::unique_ptr<tls::ClientContext> tls_context;
  std::vector<std::unique_ptr<UpstreamPool>> pools;  // by group
  // The group of each (untagged) connection index and upstream number.
  std::vector<uint32_t> group_of_connection;
  std::vector<uint32_t> group_of_upstream;
};

// What every pool of a shard is built with.
struct PoolDependencies {
  io::Reactor& reactor;
  const io::LoopClock& clock;
  metrics::ShardStats& stats;
  metrics::UpstreamStats* upstream_stats;
  int shard_index;
  AnswerSink* sink;
};

class PoolSet final : public QueryRouter {
 public:
  // The tag the next Install()ed generation must be built with.
  uint32_t next_tag() const { return current_ ? 1 - current_tag_ : 0; }
  // False while a replaced generation still drains: a further reload waits.
  bool CanReplace() const { return !retiring_; }

  // One pool per group of `routing`, numbered for next_tag(). `settings`
  // are the default zone's; a group's policy (cache_answers) is applied on
  // top.
  PoolGeneration MakeGeneration(std::shared_ptr<const ZoneRouting> routing,
                                std::unique_ptr<tls::ClientContext> tls_context,
                                const PoolSettings& settings, const PoolDependencies& deps) const;

  // Makes `next` the current generation and starts it; the previous one, if
  // any, retires until `retire_deadline`. REQUIRES: CanReplace(), and `next`
  // from MakeGeneration since the last Install.
  void Install(PoolGeneration next, io::Clock::time_point retire_deadline);

  // The default zone's pool.
  UpstreamPool& current() { return *current_->pools[ZoneTable::kRootGroup]; }
  const config::Config& current_config() const { return *current_->config; }
  bool has_retiring() const { return retiring_ != nullptr; }
  // The current group of a query (by its question name).
  uint32_t GroupOf(std::span<const uint8_t> query) const override;

  // Loop duties, for every pool. RunTimers also frees a retired generation
  // once all its pools are quiescent.
  void OnCompletion(uint32_t index, const io::Completion& completion);
  void Flush();
  void RunTimers(bool draining);
  void Shutdown();

  // QueryRouter: new queries to the current generation's pool of their
  // group, the rest to the pool that bound them.
  bool Send(uint32_t token, std::span<uint8_t> query, int exclude, bool allow_excluded,
            Binding& binding) override;
  void Release(uint32_t token, const Binding& binding) override;
  void NoteTimeout(const Binding& binding, bool counts_against_upstream) override;
  bool CanSendElsewhere(std::span<const uint8_t> query, int exclude) override;
  bool AnyAlive(std::span<const uint8_t> query) const override;
  bool DescribeUpstream(const Binding& binding, const sockaddr** address, const sockaddr** local,
                        bool* tls, bool* udp) const override;

 private:
  PoolGeneration* ByTag(uint32_t tag);
  UpstreamPool* ByConnection(uint32_t index);
  UpstreamPool* ByUpstream(int upstream);
  UpstreamPool& CurrentFor(std::span<const uint8_t> query) const {
    return *current_->pools[GroupOf(query)];
  }

  std::unique_ptr<PoolGeneration> current_;
  std::unique_ptr<PoolGeneration> retiring_;
  uint32_t current_tag_ = 0;
  uint32_t retiring_tag_ = 0;
};

}  // namespace dotproxy::upstream
