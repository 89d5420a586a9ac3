#pragma once
// How a configuration's zones map onto upstream groups: group 0 is the
// default zone (Config::upstreams); each [[zone]] goes to a group of its
// upstreams. Zones with the same upstream list and policy share one group
// (one set of pools and health), so ten thousand zones pointing at the same
// internal resolvers cost one group, not ten thousand.
//
// Built on the control thread from an immutable Config, then shared
// read-only by every shard (the shards build their pools from it).

#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "dotproxy/config/config.h"
#include "dotproxy/upstream/zone_table.h"

namespace dotproxy::upstream {

struct UpstreamGroup {
  std::span<const config::UpstreamConfig> upstreams;  // into ZoneRouting::config
  bool cache_answers = true;
};

struct ZoneRouting {
  std::shared_ptr<const config::Config> config;  // what the groups point into
  std::vector<UpstreamGroup> groups;             // [ZoneTable::kRootGroup]: the default zone
  ZoneTable table;                               // name -> index into groups
};

std::shared_ptr<const ZoneRouting> MakeZoneRouting(std::shared_ptr<const config::Config> config);

// How many upstreams the groups of `config` hold in all (each has its own
// connections): the default zone's plus each distinct zone group's; with
// `only`, those of that transport.
size_t GroupedUpstreamCount(const config::Config& config,
                            std::optional<config::Transport> only = std::nullopt);

}  // namespace dotproxy::upstream
