#pragma once
// The proxy's configuration: what to listen on, where to forward, limits.
//
// Built once on the main thread from flags (and later a file), then shared
// read-only by every shard as a `std::shared_ptr<const Config>`.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "dotproxy/io/acl.h"
#include "dotproxy/io/socket.h"

namespace dotproxy::config {

inline constexpr uint16_t kDotPort = 853;  // RFC 7858 §3.1

// SHA-256 of a certificate's DER SubjectPublicKeyInfo (RFC 7858 §4.2).
using SpkiPin = std::array<uint8_t, 32>;

struct UpstreamConfig {
  io::SocketAddress address;
  // TLS authentication name: SNI and the certificate name check. Defaults to
  // the IP literal, which must then appear as an IP SAN.
  std::string auth_name;
  // With pins, some certificate in the upstream's chain must carry one of
  // them, on top of CA validation ...
  std::vector<SpkiPin> pins;
  // ... unless the operator chose pin-only authentication (no CA check, no
  // name check; the pin alone authenticates). REQUIRES: pins not empty.
  bool pin_only = false;
  // Lower is preferred; upstreams of a worse priority get queries only when
  // every better one is unhealthy or full.
  int priority = 0;
  // As given by the operator, for logs.
  std::string spec;
};

// Parses a base64 SHA-256 pin (44 characters, as printed by
// tools/spki-pin.sh).
absl::StatusOr<SpkiPin> ParsePin(std::string_view base64);

struct Config {
  std::vector<io::SocketAddress> listen;
  std::vector<UpstreamConfig> upstreams;
  // Client networks allowed to query; others are dropped without a reply
  // (no reflection). Empty until parsing ends, then the default list.
  std::vector<io::Cidr> allow;
  std::string ca_file;  // empty: system CA store
  int threads = 0;      // 0: one per CPU the process may run on
  size_t cache_size = 0;

  std::chrono::milliseconds query_timeout{2000};
  std::chrono::milliseconds tcp_idle_timeout{10000};
  // Upstream connect + handshake budget, and the TCP_USER_TIMEOUT that
  // detects half-open upstream connections.
  std::chrono::milliseconds connect_timeout{3000};
  int max_tcp_clients = 1024;     // per shard
  int max_inflight = 16384;       // forwarded queries in flight, per shard
  int udp_socket_buffer = 4 << 20;  // bytes, SO_RCVBUF/SO_SNDBUF per UDP socket
  uint16_t edns_udp_size = 1232;  // advertised in replies we build (DNS flag day 2020)

  // Upstream side.
  int max_inflight_per_connection = 100;   // then another connection is opened
  int max_connections_per_upstream = 4;    // per shard
  // Idle upstream connections are closed after this, or just before the
  // upstream's own edns-tcp-keepalive timeout (RFC 7828) when it sends one.
  std::chrono::milliseconds upstream_idle_timeout{8000};
  bool pad_queries = true;            // RFC 8467 block padding to 128 bytes
  bool strip_client_subnet = true;    // drop EDNS client-subnet (RFC 7871) options

  // Cache policy (seconds). --cache-size is the proxy's total entries.
  uint32_t cache_min_ttl = 0;
  uint32_t cache_max_ttl = 86400;
  uint32_t cache_negative_max_ttl = 3600;
  uint32_t cache_servfail_ttl = 5;
  uint32_t cache_stale_window = 86400;  // 0 disables serve-stale

  bool check_config = false;
  std::string config_file;  // where the file part came from, for messages
};

// Reads a TOML configuration file into `config` (fields it does not set
// keep their values). Errors read "FILE:LINE: problem".
absl::Status LoadConfigFile(const std::string& path, Config& config);

// Parses `IP[:PORT][#NAME][^PIN[,PIN...]]` (IPv6 in brackets when a port
// follows).
absl::StatusOr<UpstreamConfig> ParseUpstream(std::string_view spec);

// What the command line asked for.
struct CommandLine {
  Config config;
  bool show_help = false;
  bool show_version = false;
};

// Parses argv, layered: defaults < --config FILE < environment
// (DOTPROXY_LISTEN, DOTPROXY_UPSTREAMS: comma-separated, flag syntax) <
// flags. Errors name the flag, variable or file line, and the problem.
absl::StatusOr<CommandLine> ParseCommandLine(int argc, char** argv);

std::string UsageText();

}  // namespace dotproxy::config
