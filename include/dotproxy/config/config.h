#pragma once
// The proxy's configuration: what to listen on, where to forward, limits.
//
// Built once on the main thread from flags (and later a file), then shared
// read-only by every shard as a `std::shared_ptr<const Config>`.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "dotproxy/io/socket.h"

namespace dotproxy::config {

inline constexpr uint16_t kDotPort = 853;  // RFC 7858 §3.1

struct UpstreamConfig {
  io::SocketAddress address;
  // TLS authentication name: SNI and the certificate name check. Defaults to
  // the IP literal, which must then appear as an IP SAN.
  std::string auth_name;
  // As given by the operator, for logs.
  std::string spec;
};

struct Config {
  std::vector<io::SocketAddress> listen;
  std::vector<UpstreamConfig> upstreams;
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

  bool check_config = false;
};

// Parses `IP[:PORT][#NAME]` (IPv6 in brackets when a port follows).
absl::StatusOr<UpstreamConfig> ParseUpstream(std::string_view spec);

// What the command line asked for.
struct CommandLine {
  Config config;
  bool show_help = false;
  bool show_version = false;
};

// Parses argv. Errors name the flag and the problem in one line.
absl::StatusOr<CommandLine> ParseCommandLine(int argc, char** argv);

std::string UsageText();

}  // namespace dotproxy::config
