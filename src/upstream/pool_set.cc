#include "dotproxy/upstream/pool_set.h"

namespace dotproxy::upstream {

void PoolSet::Install(PoolGeneration next, io::Clock::time_point retire_deadline) {
  if (current_) {
    current_->pool->Retire(retire_deadline);
    retiring_ = std::move(current_);
  }
  current_ = std::make_unique<PoolGeneration>(std::move(next));
  current_->pool->Start();
}

UpstreamPool* PoolSet::ByTag(uint32_t tag) {
  if (current_ && current_->pool->tag() == tag) return current_->pool.get();
  if (retiring_ && retiring_->pool->tag() == tag) return retiring_->pool.get();
  return nullptr;
}

void PoolSet::OnCompletion(uint32_t index, const io::Completion& completion) {
  if (UpstreamPool* pool = ByTag(UpstreamPool::TagOfConnection(index))) {
    pool->OnCompletion(index, completion);
  }
}

void PoolSet::Flush() {
  if (retiring_) retiring_->pool->Flush();
  current_->pool->Flush();
}

void PoolSet::RunTimers(bool draining) {
  if (retiring_) {
    retiring_->pool->RunTimers(draining);
    // Closed and recycled: no operation points into it any more.
    if (retiring_->pool->Quiescent()) retiring_.reset();
  }
  current_->pool->RunTimers(draining);
}

void PoolSet::Shutdown() {
  if (retiring_) retiring_->pool->Shutdown();
  current_->pool->Shutdown();
}

bool PoolSet::Send(uint32_t token, std::span<uint8_t> query, int exclude, bool allow_excluded,
                   Binding& binding) {
  return current_->pool->Send(token, query, exclude, allow_excluded, binding);
}

void PoolSet::Release(uint32_t token, const Binding& binding) {
  if (!binding.bound()) return;
  if (UpstreamPool* pool = ByTag(UpstreamPool::TagOfConnection(binding.connection))) {
    pool->Release(token, binding);
  }
}

void PoolSet::NoteTimeout(const Binding& binding, bool counts_against_upstream) {
  if (binding.upstream < 0) return;
  if (UpstreamPool* pool = ByTag(UpstreamPool::TagOfUpstream(binding.upstream))) {
    pool->NoteTimeout(binding, counts_against_upstream);
  }
}

bool PoolSet::CanSendElsewhere(int exclude) { return current_->pool->CanSendElsewhere(exclude); }

bool PoolSet::AnyAlive() const { return current_->pool->AnyAlive(); }

bool PoolSet::DescribeUpstream(const Binding& binding, const sockaddr** address,
                               bool* tls, bool* udp) const {
  if (binding.upstream < 0) return false;
  const uint32_t tag = UpstreamPool::TagOfUpstream(binding.upstream);
  const PoolGeneration* generation = current_ && current_->pool->tag() == tag ? current_.get()
                                     : retiring_ && retiring_->pool->tag() == tag ? retiring_.get()
                                                                                  : nullptr;
  if (generation == nullptr) return false;
  const size_t u = static_cast<size_t>(binding.upstream) &
                   ((size_t{1} << UpstreamPool::kUpstreamTagShift) - 1);
  if (u >= generation->config->upstreams.size()) return false;
  const config::UpstreamConfig& upstream = generation->config->upstreams[u];
  *address = upstream.address.get();
  *tls = upstream.transport == config::Transport::kTls;
  *udp = upstream.transport == config::Transport::kUdp;
  return true;
}

}  // namespace dotproxy::upstream
