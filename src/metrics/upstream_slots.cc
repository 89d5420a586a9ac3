#include "dotproxy/metrics/upstream_slots.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace dotproxy::metrics {

absl::StatusOr<std::vector<size_t>> UpstreamSlots::Assign(const std::vector<std::string>& specs) {
  std::vector<size_t> slots;
  std::vector<std::string> added;
  for (const std::string& spec : specs) {
    auto known = std::find(specs_.begin(), specs_.end(), spec);
    if (known != specs_.end()) {
      slots.push_back(static_cast<size_t>(known - specs_.begin()));
      continue;
    }
    auto fresh = std::find(added.begin(), added.end(), spec);
    if (fresh == added.end()) {
      added.push_back(spec);
      fresh = added.end() - 1;
    }
    slots.push_back(specs_.size() + static_cast<size_t>(fresh - added.begin()));
  }
  if (specs_.size() + added.size() > kMaxSlots) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "more than ", kMaxSlots, " different upstreams since start (their counters are kept); "
        "restart to configure ", added.size(), " new ones"));
  }
  specs_.insert(specs_.end(), added.begin(), added.end());
  return slots;
}

}  // namespace dotproxy::metrics
