#pragma once
// The TOML tables of local answers and blocklists ([[local]], [[blocklist]],
// allowlist = [FILE...]), private to src/config: they fill Config::policy,
// which policy::Tables::Build reads. Control thread only.

#include <toml++/toml.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "dotproxy/config/config.h"

namespace dotproxy::config {

bool IsPolicyKey(std::string_view key);

// Reads the value of the top-level `key` (IsPolicyKey) from the file `path`.
// Errors read "FILE:LINE: problem".
absl::Status ReadPolicyKey(std::string_view key, const toml::node& node, const std::string& path,
                           Config& config);

}  // namespace dotproxy::config
