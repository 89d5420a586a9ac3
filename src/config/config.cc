#include "dotproxy/config/config.h"

#include <getopt.h>

#include <charconv>
#include <cstdlib>

#include "absl/strings/str_cat.h"

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

absl::StatusOr<UpstreamConfig> ParseUpstream(std::string_view spec) {
  UpstreamConfig upstream;
  upstream.spec = std::string(spec);
  std::string_view address_text = spec;
  const size_t hash = spec.find('#');
  if (hash != std::string_view::npos) {
    address_text = spec.substr(0, hash);
    upstream.auth_name = std::string(spec.substr(hash + 1));
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

  --config FILE            configuration file (not yet supported)
  --listen ADDR:PORT       UDP and TCP listen address, e.g. 127.0.0.1:53 or [::1]:53;
                           repeatable (default: 127.0.0.1:53 and [::1]:53)
  --upstream IP[:PORT][#NAME]
                           DNS-over-TLS upstream; PORT defaults to 853; NAME is the
                           TLS authentication name (SNI and certificate check),
                           defaulting to the IP (IP SAN); repeatable (default:
                           1.1.1.1#cloudflare-dns.com, 1.0.0.1#cloudflare-dns.com)
  --ca-file PEM            trust anchors (default: the system CA store)
  --threads N              shards, one thread each (default: usable CPUs)
  --cache-size N           cache entries (0 = off; accepted, cache not built yet)
  --query-timeout MS       deadline of a forwarded query before SERVFAIL (2000)
  --tcp-idle-timeout MS    idle client TCP connections are closed after (10000)
  --connect-timeout MS     upstream connect+handshake budget; TCP_USER_TIMEOUT (3000)
  --max-tcp-clients N      client TCP connections per shard (1024)
  --max-inflight N         forwarded queries in flight per shard (16384)
  --udp-buffer BYTES       UDP socket receive/send buffer (4194304)
  --check-config           validate the configuration and exit
  --version                print the version and exit
  --help                   print this text and exit
)";
}

absl::StatusOr<CommandLine> ParseCommandLine(int argc, char** argv) {
  CommandLine result;
  Config& config = result.config;
  optind = 1;
  opterr = 0;  // we print our own one-line errors
  int index = 0;
  while (true) {
    const int previous = optind;
    const int flag = getopt_long(argc, argv, ":", kOptions, &index);
    if (flag == -1) break;
    const std::string_view value = optarg != nullptr ? optarg : "";
    switch (flag) {
      case kConfig:
        return FlagError("config", "configuration files are not supported yet; use flags");
      case kListen: {
        auto address = io::ParseSocketAddress(value, -1);
        if (!address.ok()) return FlagError("listen", address.status().message());
        config.listen.push_back(*address);
        break;
      }
      case kUpstream: {
        auto upstream = ParseUpstream(value);
        if (!upstream.ok()) return FlagError("upstream", upstream.status().message());
        config.upstreams.push_back(*std::move(upstream));
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
      case kCheckConfig:
        config.check_config = true;
        break;
      case kVersion:
        result.show_version = true;
        break;
      case kHelp:
        result.show_help = true;
        break;
      case ':':
        return absl::InvalidArgumentError(
            absl::StrCat(argv[previous], ": missing value"));
      default:
        return absl::InvalidArgumentError(
            absl::StrCat(argv[previous], ": unknown flag (see --help)"));
    }
  }
  if (optind < argc) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", argv[optind], "': unexpected argument (flags start with --)"));
  }

  if (config.listen.empty()) {
    config.listen.push_back(*io::ParseSocketAddress("127.0.0.1:53", -1));
    config.listen.push_back(*io::ParseSocketAddress("[::1]:53", -1));
  }
  if (config.upstreams.empty()) {
    config.upstreams.push_back(*ParseUpstream("1.1.1.1#cloudflare-dns.com"));
    config.upstreams.push_back(*ParseUpstream("1.0.0.1#cloudflare-dns.com"));
  }
  return result;
}

}  // namespace dotproxy::config
