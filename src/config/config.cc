// The option table and the flag and environment parsers. Control plane only:
// runs once at start, on the main thread.

#include "dotproxy/config/config.h"
#include "dotproxy/policy/tables.h"

#include <getopt.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "src/config/text.h"
#include "src/config/zones.h"

namespace dotproxy::config {
namespace {


absl::Status Problem(absl::string_view where, const absl::Status& status) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", status.message()));
}

// A decimal integer, whole text; the range is the row's business.
absl::StatusOr<int64_t> ParseDecimal(std::string_view text) {
  int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return absl::InvalidArgumentError(absl::StrCat("'", Excerpt(text), "' is not an integer"));
  }
  return value;
}

}  // namespace

// What every upstream must satisfy, however it was written.
absl::Status CheckUpstream(const UpstreamConfig& upstream) {
  if (!IsEncrypted(upstream.transport)) return absl::OkStatus();
  if (upstream.peer.auth_name.empty()) return absl::InvalidArgumentError("empty name");
  if (auto status = CheckText(upstream.peer.auth_name, kMaxAuthNameBytes); !status.ok()) {
    return Problem("name", status);
  }
  if (upstream.peer.pin_only && upstream.peer.pins.empty()) {
    return absl::InvalidArgumentError("pin-only authentication needs at least one pin");
  }
  return absl::OkStatus();
}

absl::Status ParsePrefixLengths(std::string_view text, int& v4, int& v6) {
  const std::vector<absl::string_view> parts = absl::StrSplit(Sv(text), '/');
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &v4) || !absl::SimpleAtoi(parts[1], &v6)) {
    return absl::InvalidArgumentError(
        absl::StrCat(Excerpt(text), " is not V4/V6 prefix lengths (e.g. 24/56)"));
  }
  if (v4 < 8 || v4 > 32 || v6 < 16 || v6 > 128) {
    return absl::InvalidArgumentError(absl::StrCat(
        Excerpt(text), ": the IPv4 length must be 8..32 and the IPv6 length 16..128"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SpkiPin> ParsePin(std::string_view base64) {
  std::string decoded;
  if (!absl::Base64Unescape(Sv(base64), &decoded) || decoded.size() != 32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pin '", Excerpt(base64), "' is not a base64 SHA-256 digest (44 characters, see tools/spki-pin.sh)"));
  }
  SpkiPin pin;
  std::memcpy(pin.data(), decoded.data(), pin.size());
  return pin;
}

absl::StatusOr<UpstreamConfig> ParseUpstream(std::string_view spec) {
  if (auto status = CheckText(spec, kMaxUpstreamSpecBytes); !status.ok()) return status;
  const std::string quoted = absl::StrCat("'", Excerpt(spec), "': ");
  UpstreamConfig upstream;
  // Logs name the upstream without its pins.
  upstream.spec = std::string(spec.substr(0, spec.find('^')));
  std::string_view rest = spec;
  const auto consume = [&rest](std::string_view scheme) {
    if (!rest.starts_with(scheme)) return false;
    rest.remove_prefix(scheme.size());
    return true;
  };
  if (consume("udp://")) {
    upstream.transport = Transport::kUdp;
  } else if (consume("tcp://")) {
    upstream.transport = Transport::kTcp;
  } else if (consume("https://")) {
    upstream.transport = Transport::kHttps;
  } else {
    consume("tls://");
  }
  if (!IsEncrypted(upstream.transport)) {
    if (rest.find_first_of("#^") != std::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          quoted, "a plain (udp:// or tcp://) upstream takes no '#name' or '^pin': it is not "
                  "authenticated"));
    }
    if (auto status = CheckText(rest, kMaxAddressBytes); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(quoted, "address ", status.message()));
    }
    auto address = io::ParseSocketAddress(rest, kPlainDnsPort);
    if (!address.ok()) return address.status();
    upstream.address = *address;
    return upstream;
  }
  // Pins: everything after the first '^', separated by '^'.
  const size_t caret = rest.find('^');
  if (caret != std::string_view::npos) {
    std::string_view pins = rest.substr(caret + 1);
    rest = rest.substr(0, caret);
    while (true) {
      const size_t next = pins.find('^');
      auto pin = ParsePin(pins.substr(0, next));
      if (!pin.ok()) return absl::InvalidArgumentError(absl::StrCat(quoted, pin.status().message()));
      upstream.peer.pins.push_back(*pin);
      if (next == std::string_view::npos) break;
      pins = pins.substr(next + 1);
    }
  }
  std::string_view address_text = rest;
  const size_t hash = rest.find('#');
  if (hash != std::string_view::npos) {
    address_text = rest.substr(0, hash);
    upstream.peer.auth_name = std::string(rest.substr(hash + 1));
    if (upstream.peer.auth_name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(quoted, "empty name after '#'"));
    }
    if (upstream.peer.auth_name.size() > kMaxAuthNameBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(quoted, "name longer than ", kMaxAuthNameBytes, " bytes"));
    }
  }
  if (upstream.transport == Transport::kHttps) {
    if (auto status = ParseHttpsAddress(address_text, upstream); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(quoted, status.message()));
    }
    if (upstream.peer.auth_name.empty()) upstream.peer.auth_name = upstream.address.HostString();
    return upstream;
  }
  // io::ParseSocketAddress quotes its input whole: bound it first.
  if (auto status = CheckText(address_text, kMaxAddressBytes); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(quoted, "address ", status.message()));
  }
  auto address = io::ParseSocketAddress(address_text, kDotPort);
  if (!address.ok()) return address.status();
  upstream.address = *address;
  if (upstream.peer.auth_name.empty()) upstream.peer.auth_name = upstream.address.HostString();
  return upstream;
}

absl::Status ParseHttpsAddress(std::string_view text, UpstreamConfig& upstream) {
  // An IP literal holds no '/', so the first one starts the path.
  const size_t slash = text.find('/');
  std::string_view address_text = text.substr(0, slash);
  upstream.doh_path = kDefaultDohPath;
  if (slash != std::string_view::npos) {
    const std::string_view path = text.substr(slash);
    if (path.size() > kMaxDohPathBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("path longer than ", kMaxDohPathBytes, " bytes"));
    }
    // RFC 3986 path characters; no query ('?': POST carries the message)
    // and no URI template ("{?dns}": write the path alone).
    for (const char c : path) {
      const bool allowed = absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
                           std::string_view("/-._~%!$&'()*+,;=:@").find(c) != std::string_view::npos;
      if (!allowed) {
        return absl::InvalidArgumentError(absl::StrCat(
            "path '", Excerpt(path), "' holds '", Excerpt(std::string_view(&c, 1)),
            "': write the path alone (/dns-query), without a query or URI template"));
      }
    }
    upstream.doh_path = std::string(path);
  }
  if (auto status = CheckText(address_text, kMaxAddressBytes); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("address ", status.message()));
  }
  auto address = io::ParseSocketAddress(address_text, kHttpsPort);
  if (!address.ok()) return address.status();
  upstream.address = *address;
  return absl::OkStatus();
}

// --- Option ----------------------------------------------------------------

bool Option::IsList() const {
  return kind == OptionKind::kAddressList || kind == OptionKind::kUpstreamList ||
         kind == OptionKind::kCidrList;
}

absl::Status Option::SetInteger(Config& config, int64_t value) const {
  if (value < min || value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(value, " is out of range [", min, ", ", max, "]"));
  }
  // The table's bounds fit every field they guard (config_test checks), so
  // these casts do not truncate.
  if (auto* f = std::get_if<int Config::*>(&field)) {
    config.**f = static_cast<int>(value);
  } else if (auto* f = std::get_if<size_t Config::*>(&field)) {
    config.**f = static_cast<size_t>(value);
  } else if (auto* f = std::get_if<uint32_t Config::*>(&field)) {
    config.**f = static_cast<uint32_t>(value);
  } else if (auto* f = std::get_if<std::chrono::milliseconds Config::*>(&field)) {
    config.**f = std::chrono::milliseconds(value);
  } else if (auto* f = std::get_if<uint32_t cache::CacheConfig::*>(&field)) {
    config.cache.**f = static_cast<uint32_t>(value);
  } else {
    return absl::InternalError(absl::StrCat("--", Sv(flag), " is not a number"));
  }
  return absl::OkStatus();
}

int64_t Option::GetInteger(const Config& config) const {
  if (auto* f = std::get_if<int Config::*>(&field)) return config.**f;
  if (auto* f = std::get_if<uint32_t Config::*>(&field)) return config.**f;
  if (auto* f = std::get_if<uint32_t cache::CacheConfig::*>(&field)) return config.cache.**f;
  if (auto* f = std::get_if<std::chrono::milliseconds Config::*>(&field)) return (config.**f).count();
  if (auto* f = std::get_if<size_t Config::*>(&field)) {
    constexpr size_t kMax = std::numeric_limits<int64_t>::max();
    return static_cast<int64_t>(std::min(config.**f, kMax));
  }
  return 0;
}

void Option::SetBool(Config& config, bool value) const {
  if (auto* f = std::get_if<bool Config::*>(&field)) config.**f = value;
}

void Option::ClearList(Config& config) const {
  if (auto* f = std::get_if<std::vector<io::SocketAddress> Config::*>(&field)) (config.**f).clear();
  if (auto* f = std::get_if<std::vector<UpstreamConfig> Config::*>(&field)) (config.**f).clear();
  if (auto* f = std::get_if<std::vector<frontend::Cidr> Config::*>(&field)) (config.**f).clear();
}

absl::Status Option::AppendUpstream(Config& config, UpstreamConfig upstream) const {
  auto* f = std::get_if<std::vector<UpstreamConfig> Config::*>(&field);
  if (f == nullptr) return absl::InternalError(absl::StrCat("--", Sv(flag), " is not an upstream list"));
  if (auto status = CheckUpstream(upstream); !status.ok()) return status;
  (config.**f).push_back(std::move(upstream));
  return absl::OkStatus();
}

absl::Status Option::SetFromText(Config& config, std::string_view text) const {
  switch (kind) {
    case OptionKind::kInteger:
    case OptionKind::kMilliseconds: {
      auto value = ParseDecimal(text);
      if (!value.ok()) return value.status();
      return SetInteger(config, *value);
    }
    case OptionKind::kPath: {
      auto* f = std::get_if<std::string Config::*>(&field);
      if (f == nullptr) break;
      if (text.empty()) return absl::InvalidArgumentError("empty path");
      if (auto status = CheckText(text, kMaxPathBytes); !status.ok()) return status;
      config.**f = std::string(text);
      return absl::OkStatus();
    }
    case OptionKind::kPrefixLengths: {
      auto* f = std::get_if<std::string Config::*>(&field);
      if (f == nullptr) break;
      int v4 = 0, v6 = 0;
      if (auto status = ParsePrefixLengths(text, v4, v6); !status.ok()) return status;
      config.**f = std::string(text);
      return absl::OkStatus();
    }
    case OptionKind::kChoice: {
      auto* f = std::get_if<std::string Config::*>(&field);
      if (f == nullptr) break;
      for (absl::string_view word : absl::StrSplit(Sv(choices), '|')) {
        if (word == Sv(text)) {
          config.**f = std::string(text);
          return absl::OkStatus();
        }
      }
      return absl::InvalidArgumentError(
          absl::StrCat(Excerpt(text), " is not one of ", Sv(choices)));
    }
    case OptionKind::kWordSet: {
      auto* f = std::get_if<std::string Config::*>(&field);
      if (f == nullptr) break;
      if (auto status = CheckText(text, kMaxPathBytes); !status.ok()) return status;
      if (text.empty()) return absl::InvalidArgumentError(absl::StrCat("give some of ", Sv(choices)));
      for (absl::string_view item : absl::StrSplit(Sv(text), ',')) {
        bool known = false;
        for (absl::string_view word : absl::StrSplit(Sv(choices), '|')) known |= word == item;
        if (!known) {
          return absl::InvalidArgumentError(absl::StrCat(
              "'", Excerpt(std::string_view(item.data(), item.size())), "' is not one of ",
              Sv(choices)));
        }
      }
      config.**f = std::string(text);
      return absl::OkStatus();
    }
    case OptionKind::kAddress: {
      auto* f = std::get_if<std::optional<io::SocketAddress> Config::*>(&field);
      if (f == nullptr) break;
      if (auto status = CheckText(text, kMaxAddressBytes); !status.ok()) return status;
      auto address = io::ParseSocketAddress(text, -1);
      if (!address.ok()) return address.status();
      config.**f = *address;
      return absl::OkStatus();
    }
    case OptionKind::kAddressList: {
      auto* f = std::get_if<std::vector<io::SocketAddress> Config::*>(&field);
      if (f == nullptr) break;
      if (auto status = CheckText(text, kMaxAddressBytes); !status.ok()) return status;
      auto address = io::ParseSocketAddress(text, -1);
      if (!address.ok()) return address.status();
      (config.**f).push_back(*address);
      return absl::OkStatus();
    }
    case OptionKind::kCidrList: {
      auto* f = std::get_if<std::vector<frontend::Cidr> Config::*>(&field);
      if (f == nullptr) break;
      if (auto status = CheckText(text, kMaxAddressBytes); !status.ok()) return status;
      auto cidr = frontend::ParseCidr(text);
      if (!cidr.ok()) return cidr.status();
      (config.**f).push_back(*std::move(cidr));
      return absl::OkStatus();
    }
    case OptionKind::kUpstreamList: {
      auto upstream = ParseUpstream(text);
      if (!upstream.ok()) return upstream.status();
      return AppendUpstream(config, *std::move(upstream));
    }
    case OptionKind::kSwitch:
    case OptionKind::kConfigFile:
    case OptionKind::kHelp:
    case OptionKind::kVersion:
      break;
  }
  return absl::InternalError(absl::StrCat("--", Sv(flag), " takes no text value"));
}

// --- Validation ------------------------------------------------------------

absl::Status ValidateConfig(const Config& config) {
  if (config.listen.empty()) return absl::InvalidArgumentError("no listen address (--listen)");
  if (config.upstreams.empty()) return absl::InvalidArgumentError("no upstream (--upstream)");
  if (!config.dnstap.empty()) {
    const std::string_view d = config.dnstap;
    if (!((d.substr(0, 5) == "unix:" || d.substr(0, 5) == "file:") && d.size() > 5)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--dnstap: '", Excerpt(d), "': expected unix:PATH (a Frame Streams reader) or file:PATH"));
    }
  }
  // Parsers check ranges as values arrive; this catches a Config built or
  // changed by code, so every path meets the same table.
  for (const Option& option : Options()) {
    if (!option.IsNumeric()) continue;
    const int64_t value = option.GetInteger(config);
    if (value < option.min || value > option.max) {
      return absl::InvalidArgumentError(absl::StrCat("--", Sv(option.flag), ": ", value,
                                                     " is out of range [", option.min, ", ",
                                                     option.max, "]"));
    }
  }
  if (auto status = CheckText(config.ca_file, kMaxPathBytes); !status.ok()) {
    return Problem("--ca-file", status);
  }
  if (!config.listen_tls.empty() && (config.tls_cert.empty() || config.tls_key.empty())) {
    return absl::InvalidArgumentError("--listen-tls needs --tls-cert and --tls-key");
  }
  if (!config.listen_https.empty() && (config.tls_cert.empty() || config.tls_key.empty())) {
    return absl::InvalidArgumentError("--listen-https needs --tls-cert and --tls-key");
  }
  if (auto status = CheckUpstreamList(config.upstreams, config.allow_plaintext, ""); !status.ok()) {
    return status;
  }
  if (auto status = ValidateZones(config); !status.ok()) return status;
  return absl::OkStatus();
}

// --- Usage -----------------------------------------------------------------

std::string UsageText() {
  // Help starts in this column; longer flags put it on the next line.
  constexpr size_t kHelpColumn = 27;
  const std::string indent(kHelpColumn, ' ');
  std::string environment;
  for (const Option& option : Options()) {
    if (option.env.empty()) continue;
    absl::StrAppend(&environment, environment.empty() ? "" : ", ", Sv(option.env), " (--",
                    Sv(option.flag), ")");
  }
  std::string text = absl::StrCat(
      "Usage: dotproxy [flags]\n"
      "A forwarding DNS proxy: plain DNS (UDP, TCP) in, DNS over TLS out.\n"
      "Environment: ", environment, ":\n"
      "comma-separated, flag syntax; they override the configuration file, and\n"
      "flags override both.\n\n");
  const Config defaults;
  for (const Option& option : Options()) {
    std::string head = absl::StrCat("  --", Sv(option.flag));
    if (!option.value_name.empty()) absl::StrAppend(&head, " ", Sv(option.value_name));
    std::vector<std::string> lines = absl::StrSplit(Sv(option.help), '\n');
    if (option.IsNumeric()) absl::StrAppend(&lines.back(), " (", option.GetInteger(defaults), ")");
    if (head.size() < kHelpColumn) {
      head.resize(kHelpColumn, ' ');
      absl::StrAppend(&text, head, lines.front(), "\n");
    } else {
      absl::StrAppend(&text, head, "\n", indent, lines.front(), "\n");
    }
    for (size_t i = 1; i < lines.size(); ++i) absl::StrAppend(&text, indent, lines[i], "\n");
  }
  return text;
}

// --- The command line ------------------------------------------------------

namespace {

// getopt_long's value for row i of the table; above any short option.
constexpr int kFirstFlagCode = 1000;

// The environment layer for one row: lists are comma-separated, in flag
// syntax, and replace the earlier layers' list; empty items are errors.
absl::Status ApplyEnvironment(const Option& option, Config& config) {
  if (option.env.empty()) return absl::OkStatus();
  const std::string variable(option.env);
  const char* value = std::getenv(variable.c_str());
  if (value == nullptr) return absl::OkStatus();
  if (!option.IsList()) {
    if (auto status = option.SetFromText(config, value); !status.ok()) return Problem(variable, status);
    return absl::OkStatus();
  }
  option.ClearList(config);
  for (absl::string_view item : absl::StrSplit(value, ',')) {
    item = absl::StripAsciiWhitespace(item);
    if (item.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(variable, ": empty item in '", Excerpt(value), "'"));
    }
    if (auto status = option.SetFromText(config, std::string_view(item.data(), item.size()));
        !status.ok()) {
      return Problem(variable, status);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CommandLine> ParseCommandLine(int argc, char** argv) {
  CommandLine result;
  Config& config = result.config;

  // getopt_long wants NUL-terminated names; the table holds string_views.
  std::vector<std::string> names;
  names.reserve(Options().size());
  std::vector<option> long_options;
  for (size_t i = 0; i < Options().size(); ++i) {
    const OptionKind kind = Options()[i].kind;
    const bool takes_value = kind != OptionKind::kSwitch && kind != OptionKind::kHelp &&
                             kind != OptionKind::kVersion;
    names.emplace_back(Options()[i].flag);
    long_options.push_back({names.back().c_str(), takes_value ? required_argument : no_argument,
                            nullptr, kFirstFlagCode + static_cast<int>(i)});
  }
  long_options.push_back({nullptr, 0, nullptr, 0});

  // Pass 1: read every flag so the layers can be applied in order.
  std::vector<std::pair<const Option*, std::string>> flags;
  optind = 1;
  opterr = 0;  // we print our own one-line errors
  int index = 0;
  while (true) {
    const int previous = optind;
    const int code = getopt_long(argc, argv, ":", long_options.data(), &index);
    if (code == -1) break;
    if (code == ':') {
      return absl::InvalidArgumentError(absl::StrCat(Excerpt(argv[previous]), ": missing value"));
    }
    if (code == '?' || code < kFirstFlagCode ||
        code >= kFirstFlagCode + static_cast<int>(Options().size())) {
      return absl::InvalidArgumentError(
          absl::StrCat(Excerpt(argv[previous]), ": unknown flag (see --help)"));
    }
    flags.emplace_back(&Options()[code - kFirstFlagCode], optarg != nullptr ? optarg : "");
  }
  if (optind < argc) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", Excerpt(argv[optind]), "': unexpected argument (flags start with --)"));
  }

  // Layer 1: the configuration file.
  for (const auto& [option, value] : flags) {
    if (option->kind != OptionKind::kConfigFile) continue;
    if (value.empty()) return absl::InvalidArgumentError("--config: empty path");
    if (auto status = CheckText(value, kMaxPathBytes); !status.ok()) return Problem("--config", status);
    if (auto status = LoadConfigFile(value, config); !status.ok()) return status;
    config.config_file = value;
  }

  // Layer 2: the environment (containers).
  for (const Option& option : Options()) {
    if (auto status = ApplyEnvironment(option, config); !status.ok()) return status;
  }

  // Layer 3: flags. A list given on the command line replaces earlier layers'.
  std::vector<bool> list_from_flags(Options().size(), false);
  for (const auto& [option, value] : flags) {
    switch (option->kind) {
      case OptionKind::kConfigFile:
        break;
      case OptionKind::kHelp:
        result.show_help = true;
        break;
      case OptionKind::kVersion:
        result.show_version = true;
        break;
      case OptionKind::kSwitch:
        option->SetBool(config, option->switch_value);
        break;
      default: {
        if (option->IsList()) {
          const size_t row = static_cast<size_t>(option - Options().data());
          if (!list_from_flags[row]) option->ClearList(config);
          list_from_flags[row] = true;
        }
        if (auto status = option->SetFromText(config, value); !status.ok()) {
          return Problem(absl::StrCat("--", Sv(option->flag)), status);
        }
        break;
      }
    }
  }

  if (config.listen.empty()) {
    config.listen.push_back(*io::ParseSocketAddress("127.0.0.1:53", -1));
    config.listen.push_back(*io::ParseSocketAddress("[::1]:53", -1));
  }
  if (config.allow.empty()) config.allow = frontend::DefaultAllowList();
  if (config.upstreams.empty()) {
    config.upstreams.push_back(*ParseUpstream("1.1.1.1#cloudflare-dns.com"));
    config.upstreams.push_back(*ParseUpstream("1.0.0.1#cloudflare-dns.com"));
  }
  if (auto status = ValidateConfig(config); !status.ok()) return status;
  // Local data and lists are read here, on the control thread, at start
  // and at every reload: a bad line refuses the whole configuration.
  config.policy.hosts_file = config.hosts_file;
  if (!config.policy.empty()) {
    auto tables = policy::Tables::Build(config.policy);
    if (!tables.ok()) return tables.status();
    config.policy_tables = *std::move(tables);
  }
  return result;
}

}  // namespace dotproxy::config
