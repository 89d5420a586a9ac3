#include "dotproxy/config/config.h"

#include <getopt.h>

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/ascii.h"

namespace dotproxy::config {
namespace {

absl::string_view Sv(std::string_view text) { return {text.data(), text.size()}; }

enum Flag : int {
  kConfig = 1000,
  kListen,
  kUpstream,
  kCaFile,
  kThreads,
  kCacheSize,
  kQueryTimeout,
  kTcpIdleTimeout,
  kConnectTimeout,
  kMaxTcpClients,
  kMaxInflight,
  kUdpBuffer,
  kCheckConfig,
  kVersion,
  kHelp,
  kMaxInflightPerConnection,
  kMaxConnectionsPerUpstream,
  kUpstreamIdleTimeout,
  kNoPadding,
  kKeepClientSubnet,
  kCacheMinTtl,
  kCacheMaxTtl,
  kCacheNegativeTtl,
  kCacheServfailTtl,
  kCacheStaleWindow,
  kAllow,
};

const option kOptions[] = {
    {"config", required_argument, nullptr, kConfig},
    {"listen", required_argument, nullptr, kListen},
    {"upstream", required_argument, nullptr, kUpstream},
    {"ca-file", required_argument, nullptr, kCaFile},
    {"threads", required_argument, nullptr, kThreads},
    {"cache-size", required_argument, nullptr, kCacheSize},
    {"query-timeout", required_argument, nullptr, kQueryTimeout},
    {"tcp-idle-timeout", required_argument, nullptr, kTcpIdleTimeout},
    {"connect-timeout", required_argument, nullptr, kConnectTimeout},
    {"max-tcp-clients", required_argument, nullptr, kMaxTcpClients},
    {"max-inflight", required_argument, nullptr, kMaxInflight},
    {"udp-buffer", required_argument, nullptr, kUdpBuffer},
    {"check-config", no_argument, nullptr, kCheckConfig},
    {"version", no_argument, nullptr, kVersion},
    {"help", no_argument, nullptr, kHelp},
    {"max-inflight-per-connection", required_argument, nullptr, kMaxInflightPerConnection},
    {"max-connections-per-upstream", required_argument, nullptr, kMaxConnectionsPerUpstream},
    {"upstream-idle-timeout", required_argument, nullptr, kUpstreamIdleTimeout},
    {"no-padding", no_argument, nullptr, kNoPadding},
    {"keep-client-subnet", no_argument, nullptr, kKeepClientSubnet},
    {"cache-min-ttl", required_argument, nullptr, kCacheMinTtl},
    {"cache-max-ttl", required_argument, nullptr, kCacheMaxTtl},
    {"cache-negative-ttl", required_argument, nullptr, kCacheNegativeTtl},
    {"cache-servfail-ttl", required_argument, nullptr, kCacheServfailTtl},
    {"cache-stale-window", required_argument, nullptr, kCacheStaleWindow},
    {"allow", required_argument, nullptr, kAllow},
    {nullptr, 0, nullptr, 0},
};

absl::Status FlagError(absl::string_view flag, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", problem));
}

// Parses a decimal integer in [min, max] or names the flag in the error.
absl::StatusOr<long long> ParseInteger(absl::string_view flag, std::string_view text, long long min,
                                       long long max) {
  long long value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return FlagError(flag, absl::StrCat("'", Sv(text), "' is not an integer"));
  }
  if (value < min || value > max) {
    return FlagError(flag, absl::StrCat("'", Sv(text), "' is out of range [", min, ", ", max, "]"));
  }
  return value;
}

}  // namespace

absl::StatusOr<SpkiPin> ParsePin(std::string_view base64) {
  std::string decoded;
  if (!absl::Base64Unescape(Sv(base64), &decoded) || decoded.size() != 32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pin '", Sv(base64), "' is not a base64 SHA-256 digest (44 characters, see tools/spki-pin.sh)"));
  }
  SpkiPin pin;
  std::memcpy(pin.data(), decoded.data(), pin.size());
  return pin;
}

absl::StatusOr<UpstreamConfig> ParseUpstream(std::string_view spec) {
  UpstreamConfig upstream;
  // Logs name the upstream without its pins.
  upstream.spec = std::string(spec.substr(0, spec.find('^')));
  std::string_view rest = spec;
  // Pins: everything after the first '^', separated by '^'.
  const size_t caret = rest.find('^');
  if (caret != std::string_view::npos) {
    std::string_view pins = rest.substr(caret + 1);
    rest = rest.substr(0, caret);
    while (true) {
      const size_t next = pins.find('^');
      auto pin = ParsePin(pins.substr(0, next));
      if (!pin.ok()) return absl::InvalidArgumentError(absl::StrCat("'", Sv(spec), "': ", pin.status().message()));
      upstream.pins.push_back(*pin);
      if (next == std::string_view::npos) break;
      pins = pins.substr(next + 1);
    }
  }
  std::string_view address_text = rest;
  const size_t hash = rest.find('#');
  if (hash != std::string_view::npos) {
    address_text = rest.substr(0, hash);
    upstream.auth_name = std::string(rest.substr(hash + 1));
    if (upstream.auth_name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("'", Sv(spec), "': empty name after '#'"));
    }
    if (upstream.auth_name.size() > 253) {
      return absl::InvalidArgumentError(absl::StrCat("'", Sv(spec), "': name longer than 253 bytes"));
    }
  }
  auto address = io::ParseSocketAddress(address_text, kDotPort);
  if (!address.ok()) return address.status();
  upstream.address = *address;
  if (upstream.auth_name.empty()) upstream.auth_name = upstream.address.HostString();
  return upstream;
}

std::string UsageText() {
  return R"(Usage: dotproxy [flags]
A forwarding DNS proxy: plain DNS (UDP, TCP) in, DNS over TLS out.
Environment: DOTPROXY_LISTEN and DOTPROXY_UPSTREAMS (comma-separated, flag
syntax) override the configuration file; flags override both.

  --config FILE            TOML configuration file (see systemd/dotproxy.toml);
                           flags override it
  --listen ADDR:PORT       UDP and TCP listen address, e.g. 127.0.0.1:53 or [::1]:53;
                           repeatable (default: 127.0.0.1:53 and [::1]:53)
  --upstream IP[:PORT][#NAME][^PIN]...
                           DNS-over-TLS upstream; PORT defaults to 853; NAME is the
                           TLS authentication name (SNI and certificate check),
                           defaulting to the IP (IP SAN); PIN a base64 SHA-256
                           SPKI pin (tools/spki-pin.sh), repeatable with '^';
                           repeatable (default: 1.1.1.1#cloudflare-dns.com,
                           1.0.0.1#cloudflare-dns.com)
  --ca-file PEM            trust anchors (default: the system CA store)
  --threads N              shards, one thread each (default: usable CPUs)
  --cache-size N           cache entries for the whole proxy, split across shards
                           (default 0 = off)
  --cache-min-ttl S        cached answers live at least S seconds (0)
  --cache-max-ttl S        and at most S seconds (86400)
  --cache-negative-ttl S   cap for NXDOMAIN/NODATA (SOA minimum, RFC 2308) (3600)
  --cache-servfail-ttl S   upstream SERVFAIL answers are cached this long (5)
  --cache-stale-window S   expired answers may be served this long after expiry
                           when upstreams fail, with TTL 30 (RFC 8767) (86400)
  --query-timeout MS       deadline of a forwarded query before SERVFAIL (2000)
  --tcp-idle-timeout MS    idle client TCP connections are closed after (10000)
  --connect-timeout MS     upstream connect+handshake budget; TCP_USER_TIMEOUT (3000)
  --max-tcp-clients N      client TCP connections per shard (1024)
  --max-inflight N         forwarded queries in flight per shard (16384)
  --udp-buffer BYTES       UDP socket receive/send buffer (4194304)
  --max-inflight-per-connection N
                           queries in flight on one upstream connection (100)
  --max-connections-per-upstream N
                           upstream connections per shard and upstream (4)
  --upstream-idle-timeout MS
                           close idle upstream connections after (8000, or just
                           before the upstream's edns-tcp-keepalive timeout)
  --no-padding             do not pad upstream queries (RFC 8467)
  --keep-client-subnet     forward EDNS client-subnet options (stripped by default)
  --allow CIDR             client network allowed to query; repeatable (default:
                           loopback and private ranges); others get no reply
  --check-config           validate the configuration and exit
  --version                print the version and exit
  --help                   print this text and exit
)";
}

namespace {

// Splits a comma-separated environment value; empty items are errors.
absl::Status ApplyEnvironmentList(const char* variable,
                                  const std::function<absl::Status(std::string_view)>& apply) {
  const char* value = std::getenv(variable);
  if (value == nullptr) return absl::OkStatus();
  for (absl::string_view item : absl::StrSplit(value, ',')) {
    item = absl::StripAsciiWhitespace(item);
    if (item.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(variable, ": empty item in '", value, "'"));
    }
    if (auto status = apply(std::string_view(item.data(), item.size())); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(variable, ": ", status.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CommandLine> ParseCommandLine(int argc, char** argv) {
  CommandLine result;
  Config& config = result.config;

  // Pass 1: read every flag so the layers can be applied in order.
  std::vector<std::pair<int, std::string>> flags;
  optind = 1;
  opterr = 0;  // we print our own one-line errors
  int index = 0;
  while (true) {
    const int previous = optind;
    const int flag = getopt_long(argc, argv, ":", kOptions, &index);
    if (flag == -1) break;
    if (flag == ':') {
      return absl::InvalidArgumentError(absl::StrCat(argv[previous], ": missing value"));
    }
    if (flag == '?' || flag < kConfig) {
      return absl::InvalidArgumentError(
          absl::StrCat(argv[previous], ": unknown flag (see --help)"));
    }
    flags.emplace_back(flag, optarg != nullptr ? optarg : "");
  }
  if (optind < argc) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", argv[optind], "': unexpected argument (flags start with --)"));
  }

  // Layer 1: the configuration file.
  for (const auto& [flag, value] : flags) {
    if (flag != kConfig) continue;
    if (value.empty()) return FlagError("config", "empty path");
    if (auto status = LoadConfigFile(value, config); !status.ok()) return status;
    config.config_file = value;
  }

  // Layer 2: the environment (containers).
  std::vector<io::SocketAddress> env_listen;
  if (auto status = ApplyEnvironmentList("DOTPROXY_LISTEN", [&](std::string_view item) -> absl::Status {
        auto address = io::ParseSocketAddress(item, -1);
        if (!address.ok()) return address.status();
        env_listen.push_back(*address);
        return absl::OkStatus();
      });
      !status.ok()) {
    return status;
  }
  if (!env_listen.empty()) config.listen = env_listen;
  std::vector<UpstreamConfig> env_upstreams;
  if (auto status = ApplyEnvironmentList("DOTPROXY_UPSTREAMS", [&](std::string_view item) -> absl::Status {
        auto upstream = ParseUpstream(item);
        if (!upstream.ok()) return upstream.status();
        env_upstreams.push_back(*std::move(upstream));
        return absl::OkStatus();
      });
      !status.ok()) {
    return status;
  }
  if (!env_upstreams.empty()) config.upstreams = env_upstreams;

  // Layer 3: flags. Lists given on the command line replace earlier layers'.
  bool listen_from_flags = false;
  bool allow_from_flags = false;
  bool upstreams_from_flags = false;
  for (const auto& [flag, text] : flags) {
    const std::string_view value = text;
    switch (flag) {
      case kConfig:
        break;
      case kListen: {
        auto address = io::ParseSocketAddress(value, -1);
        if (!address.ok()) return FlagError("listen", address.status().message());
        if (!listen_from_flags) config.listen.clear();
        listen_from_flags = true;
        config.listen.push_back(*address);
        break;
      }
      case kUpstream: {
        auto upstream = ParseUpstream(value);
        if (!upstream.ok()) return FlagError("upstream", upstream.status().message());
        if (!upstreams_from_flags) config.upstreams.clear();
        upstreams_from_flags = true;
        config.upstreams.push_back(*std::move(upstream));
        break;
      }
      case kAllow: {
        auto cidr = io::ParseCidr(value);
        if (!cidr.ok()) return FlagError("allow", cidr.status().message());
        if (!allow_from_flags) config.allow.clear();
        allow_from_flags = true;
        config.allow.push_back(*cidr);
        break;
      }
      case kCaFile:
        if (value.empty()) return FlagError("ca-file", "empty path");
        config.ca_file = std::string(value);
        break;
      case kThreads: {
        auto n = ParseInteger("threads", value, 1, 1024);
        if (!n.ok()) return n.status();
        config.threads = static_cast<int>(*n);
        break;
      }
      case kCacheSize: {
        auto n = ParseInteger("cache-size", value, 0, 1LL << 32);
        if (!n.ok()) return n.status();
        config.cache_size = static_cast<size_t>(*n);
        break;
      }
      case kQueryTimeout: {
        auto n = ParseInteger("query-timeout", value, 10, 60000);
        if (!n.ok()) return n.status();
        config.query_timeout = std::chrono::milliseconds(*n);
        break;
      }
      case kTcpIdleTimeout: {
        auto n = ParseInteger("tcp-idle-timeout", value, 100, 3600000);
        if (!n.ok()) return n.status();
        config.tcp_idle_timeout = std::chrono::milliseconds(*n);
        break;
      }
      case kConnectTimeout: {
        auto n = ParseInteger("connect-timeout", value, 100, 60000);
        if (!n.ok()) return n.status();
        config.connect_timeout = std::chrono::milliseconds(*n);
        break;
      }
      case kMaxTcpClients: {
        auto n = ParseInteger("max-tcp-clients", value, 1, 65536);
        if (!n.ok()) return n.status();
        config.max_tcp_clients = static_cast<int>(*n);
        break;
      }
      case kMaxInflight: {
        auto n = ParseInteger("max-inflight", value, 16, 1 << 20);
        if (!n.ok()) return n.status();
        config.max_inflight = static_cast<int>(*n);
        break;
      }
      case kUdpBuffer: {
        auto n = ParseInteger("udp-buffer", value, 0, 1 << 30);
        if (!n.ok()) return n.status();
        config.udp_socket_buffer = static_cast<int>(*n);
        break;
      }
      case kMaxInflightPerConnection: {
        auto n = ParseInteger("max-inflight-per-connection", value, 1, 65535);
        if (!n.ok()) return n.status();
        config.max_inflight_per_connection = static_cast<int>(*n);
        break;
      }
      case kMaxConnectionsPerUpstream: {
        auto n = ParseInteger("max-connections-per-upstream", value, 1, 64);
        if (!n.ok()) return n.status();
        config.max_connections_per_upstream = static_cast<int>(*n);
        break;
      }
      case kUpstreamIdleTimeout: {
        auto n = ParseInteger("upstream-idle-timeout", value, 100, 3600000);
        if (!n.ok()) return n.status();
        config.upstream_idle_timeout = std::chrono::milliseconds(*n);
        break;
      }
      case kNoPadding:
        config.pad_queries = false;
        break;
      case kCacheMinTtl:
      case kCacheMaxTtl:
      case kCacheNegativeTtl:
      case kCacheServfailTtl:
      case kCacheStaleWindow: {
        const char* name = flag == kCacheMinTtl        ? "cache-min-ttl"
                           : flag == kCacheMaxTtl      ? "cache-max-ttl"
                           : flag == kCacheNegativeTtl ? "cache-negative-ttl"
                           : flag == kCacheServfailTtl ? "cache-servfail-ttl"
                                                       : "cache-stale-window";
        auto n = ParseInteger(name, value, 0, 7 * 86400);
        if (!n.ok()) return n.status();
        const uint32_t seconds = static_cast<uint32_t>(*n);
        if (flag == kCacheMinTtl) config.cache_min_ttl = seconds;
        if (flag == kCacheMaxTtl) config.cache_max_ttl = seconds;
        if (flag == kCacheNegativeTtl) config.cache_negative_max_ttl = seconds;
        if (flag == kCacheServfailTtl) config.cache_servfail_ttl = seconds;
        if (flag == kCacheStaleWindow) config.cache_stale_window = seconds;
        break;
      }
      case kKeepClientSubnet:
        config.strip_client_subnet = false;
        break;
      case kCheckConfig:
        config.check_config = true;
        break;
      case kVersion:
        result.show_version = true;
        break;
      case kHelp:
        result.show_help = true;
        break;
    }
  }

  if (config.listen.empty()) {
    config.listen.push_back(*io::ParseSocketAddress("127.0.0.1:53", -1));
    config.listen.push_back(*io::ParseSocketAddress("[::1]:53", -1));
  }
  if (config.allow.empty()) config.allow = io::DefaultAllowList();
  if (config.upstreams.empty()) {
    config.upstreams.push_back(*ParseUpstream("1.1.1.1#cloudflare-dns.com"));
    config.upstreams.push_back(*ParseUpstream("1.0.0.1#cloudflare-dns.com"));
  }
  return result;
}

}  // namespace dotproxy::config
