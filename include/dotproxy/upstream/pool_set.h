#pragma once
// The shard's upstream pools across a reload: the current pool takes every
// new query; the one a reload replaced (at most one) keeps what it has in
// flight until it is answered or lost, then goes. Everything about a bound
// query (release, timeout, completions) goes to the pool that bound it,
// named by the tag in its Binding and connection index (see UpstreamPool).
//
//   PoolSet pools;
//   pools.Install(std::move(first));                  // at setup
//   forwarder = Forwarder(..., /*router=*/pools, ...);
//   ...
//   if (pools.CanReplace()) pools.Install(std::move(next), retire_deadline);
//
// A pool comes with what it borrows (its Config's addresses and policies,
// its TLS context), kept alive while it lives. Shard thread only.

#include <array>
#include <memory>

#include "dotproxy/config/config.h"
#include "dotproxy/io/clock.h"
#include "dotproxy/tls/client.h"
#include "dotproxy/upstream/pool.h"
#include "dotproxy/upstream/router.h"

namespace dotproxy::upstream {

// A pool and what it borrows.
struct PoolGeneration {
  std::shared_ptr<const config::Config> config;
  std::unique_ptr<tls::ClientContext> tls_context;
  std::unique_ptr<UpstreamPool> pool;  // built with tag PoolSet::next_tag()
};

class PoolSet final : public QueryRouter {
 public:
  // The tag the next Install()ed pool must be built with.
  uint32_t next_tag() const { return current_ ? 1 - current_->pool->tag() : 0; }
  // False while a replaced pool still drains: a further reload waits.
  bool CanReplace() const { return !retiring_; }

  // Makes `next` the current pool and starts it; the previous one, if any,
  // retires until `retire_deadline`. REQUIRES: CanReplace(), and `next`
  // built with next_tag().
  void Install(PoolGeneration next, io::Clock::time_point retire_deadline);

  UpstreamPool& current() { return *current_->pool; }
  const config::Config& current_config() const { return *current_->config; }
  bool has_retiring() const { return retiring_ != nullptr; }

  // Loop duties, for both pools. RunTimers also frees a retired pool once
  // it is quiescent.
  void OnCompletion(uint32_t index, const io::Completion& completion);
  void Flush();
  void RunTimers(bool draining);
  void Shutdown();

  // QueryRouter: new queries to the current pool, the rest by tag.
  bool Send(uint32_t token, std::span<uint8_t> query, int exclude, bool allow_excluded,
            Binding& binding) override;
  void Release(uint32_t token, const Binding& binding) override;
  void NoteTimeout(const Binding& binding, bool counts_against_upstream) override;
  bool CanSendElsewhere(int exclude) override;
  bool AnyAlive() const override;
  bool DescribeUpstream(const Binding& binding, const sockaddr** address,
                        bool* tls, bool* udp) const override;

 private:
  UpstreamPool* ByTag(uint32_t tag);

  std::unique_ptr<PoolGeneration> current_;
  std::unique_ptr<PoolGeneration> retiring_;
};

}  // namespace dotproxy::upstream
