#include "dotproxy/upstream/zone_routing.h"

#include <algorithm>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"

namespace dotproxy::upstream {
namespace {

// Everything a pool is built from for one group: equal keys, one group.
std::string GroupKey(std::span<const config::UpstreamConfig> upstreams, bool cache_answers) {
  std::string key = cache_answers ? "c" : "n";
  for (const config::UpstreamConfig& upstream : upstreams) {
    absl::StrAppend(&key, "|", static_cast<int>(upstream.transport), upstream.address.ToString(),
                    "#", upstream.peer.auth_name, "/", upstream.priority, "/",
                    upstream.peer.pin_only ? 1 : 0, "/", upstream.metrics_slot);
    for (const config::SpkiPin& pin : upstream.peer.pins) {
      key.append(reinterpret_cast<const char*>(pin.data()), pin.size());
    }
  }
  return key;
}

}  // namespace

std::shared_ptr<const ZoneRouting> MakeZoneRouting(std::shared_ptr<const config::Config> config) {
  auto routing = std::make_shared<ZoneRouting>();
  routing->groups.push_back({config->upstreams, true});
  // A zone listing exactly the default upstreams (cached) shares their group.
  std::map<std::string, uint32_t> groups{{GroupKey(config->upstreams, true), 0}};
  for (const config::ZoneConfig& zone : config->zones) {
    const auto [known, fresh] = groups.emplace(GroupKey(zone.upstreams, zone.cache),
                                               static_cast<uint32_t>(routing->groups.size()));
    if (fresh) routing->groups.push_back({zone.upstreams, zone.cache});
    routing->table.Add(zone.name, known->second);
  }
  routing->config = std::move(config);
  return routing;
}

size_t GroupedUpstreamCount(const config::Config& config, std::optional<config::Transport> only) {
  auto count_of = [&](const std::vector<config::UpstreamConfig>& upstreams) {
    if (!only) return upstreams.size();
    return static_cast<size_t>(std::count_if(
        upstreams.begin(), upstreams.end(),
        [&](const config::UpstreamConfig& upstream) { return upstream.transport == *only; }));
  };
  size_t count = count_of(config.upstreams);
  std::map<std::string, bool> groups{{GroupKey(config.upstreams, true), true}};
  for (const config::ZoneConfig& zone : config.zones) {
    if (groups.emplace(GroupKey(zone.upstreams, zone.cache), true).second) {
      count += count_of(zone.upstreams);
    }
  }
  return count;
}

}  // namespace dotproxy::upstream
