#include "dotproxy/upstream/pool_set.h"

#include "dotproxy/dns/message.h"

namespace dotproxy::upstream {

PoolGeneration PoolSet::MakeGeneration(std::shared_ptr<const ZoneRouting> routing,
                                       std::unique_ptr<tls::ClientContext> tls_context,
                                       const PoolSettings& settings,
                                       const PoolDependencies& deps) const {
  PoolGeneration generation;
  generation.config = routing->config;
  generation.tls_context = std::move(tls_context);
  PoolNumbering numbering{.tag = next_tag()};
  for (size_t g = 0; g < routing->groups.size(); ++g) {
    const UpstreamGroup& group = routing->groups[g];
    PoolSettings group_settings = settings;
    group_settings.cache_answers = group.cache_answers;
    auto pool = std::make_unique<UpstreamPool>(group.upstreams, group_settings, deps.reactor,
                                               deps.clock, *generation.tls_context, deps.stats,
                                               deps.upstream_stats, deps.shard_index, numbering);
    pool->set_sink(deps.sink);
    generation.group_of_connection.resize(
        generation.group_of_connection.size() + pool->connection_count(), static_cast<uint32_t>(g));
    generation.group_of_upstream.resize(
        generation.group_of_upstream.size() + pool->upstream_count(), static_cast<uint32_t>(g));
    numbering.first_connection += static_cast<uint32_t>(pool->connection_count());
    numbering.first_upstream += static_cast<int>(pool->upstream_count());
    generation.pools.push_back(std::move(pool));
  }
  generation.routing = std::move(routing);
  return generation;
}

void PoolSet::Install(PoolGeneration next, io::Clock::time_point retire_deadline) {
  const uint32_t tag = next_tag();
  if (current_) {
    for (auto& pool : current_->pools) pool->Retire(retire_deadline);
    retiring_ = std::move(current_);
    retiring_tag_ = current_tag_;
  }
  current_ = std::make_unique<PoolGeneration>(std::move(next));
  current_tag_ = tag;
  for (auto& pool : current_->pools) pool->Start();
}

uint32_t PoolSet::GroupOf(std::span<const uint8_t> query) const {
  if (query.size() <= dns::kHeaderSize) return ZoneTable::kRootGroup;
  return current_->routing->table.Find(query.subspan(dns::kHeaderSize));
}

PoolGeneration* PoolSet::ByTag(uint32_t tag) {
  if (current_ && current_tag_ == tag) return current_.get();
  if (retiring_ && retiring_tag_ == tag) return retiring_.get();
  return nullptr;
}

UpstreamPool* PoolSet::ByConnection(uint32_t index) {
  if (index == kNoConnection) return nullptr;
  PoolGeneration* generation = ByTag(UpstreamPool::TagOfConnection(index));
  if (generation == nullptr) return nullptr;
  const uint32_t local = index & ((1u << UpstreamPool::kConnectionTagShift) - 1);
  if (local >= generation->group_of_connection.size()) return nullptr;
  return generation->pools[generation->group_of_connection[local]].get();
}

UpstreamPool* PoolSet::ByUpstream(int upstream) {
  if (upstream < 0) return nullptr;
  PoolGeneration* generation = ByTag(UpstreamPool::TagOfUpstream(upstream));
  if (generation == nullptr) return nullptr;
  const auto local =
      static_cast<uint32_t>(upstream) & ((1u << UpstreamPool::kUpstreamTagShift) - 1);
  if (local >= generation->group_of_upstream.size()) return nullptr;
  return generation->pools[generation->group_of_upstream[local]].get();
}

void PoolSet::OnCompletion(uint32_t index, const io::Completion& completion) {
  if (UpstreamPool* pool = ByConnection(index)) pool->OnCompletion(index, completion);
}

void PoolSet::Flush() {
  if (retiring_) {
    for (auto& pool : retiring_->pools) pool->Flush();
  }
  for (auto& pool : current_->pools) pool->Flush();
}

void PoolSet::RunTimers(bool draining) {
  if (retiring_) {
    bool quiescent = true;
    for (auto& pool : retiring_->pools) {
      pool->RunTimers(draining);
      quiescent = quiescent && pool->Quiescent();
    }
    // Closed and recycled: no operation points into it any more.
    if (quiescent) retiring_.reset();
  }
  for (auto& pool : current_->pools) pool->RunTimers(draining);
}

void PoolSet::Shutdown() {
  if (retiring_) {
    for (auto& pool : retiring_->pools) pool->Shutdown();
  }
  for (auto& pool : current_->pools) pool->Shutdown();
}

bool PoolSet::Send(uint32_t token, std::span<uint8_t> query, int exclude, bool allow_excluded,
                   Binding& binding) {
  // An `exclude` of another group or generation excludes nothing there.
  return CurrentFor(query).Send(token, query, exclude, allow_excluded, binding);
}

void PoolSet::Release(uint32_t token, const Binding& binding) {
  if (!binding.bound()) return;
  if (UpstreamPool* pool = ByConnection(binding.connection)) pool->Release(token, binding);
}

void PoolSet::NoteTimeout(const Binding& binding, bool counts_against_upstream) {
  if (UpstreamPool* pool = ByUpstream(binding.upstream)) {
    pool->NoteTimeout(binding, counts_against_upstream);
  }
}

bool PoolSet::CanSendElsewhere(std::span<const uint8_t> query, int exclude) {
  return CurrentFor(query).CanSendElsewhere(exclude);
}

bool PoolSet::AnyAlive(std::span<const uint8_t> query) const {
  return CurrentFor(query).AnyAlive();
}

bool PoolSet::DescribeUpstream(const Binding& binding, const sockaddr** address,
                               const sockaddr** local, bool* tls, bool* udp) const {
  const UpstreamPool* pool = const_cast<PoolSet*>(this)->ByUpstream(binding.upstream);
  if (pool == nullptr || !pool->Describe(binding.upstream, address, tls, udp)) return false;
  *local = pool->LocalAddress(binding.connection);
  return true;
}

}  // namespace dotproxy::upstream
