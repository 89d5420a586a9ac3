#include "dotproxy/upstream/health.h"

#include "dotproxy/upstream/backoff.h"

#include <algorithm>

namespace dotproxy::upstream {

const char* ToString(HealthState state) {
  return state == HealthState::kHealthy ? "healthy" : "unhealthy";
}

HealthTracker::HealthTracker(const std::vector<int>& priorities, HealthPolicy policy)
    : policy_(policy), upstreams_(priorities.size()) {
  for (size_t i = 0; i < priorities.size(); ++i) upstreams_[i].priority = priorities[i];
}

bool HealthTracker::RecordAnswer(int upstream, std::chrono::microseconds latency, TimePoint) {
  UpstreamHealth& h = upstreams_[upstream];
  const double ms = static_cast<double>(latency.count()) / 1000.0;
  if (!h.has_latency) {
    h.latency_ewma_ms = ms;
    h.has_latency = true;
  } else {
    h.latency_ewma_ms += policy_.latency_alpha * (ms - h.latency_ewma_ms);
  }
  h.consecutive_failures = 0;
  h.probes_failed = 0;
  if (h.state == HealthState::kUnhealthy) {
    h.state = HealthState::kHealthy;
    return true;
  }
  return false;
}

bool HealthTracker::RecordFailure(int upstream, TimePoint now) {
  UpstreamHealth& h = upstreams_[upstream];
  ++h.consecutive_failures;
  if (h.state == HealthState::kHealthy && h.consecutive_failures >= policy_.failure_threshold) {
    h.state = HealthState::kUnhealthy;
    h.probes_failed = 0;
    h.next_probe = now + policy_.probe_min;
    return true;
  }
  return false;
}

double HealthTracker::Score(const UpstreamHealth& h) const {
  // Expected latency: the EWMA, stretched by the queue already waiting there
  // (one more query's worth per `load_scale` in flight).
  const double latency = h.has_latency ? h.latency_ewma_ms : 0.0;
  return latency * (1.0 + static_cast<double>(h.in_flight) / policy_.load_scale);
}

int HealthTracker::Select(absl::FunctionRef<bool(int)> usable, int exclude,
                          uint32_t random) const {
  int best = -1;
  for (int i = 0; i < size(); ++i) {
    if (i == exclude || !usable(i)) continue;
    if (best < 0) {
      best = i;
      continue;
    }
    const UpstreamHealth& a = upstreams_[i];
    const UpstreamHealth& b = upstreams_[best];
    if (a.state != b.state) {
      if (a.state == HealthState::kHealthy) best = i;
      continue;
    }
    if (a.priority != b.priority) {
      if (a.priority < b.priority) best = i;
      continue;
    }
    if (Score(a) < Score(b)) best = i;
  }
  if (best < 0 || policy_.explore_one_in == 0 || random % policy_.explore_one_in != 0) return best;

  // Exploration: another healthy upstream of the same priority, if any.
  const UpstreamHealth& chosen = upstreams_[best];
  int candidates = 0;
  for (int i = 0; i < size(); ++i) {
    const UpstreamHealth& h = upstreams_[i];
    if (i != best && i != exclude && h.state == HealthState::kHealthy &&
        h.priority == chosen.priority && usable(i)) {
      ++candidates;
    }
  }
  if (candidates == 0) return best;
  int pick = static_cast<int>((random / policy_.explore_one_in) % candidates);
  for (int i = 0; i < size(); ++i) {
    const UpstreamHealth& h = upstreams_[i];
    if (i != best && i != exclude && h.state == HealthState::kHealthy &&
        h.priority == chosen.priority && usable(i) && pick-- == 0) {
      return i;
    }
  }
  return best;
}

bool HealthTracker::ProbeDue(int upstream, TimePoint now) const {
  const UpstreamHealth& h = upstreams_[upstream];
  return h.state == HealthState::kUnhealthy && now >= h.next_probe;
}

void HealthTracker::ProbeSent(int upstream, TimePoint now, bool fast) {
  UpstreamHealth& h = upstreams_[upstream];
  ++h.probes_failed;
  const auto interval =
      fast ? policy_.probe_min : DoublingDelay(policy_.probe_min, policy_.probe_max, h.probes_failed);
  h.next_probe = now + interval;
}

bool HealthTracker::AnyHealthy() const {
  for (const UpstreamHealth& h : upstreams_) {
    if (h.state == HealthState::kHealthy) return true;
  }
  return false;
}

}  // namespace dotproxy::upstream
