// The TOML configuration file. Control plane only: runs once at start.

#include <toml++/toml.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "dotproxy/config/config.h"

namespace dotproxy::config {
namespace {

absl::string_view Sv(std::string_view text) { return {text.data(), text.size()}; }

// Builds "FILE:LINE: problem" for the node (or its parent table).
class FileErrors {
 public:
  explicit FileErrors(const std::string& path) : path_(path) {}
  absl::Status At(const toml::source_region& where, absl::string_view problem) const {
    return AtImpl(where, problem);
  }
  absl::Status At(const toml::source_region& where, std::string_view problem) const {
    return AtImpl(where, Sv(problem));
  }
  absl::Status At(const toml::source_region& where, const char* problem) const {
    return AtImpl(where, absl::string_view(problem));
  }
  absl::Status At(const toml::source_region& where, const std::string& problem) const {
    return AtImpl(where, absl::string_view(problem));
  }

 private:
  absl::Status AtImpl(const toml::source_region& where, absl::string_view problem) const {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ":", where.begin.line, ": ", problem));
  }

  const std::string& path_;
};

absl::Status ReadInteger(const FileErrors& errors, const toml::node& node, std::string_view key,
                         int64_t min, int64_t max, int64_t& out) {
  const auto* value = node.as_integer();
  if (value == nullptr) return errors.At(node.source(), absl::StrCat("'", Sv(key), "' must be an integer"));
  const int64_t v = value->get();
  if (v < min || v > max) {
    return errors.At(node.source(),
                     absl::StrCat("'", Sv(key), "' = ", v, " is out of range [", min, ", ", max, "]"));
  }
  out = v;
  return absl::OkStatus();
}

absl::Status ReadString(const FileErrors& errors, const toml::node& node, std::string_view key,
                        std::string& out) {
  const auto* value = node.as_string();
  if (value == nullptr || value->get().empty()) {
    return errors.At(node.source(), absl::StrCat("'", Sv(key), "' must be a non-empty string"));
  }
  out = value->get();
  return absl::OkStatus();
}

absl::Status ReadBool(const FileErrors& errors, const toml::node& node, std::string_view key,
                      bool& out) {
  const auto* value = node.as_boolean();
  if (value == nullptr) return errors.At(node.source(), absl::StrCat("'", Sv(key), "' must be true or false"));
  out = value->get();
  return absl::OkStatus();
}

absl::Status ReadMilliseconds(const FileErrors& errors, const toml::node& node,
                              std::string_view key, int64_t min, int64_t max,
                              std::chrono::milliseconds& out) {
  int64_t v = 0;
  if (auto status = ReadInteger(errors, node, key, min, max, v); !status.ok()) return status;
  out = std::chrono::milliseconds(v);
  return absl::OkStatus();
}

absl::Status ReadUpstream(const FileErrors& errors, const toml::table& table, UpstreamConfig& out) {
  std::string address_text;
  bool have_address = false;
  const toml::node* address_node = nullptr;
  for (const auto& [key_node, node] : table) {
    const std::string_view key = key_node.str();
    if (key == "address") {
      if (auto s = ReadString(errors, node, key, address_text); !s.ok()) return s;
      have_address = true;
      address_node = &node;
    } else if (key == "name") {
      if (auto s = ReadString(errors, node, key, out.auth_name); !s.ok()) return s;
    } else if (key == "pins") {
      const auto* pins = node.as_array();
      if (pins == nullptr) return errors.At(node.source(), "'pins' must be an array of base64 strings");
      for (const auto& pin_node : *pins) {
        const auto* text = pin_node.as_string();
        if (text == nullptr) return errors.At(pin_node.source(), "a pin must be a base64 string");
        auto pin = ParsePin(text->get());
        if (!pin.ok()) return errors.At(pin_node.source(), pin.status().message());
        out.pins.push_back(*pin);
      }
    } else if (key == "pin_only") {
      if (auto s = ReadBool(errors, node, key, out.pin_only); !s.ok()) return s;
    } else if (key == "priority") {
      int64_t v = 0;
      if (auto s = ReadInteger(errors, node, key, 0, 100, v); !s.ok()) return s;
      out.priority = static_cast<int>(v);
    } else {
      return errors.At(key_node.source(), absl::StrCat("unknown key '", Sv(key),
                                                       "' in [[upstream]] (address, name, pins, pin_only, priority)"));
    }
  }
  if (!have_address) return errors.At(table.source(), "[[upstream]] needs an 'address'");
  auto address = io::ParseSocketAddress(address_text, kDotPort);
  if (!address.ok()) {
    return errors.At(address_node->source(), absl::StrCat("address ", address.status().message()));
  }
  out.address = *address;
  if (out.auth_name.empty()) out.auth_name = out.address.HostString();
  if (out.pin_only && out.pins.empty()) {
    return errors.At(table.source(), "'pin_only = true' needs at least one pin");
  }
  out.spec = absl::StrCat(out.address.ToString(), "#", out.auth_name);
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadConfigFile(const std::string& path, Config& config) {
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& error) {
    const auto& where = error.source();
    return absl::InvalidArgumentError(absl::StrCat(path, ":", where.begin.line, ": ",
                                                   Sv(error.description())));
  }
  const FileErrors errors(path);
  for (const auto& [key_node, node] : root) {
    const std::string_view key = key_node.str();
    absl::Status status;
    int64_t v = 0;
    if (key == "listen") {
      const auto* list = node.as_array();
      if (list == nullptr) return errors.At(node.source(), "'listen' must be an array of \"ADDR:PORT\" strings");
      config.listen.clear();
      for (const auto& item : *list) {
        const auto* text = item.as_string();
        if (text == nullptr) return errors.At(item.source(), "a listen address must be a string");
        auto address = io::ParseSocketAddress(text->get(), -1);
        if (!address.ok()) return errors.At(item.source(), absl::StrCat("listen ", address.status().message()));
        config.listen.push_back(*address);
      }
    } else if (key == "upstream") {
      const auto* list = node.as_array();
      if (list == nullptr || !list->is_array_of_tables()) {
        return errors.At(node.source(), "'upstream' must be written as [[upstream]] tables");
      }
      config.upstreams.clear();
      for (const auto& item : *list) {
        UpstreamConfig upstream;
        if (auto s = ReadUpstream(errors, *item.as_table(), upstream); !s.ok()) return s;
        config.upstreams.push_back(std::move(upstream));
      }
    } else if (key == "allow") {
      const auto* list = node.as_array();
      if (list == nullptr) return errors.At(node.source(), "'allow' must be an array of \"NETWORK/LENGTH\" strings");
      config.allow.clear();
      for (const auto& item : *list) {
        const auto* text = item.as_string();
        if (text == nullptr) return errors.At(item.source(), "an allow entry must be a string");
        auto cidr = io::ParseCidr(text->get());
        if (!cidr.ok()) return errors.At(item.source(), absl::StrCat("allow ", cidr.status().message()));
        config.allow.push_back(*cidr);
      }
    } else if (key == "ca_file") {
      status = ReadString(errors, node, key, config.ca_file);
    } else if (key == "threads") {
      status = ReadInteger(errors, node, key, 1, 1024, v);
      config.threads = static_cast<int>(v);
    } else if (key == "cache_size") {
      status = ReadInteger(errors, node, key, 0, int64_t{1} << 32, v);
      config.cache_size = static_cast<size_t>(v);
    } else if (key == "query_timeout_ms") {
      status = ReadMilliseconds(errors, node, key, 10, 60000, config.query_timeout);
    } else if (key == "tcp_idle_timeout_ms") {
      status = ReadMilliseconds(errors, node, key, 100, 3600000, config.tcp_idle_timeout);
    } else if (key == "connect_timeout_ms") {
      status = ReadMilliseconds(errors, node, key, 100, 60000, config.connect_timeout);
    } else if (key == "upstream_idle_timeout_ms") {
      status = ReadMilliseconds(errors, node, key, 100, 3600000, config.upstream_idle_timeout);
    } else if (key == "max_tcp_clients") {
      status = ReadInteger(errors, node, key, 1, 65536, v);
      config.max_tcp_clients = static_cast<int>(v);
    } else if (key == "max_inflight") {
      status = ReadInteger(errors, node, key, 16, 1 << 20, v);
      config.max_inflight = static_cast<int>(v);
    } else if (key == "udp_buffer") {
      status = ReadInteger(errors, node, key, 0, 1 << 30, v);
      config.udp_socket_buffer = static_cast<int>(v);
    } else if (key == "max_inflight_per_connection") {
      status = ReadInteger(errors, node, key, 1, 65535, v);
      config.max_inflight_per_connection = static_cast<int>(v);
    } else if (key == "max_connections_per_upstream") {
      status = ReadInteger(errors, node, key, 1, 64, v);
      config.max_connections_per_upstream = static_cast<int>(v);
    } else if (key == "cache_min_ttl" || key == "cache_max_ttl" || key == "cache_negative_ttl" ||
               key == "cache_servfail_ttl" || key == "cache_stale_window") {
      status = ReadInteger(errors, node, key, 0, 7 * 86400, v);
      const uint32_t seconds = static_cast<uint32_t>(v);
      if (key == "cache_min_ttl") config.cache_min_ttl = seconds;
      if (key == "cache_max_ttl") config.cache_max_ttl = seconds;
      if (key == "cache_negative_ttl") config.cache_negative_max_ttl = seconds;
      if (key == "cache_servfail_ttl") config.cache_servfail_ttl = seconds;
      if (key == "cache_stale_window") config.cache_stale_window = seconds;
    } else if (key == "padding") {
      status = ReadBool(errors, node, key, config.pad_queries);
    } else if (key == "strip_client_subnet") {
      status = ReadBool(errors, node, key, config.strip_client_subnet);
    } else {
      return errors.At(key_node.source(), absl::StrCat("unknown key '", Sv(key), "'"));
    }
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace dotproxy::config
