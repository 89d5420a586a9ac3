#pragma once
// Upstream metric slots: see UpstreamSlots.

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "dotproxy/metrics/stats.h"

namespace dotproxy::metrics {

// Which of a shard's UpstreamStats each upstream counts in, for the life
// of the process: an upstream keeps its slot (and its counters) across
// reloads by its spec, a new one takes the next free slot. Control thread.
class UpstreamSlots {
 public:
  // Shards hold this many UpstreamStats.
  static constexpr size_t kMaxSlots = kMaxUpstreamSlots;

  // The slot of each spec, in order; an error (and no change) when the new
  // specs would not fit.
  absl::StatusOr<std::vector<size_t>> Assign(const std::vector<std::string>& specs);
  // Slot -> spec, for every slot ever assigned.
  const std::vector<std::string>& specs() const { return specs_; }

 private:
  std::vector<std::string> specs_;
};

}  // namespace dotproxy::metrics
