#pragma once
// Checks shared by the option parsers and the forward zones (private to
// src/config). Control plane only.

#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "dotproxy/config/config.h"

namespace dotproxy::config {

// What every upstream must satisfy, however it was written.
absl::Status CheckUpstream(const UpstreamConfig& upstream);

// One zone's upstream list: each upstream valid, none twice (same
// transport, address and TLS name), plain ones only when
// `allow_plaintext`. `zone` names the zone in messages ("" for the
// default zone).
absl::Status CheckUpstreamList(const std::vector<UpstreamConfig>& upstreams, bool allow_plaintext,
                               std::string_view zone);

// The [[zone]] tables: names valid and unique, upstream lists not empty
// and valid.
absl::Status ValidateZones(const Config& config);

}  // namespace dotproxy::config
