// The TOML configuration file. Control plane only: runs once at start.
//
// Which keys exist, what they take and their ranges come from the option
// table (Options()); this file only knows TOML's syntax for each kind, and
// the sub-keys of an [[upstream]] table.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <toml++/toml.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "dotproxy/config/config.h"
#include "dotproxy/io/socket.h"
#include "src/config/policy_file.h"
#include "src/config/text.h"

namespace dotproxy::config {
namespace {

// Builds "FILE:LINE: problem" for the node (or its parent table).
class FileErrors {
 public:
  explicit FileErrors(const std::string& path) : path_(EscapeForMessage(path)) {}
  absl::Status At(const toml::source_region& where, absl::string_view problem) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ":", where.begin.line, ": ", problem));
  }
  // `status` carries the problem; `what` names the key it is about.
  absl::Status At(const toml::source_region& where, absl::string_view what,
                  const absl::Status& status) const {
    return At(where, absl::StrCat(what, ": ", status.message()));
  }

 private:
  const std::string path_;  // escaped: a file name can hold a newline
};

std::string Quoted(std::string_view key) { return absl::StrCat("'", Excerpt(key), "'"); }

absl::Status ReadString(const FileErrors& errors, const toml::node& node, std::string_view key,
                        std::string& out) {
  const auto* value = node.as_string();
  if (value == nullptr || value->get().empty()) {
    return errors.At(node.source(), absl::StrCat(Quoted(key), " must be a non-empty string"));
  }
  out = value->get();
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
      // io::ParseSocketAddress quotes its input whole: bound it first (an
      // https:// address may carry a path).
      if (auto s = CheckText(address_text, address_text.starts_with("https://")
                                               ? kMaxAddressBytes + 8 + kMaxDohPathBytes
                                               : kMaxAddressBytes);
          !s.ok()) {
        return errors.At(node.source(), "'address'", s);
      }
      have_address = true;
      address_node = &node;
    } else if (key == "name") {
      if (auto s = ReadString(errors, node, key, out.peer.auth_name); !s.ok()) return s;
      // The same limit as the flag's #NAME; a NUL would cut the SNI short.
      if (auto s = CheckText(out.peer.auth_name, kMaxAuthNameBytes); !s.ok()) {
        return errors.At(node.source(), "'name'", s);
      }
    } else if (key == "pins") {
      const auto* pins = node.as_array();
      if (pins == nullptr) return errors.At(node.source(), "'pins' must be an array of base64 strings");
      for (const auto& pin_node : *pins) {
        const auto* text = pin_node.as_string();
        if (text == nullptr) return errors.At(pin_node.source(), "a pin must be a base64 string");
        auto pin = ParsePin(text->get());
        if (!pin.ok()) return errors.At(pin_node.source(), pin.status().message());
        out.peer.pins.push_back(*pin);
      }
    } else if (key == "pin_only") {
      const auto* value = node.as_boolean();
      if (value == nullptr) return errors.At(node.source(), "'pin_only' must be true or false");
      out.peer.pin_only = value->get();
    } else if (key == "priority") {
      const auto* value = node.as_integer();
      if (value == nullptr) return errors.At(node.source(), "'priority' must be an integer");
      if (value->get() < 0 || value->get() > 100) {
        return errors.At(node.source(),
                         absl::StrCat("'priority': ", value->get(), " is out of range [0, 100]"));
      }
      out.priority = static_cast<int>(value->get());
    } else {
      return errors.At(key_node.source(),
                       absl::StrCat("unknown key ", Quoted(key),
                                    " in [[upstream]] (address, name, pins, pin_only, priority)"));
    }
  }
  if (!have_address) return errors.At(table.source(), "[[upstream]] needs an 'address'");
  // A scheme in the address as in --upstream: udp:// and tcp:// are plain
  // DNS (port 53, nothing to authenticate), tls:// the default.
  if (address_text.starts_with("udp://") || address_text.starts_with("tcp://")) {
    if (!out.peer.auth_name.empty() || !out.peer.pins.empty() || out.peer.pin_only) {
      return errors.At(table.source(), "a plain (udp:// or tcp://) upstream takes no 'name', "
                                       "'pins' or 'pin_only': it is not authenticated");
    }
    auto plain = ParseUpstream(address_text);
    if (!plain.ok()) {
      return errors.At(address_node->source(), absl::StrCat("address ", plain.status().message()));
    }
    plain->priority = out.priority;
    out = *std::move(plain);
    return absl::OkStatus();
  }
  if (address_text.starts_with("https://")) {
    // DoH: the same name and pins, and a path after the address.
    out.transport = Transport::kHttps;
    if (auto s = ParseHttpsAddress(std::string_view(address_text).substr(8), out); !s.ok()) {
      return errors.At(address_node->source(), absl::StrCat("address ", s.message()));
    }
  } else {
    if (address_text.starts_with("tls://")) address_text.erase(0, 6);
    auto address = io::ParseSocketAddress(address_text, kDotPort);
    if (!address.ok()) {
      return errors.At(address_node->source(), absl::StrCat("address ", address.status().message()));
    }
    out.address = *address;
  }
  if (out.peer.auth_name.empty()) out.peer.auth_name = out.address.HostString();
  if (out.peer.pin_only && out.peer.pins.empty()) {
    return errors.At(table.source(), "'pin_only = true' needs at least one pin");
  }
  out.spec = out.transport == Transport::kHttps
                 ? absl::StrCat("https://", out.address.ToString(), out.doh_path, "#",
                                out.peer.auth_name)
                 : absl::StrCat(out.address.ToString(), "#", out.peer.auth_name);
  return absl::OkStatus();
}

// One [[zone]] table. The root zone (".") sets the default zone's
// upstreams and allow_plaintext; any other is appended to config.zones.
// `seen` maps the normalized names read so far to their lines.
absl::Status ReadZone(const FileErrors& errors, const toml::table& table,
                      std::map<std::string, int>& seen, const toml::node* top_level_upstreams,
                      Config& config) {
  ZoneConfig zone;
  zone.line = static_cast<int>(table.source().begin.line);
  bool have_name = false;
  bool have_upstreams = false;
  const toml::node* cache_node = nullptr;
  const toml::node* name_node = nullptr;
  std::optional<bool> allow_plaintext;
  for (const auto& [key_node, node] : table) {
    const std::string_view key = key_node.str();
    if (key == "name") {
      const auto* value = node.as_string();
      if (value == nullptr) return errors.At(node.source(), "'name' must be a domain name string");
      auto name = NormalizeZoneName(value->get());
      if (!name.ok()) return errors.At(node.source(), name.status().message());
      zone.name = *std::move(name);
      have_name = true;
      name_node = &node;
    } else if (key == "upstreams") {
      const auto* list = node.as_array();
      if (list == nullptr) {
        return errors.At(node.source(), "'upstreams' must be an array of upstream spec strings");
      }
      if (list->empty()) return errors.At(node.source(), "'upstreams' is an empty list");
      for (const auto& item : *list) {
        const auto* text = item.as_string();
        if (text == nullptr) {
          return errors.At(item.source(), "'upstreams': each item must be an upstream spec string");
        }
        auto upstream = ParseUpstream(text->get());
        if (!upstream.ok()) return errors.At(item.source(), "'upstreams'", upstream.status());
        zone.upstreams.push_back(*std::move(upstream));
      }
      have_upstreams = true;
    } else if (key == "allow_plaintext" || key == "cache") {
      const auto* value = node.as_boolean();
      if (value == nullptr) {
        return errors.At(node.source(), absl::StrCat(Quoted(key), " must be true or false"));
      }
      if (key == "cache") {
        zone.cache = value->get();
        cache_node = &node;
      } else {
        allow_plaintext = value->get();
      }
    } else {
      return errors.At(key_node.source(),
                       absl::StrCat("unknown key ", Quoted(key),
                                    " in [[zone]] (name, upstreams, allow_plaintext, cache)"));
    }
  }
  if (!have_name) return errors.At(table.source(), "[[zone]] needs a 'name'");
  if (!have_upstreams) return errors.At(table.source(), "[[zone]] needs 'upstreams'");
  const std::string shown = zone.name.empty() ? std::string(".") : zone.name;
  if (auto [where, fresh] = seen.emplace(zone.name, zone.line); !fresh) {
    return errors.At(name_node->source(), absl::StrCat("zone '", shown,
                                                       "' is already defined at line ", where->second));
  }
  if (!zone.name.empty()) {
    if (allow_plaintext) zone.allow_plaintext = *allow_plaintext;
    config.zones.push_back(std::move(zone));
    return absl::OkStatus();
  }
  // The root zone is the default zone: today's upstreams.
  if (top_level_upstreams != nullptr) {
    return errors.At(name_node->source(),
                     absl::StrCat("[[zone]] name = \".\" and the top-level [[upstream]] tables (line ",
                                  top_level_upstreams->source().begin.line,
                                  ") both set the default zone's upstreams: keep one"));
  }
  if (cache_node != nullptr) {
    return errors.At(cache_node->source(),
                     "'cache' is not a setting of the default zone (cache_size = 0 turns the cache off)");
  }
  config.upstreams = std::move(zone.upstreams);
  if (allow_plaintext) config.allow_plaintext = *allow_plaintext;
  return absl::OkStatus();
}

// Reads one top-level key into `config` through its row of the table.
absl::Status ReadOption(const FileErrors& errors, const Option& option, std::string_view key,
                        const toml::node& node, Config& config) {
  const std::string what = Quoted(key);
  switch (option.kind) {
    case OptionKind::kInteger:
    case OptionKind::kMilliseconds: {
      const auto* value = node.as_integer();
      if (value == nullptr) return errors.At(node.source(), absl::StrCat(what, " must be an integer"));
      if (auto s = option.SetInteger(config, value->get()); !s.ok()) return errors.At(node.source(), what, s);
      return absl::OkStatus();
    }
    case OptionKind::kSwitch: {
      const auto* value = node.as_boolean();
      if (value == nullptr) return errors.At(node.source(), absl::StrCat(what, " must be true or false"));
      option.SetBool(config, value->get());
      return absl::OkStatus();
    }
    case OptionKind::kPath:
    case OptionKind::kChoice:
    case OptionKind::kPrefixLengths:
    case OptionKind::kAddress: {
      const auto* value = node.as_string();
      if (value == nullptr || value->get().empty()) {
        return errors.At(node.source(), absl::StrCat(what, " must be a non-empty string"));
      }
      if (auto s = option.SetFromText(config, value->get()); !s.ok()) return errors.At(node.source(), what, s);
      return absl::OkStatus();
    }
    case OptionKind::kWordSet: {
      const auto* list = node.as_array();
      if (list == nullptr || list->empty()) {
        return errors.At(node.source(), absl::StrCat(what, " must be a non-empty array of \"",
                                                     Sv(option.choices), "\" strings"));
      }
      std::string joined;
      for (const auto& item : *list) {
        const auto* text = item.as_string();
        if (text == nullptr) return errors.At(item.source(), absl::StrCat(what, ": each item must be a string"));
        absl::StrAppend(&joined, joined.empty() ? "" : ",", text->get());
      }
      if (auto s = option.SetFromText(config, joined); !s.ok()) return errors.At(node.source(), what, s);
      return absl::OkStatus();
    }
    case OptionKind::kAddressList:
    case OptionKind::kCidrList:
    case OptionKind::kUpstreamList: {
      const auto* list = node.as_array();
      if (list == nullptr) {
        return errors.At(node.source(),
                         option.kind == OptionKind::kUpstreamList
                             ? absl::StrCat(what, " must be written as [[upstream]] tables")
                             : absl::StrCat(what, " must be an array of \"", Sv(option.value_name),
                                            "\" strings"));
      }
      // An empty list would leave the proxy with nothing to listen on or
      // forward to; falling back to the defaults instead would hide the typo.
      if (list->empty()) {
        return errors.At(node.source(), absl::StrCat(what, " is an empty list: give at least one item, "
                                                           "or leave the key out for the default"));
      }
      option.ClearList(config);
      if (option.kind == OptionKind::kUpstreamList) {
        if (!list->is_array_of_tables()) {
          return errors.At(node.source(), absl::StrCat(what, " must be written as [[upstream]] tables"));
        }
        for (const auto& item : *list) {
          UpstreamConfig upstream;
          if (auto s = ReadUpstream(errors, *item.as_table(), upstream); !s.ok()) return s;
          if (auto s = option.AppendUpstream(config, std::move(upstream)); !s.ok()) {
            return errors.At(item.source(), "[[upstream]]", s);
          }
        }
        return absl::OkStatus();
      }
      for (const auto& item : *list) {
        const auto* text = item.as_string();
        if (text == nullptr) return errors.At(item.source(), absl::StrCat(what, ": each item must be a string"));
        if (auto s = option.SetFromText(config, text->get()); !s.ok()) return errors.At(item.source(), what, s);
      }
      return absl::OkStatus();
    }
    case OptionKind::kConfigFile:
    case OptionKind::kHelp:
    case OptionKind::kVersion:
      break;
  }
  return errors.At(node.source(), absl::StrCat(what, " is not a file setting"));
}

const char* FileTypeName(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// The whole file, if it is a regular file of at most kMaxConfigFileBytes.
// O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses
// it, as it refuses directories and devices (/dev/zero never ends).
absl::StatusOr<std::string> ReadConfigText(const std::string& path, const std::string& shown) {
  io::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    return absl::InvalidArgumentError(absl::StrCat(shown, ": cannot open: ", std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(shown, ": cannot stat: ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(
        shown, ": ", FileTypeName(st.st_mode), "; --config takes a regular (TOML) file"));
  }
  const std::string too_large =
      absl::StrCat(shown, ": larger than the ", kMaxConfigFileBytes, "-byte limit of a configuration file");
  if (st.st_size > static_cast<off_t>(kMaxConfigFileBytes)) return absl::InvalidArgumentError(too_large);
  // Read to the end, not to st_size: the file may change under us, and some
  // regular files (procfs) report size 0.
  std::string text;
  char buffer[64 * 1024];
  while (true) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::InvalidArgumentError(absl::StrCat(shown, ": cannot read: ", std::strerror(errno)));
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
    if (text.size() > kMaxConfigFileBytes) return absl::InvalidArgumentError(too_large);
  }
  return text;
}

}  // namespace

absl::Status LoadConfigFile(const std::string& path, Config& config) {
  auto text = ReadConfigText(path, EscapeForMessage(path));
  if (!text.ok()) return text.status();
  return LoadConfigText(*text, path, config);
}

absl::Status LoadConfigText(std::string_view text, const std::string& path, Config& config) {
  const std::string shown = EscapeForMessage(path);
  toml::table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error& error) {
    // toml++ may quote the offending text; keep the line short.
    return absl::InvalidArgumentError(absl::StrCat(shown, ":", error.source().begin.line, ": ",
                                                   Excerpt(error.description(), 200)));
  }
  const FileErrors errors(path);
  std::map<std::string, int> zones_seen;
  bool zones_cleared = false;
  const toml::node* top_level_upstreams = root.get("upstream");
  for (const auto& [key_node, node] : root) {
    const std::string_view key = key_node.str();
    if (key == "zone") {
      const auto* list = node.as_array();
      if (list == nullptr || !list->is_array_of_tables()) {
        return errors.At(node.source(), "'zone' must be written as [[zone]] tables");
      }
      if (!zones_cleared) config.zones.clear();  // the file's zones replace earlier ones
      zones_cleared = true;
      for (const auto& item : *list) {
        if (auto s = ReadZone(errors, *item.as_table(), zones_seen, top_level_upstreams, config);
            !s.ok()) {
          return s;
        }
      }
      continue;
    }
    if (IsPolicyKey(key)) {
      if (auto status = ReadPolicyKey(key, node, path, config); !status.ok()) return status;
      continue;
    }
    const Option* option = FindOptionByTomlKey(key);
    if (option == nullptr) {
      return errors.At(key_node.source(), absl::StrCat("unknown key ", Quoted(key)));
    }
    if (auto status = ReadOption(errors, *option, key, node, config); !status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace dotproxy::config
