// Forward zones: name normalization and the checks ValidateConfig applies
// to every zone. Control plane only.

#include <string>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "dotproxy/config/config.h"
#include "src/config/text.h"
#include "src/config/zones.h"

namespace dotproxy::config {
namespace {

std::string ZoneLabel(std::string_view zone) {
  return zone.empty() ? std::string("the default zone") : absl::StrCat("zone '", Sv(zone), "'");
}

bool LabelByte(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

}  // namespace

absl::StatusOr<std::string> NormalizeZoneName(std::string_view name) {
  if (name == ".") return std::string();
  if (name.empty()) return absl::InvalidArgumentError("empty zone name (the root is \".\")");
  std::string normalized(name);
  if (normalized.back() == '.') normalized.pop_back();
  for (char& c : normalized) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  if (normalized.size() > kMaxAuthNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("zone name '", Excerpt(name), "' is longer than ", kMaxAuthNameBytes,
                     " characters"));
  }
  size_t label_start = 0;
  for (size_t i = 0; i <= normalized.size(); ++i) {
    if (i < normalized.size() && normalized[i] != '.') {
      if (!LabelByte(normalized[i])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "zone name '", Excerpt(name), "': '", EscapeForMessage(std::string_view(&normalized[i], 1)),
            "' is not a letter, digit, '-' or '_'"));
      }
      continue;
    }
    const size_t length = i - label_start;
    if (length == 0 || length > 63) {
      return absl::InvalidArgumentError(absl::StrCat(
          "zone name '", Excerpt(name), "' has ", length == 0 ? "an empty label" : "a label longer than 63 characters"));
    }
    label_start = i + 1;
  }
  return normalized;
}

std::vector<UpstreamConfig*> AllUpstreams(Config& config) {
  std::vector<UpstreamConfig*> all;
  for (UpstreamConfig& upstream : config.upstreams) all.push_back(&upstream);
  for (ZoneConfig& zone : config.zones) {
    for (UpstreamConfig& upstream : zone.upstreams) all.push_back(&upstream);
  }
  return all;
}

std::vector<const UpstreamConfig*> AllUpstreams(const Config& config) {
  std::vector<const UpstreamConfig*> all;
  for (const UpstreamConfig& upstream : config.upstreams) all.push_back(&upstream);
  for (const ZoneConfig& zone : config.zones) {
    for (const UpstreamConfig& upstream : zone.upstreams) all.push_back(&upstream);
  }
  return all;
}

absl::Status CheckUpstreamList(const std::vector<UpstreamConfig>& upstreams, bool allow_plaintext,
                               std::string_view zone) {
  const std::string in = zone.empty() ? std::string() : absl::StrCat(" in ", ZoneLabel(zone));
  for (const UpstreamConfig& upstream : upstreams) {
    if (auto status = CheckUpstream(upstream); !status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("upstream '", Excerpt(upstream.spec), "'", in, ": ", status.message()));
    }
    // No silent downgrade of privacy: what leaves for the public Internet
    // goes over TLS unless the operator says otherwise.
    if (!IsEncrypted(upstream.transport) && !allow_plaintext) {
      return absl::InvalidArgumentError(absl::StrCat(
          "upstream '", Excerpt(upstream.spec),
          "': plain DNS upstreams are not allowed for the default zone without "
          "allow_plaintext = true (--allow-plaintext), or route an internal zone to it with "
          "[[zone]]"));
    }
  }
  // Connection pools are keyed by (address, port, TLS name): the same key
  // twice is a mistake, and a different name at the same address gets its
  // own connections (never one made for another name).
  for (size_t i = 0; i < upstreams.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      const UpstreamConfig& a = upstreams[i];
      const UpstreamConfig& b = upstreams[j];
      if (a.transport == b.transport && a.address == b.address &&
          a.peer.auth_name == b.peer.auth_name) {
        return absl::InvalidArgumentError(absl::StrCat("upstream ", Excerpt(a.spec),
                                                       " is configured twice", in));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateZones(const Config& config) {
  std::unordered_set<std::string_view> names;
  for (size_t z = 0; z < config.zones.size(); ++z) {
    const ZoneConfig& zone = config.zones[z];
    auto normalized = NormalizeZoneName(zone.name);
    if (!normalized.ok()) return normalized.status();
    if (normalized->empty() || *normalized != zone.name) {
      return absl::InvalidArgumentError(
          absl::StrCat("zone '", Excerpt(zone.name), "' is not a normalized non-root name"));
    }
    if (zone.upstreams.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(ZoneLabel(zone.name), " has no upstreams"));
    }
    if (auto status = CheckUpstreamList(zone.upstreams, /*allow_plaintext=*/true, zone.name);
        !status.ok()) {
      return status;
    }
    if (!names.insert(zone.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(ZoneLabel(zone.name), " is configured twice"));
    }
  }
  return absl::OkStatus();
}

}  // namespace dotproxy::config
