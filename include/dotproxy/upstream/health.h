#pragma once
// Health and selection of a shard's upstreams.
//
// Tracks, per upstream: consecutive failures, a latency EWMA, queries in
// flight, and a healthy/unhealthy state with background probing. Selection
// picks the best usable upstream: healthy before unhealthy, then the best
// (lowest) priority, then the lowest expected latency. Time is passed in, so
// tests drive it with a fake clock. One owner thread (the shard).
//
//   HealthTracker health(priorities, HealthPolicy{});
//   int u = health.Select([&](int i) { return HasCapacity(i); }, /*exclude=*/-1, rng.Next());
//   health.RecordAnswer(u, latency, now);

#include <chrono>
#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"

namespace dotproxy::upstream {

struct HealthPolicy {
  // Consecutive failures (connect/handshake failures, query timeouts) that
  // make an upstream unhealthy.
  int failure_threshold = 3;
  // Weight of a new latency sample in the EWMA.
  double latency_alpha = 0.2;
  // One query in this many goes to a random other healthy upstream of the
  // same priority, so every upstream's latency estimate stays fresh.
  uint32_t explore_one_in = 64;
  // Queries in flight that double an upstream's expected latency, so a
  // loaded upstream yields to an idle one of similar speed.
  double load_scale = 64.0;
  // Probe interval of an unhealthy upstream: doubles from min to max.
  std::chrono::milliseconds probe_min{500};
  std::chrono::milliseconds probe_max{10000};
};

enum class HealthState : uint8_t { kHealthy, kUnhealthy };

const char* ToString(HealthState state);

struct UpstreamHealth {
  HealthState state = HealthState::kHealthy;
  int priority = 0;
  int consecutive_failures = 0;
  double latency_ewma_ms = 0;  // 0 until the first answer
  bool has_latency = false;
  uint32_t in_flight = 0;
  std::chrono::steady_clock::time_point next_probe{};
  int probes_failed = 0;
};

class HealthTracker {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;

  HealthTracker(const std::vector<int>& priorities, HealthPolicy policy);

  // An answer arrived `latency` after the query was sent. Returns true when
  // this made an unhealthy upstream healthy again.
  bool RecordAnswer(int upstream, std::chrono::microseconds latency, TimePoint now);
  // A connection or handshake failed, or a query timed out. Returns true
  // when this made the upstream unhealthy.
  bool RecordFailure(int upstream, TimePoint now);

  // Picks an upstream for a query: among those `usable` says yes to and
  // other than `exclude` (-1 for none), healthy ones first, then priority,
  // then expected latency. Returns -1 when none is usable.
  int Select(absl::FunctionRef<bool(int)> usable, int exclude, uint32_t random) const;

  // True when `upstream` is unhealthy and its next probe is due; the caller
  // sends one and calls ProbeSent.
  bool ProbeDue(int upstream, TimePoint now) const;
  // `fast`: the next probe after probe_min, not the doubled interval (no
  // upstream is healthy, so waiting helps nobody).
  void ProbeSent(int upstream, TimePoint now, bool fast = false);
  bool AnyHealthy() const;

  void AddInFlight(int upstream) { ++upstreams_[upstream].in_flight; }
  void RemoveInFlight(int upstream) { --upstreams_[upstream].in_flight; }

  const UpstreamHealth& get(int upstream) const { return upstreams_[upstream]; }
  int size() const { return static_cast<int>(upstreams_.size()); }

 private:
  // Lower is better: latency EWMA scaled by load. Unknown latency counts as
  // 0, so a new upstream gets tried.
  double Score(const UpstreamHealth& h) const;

  HealthPolicy policy_;
  std::vector<UpstreamHealth> upstreams_;
};

}  // namespace dotproxy::upstream
