#pragma once
// The proxy's configuration: what to listen on, where to forward, limits.
//
// Built once on the main thread from flags (and later a file), then shared
// read-only by every shard as a `std::shared_ptr<const Config>`.

#include <array>
#include <memory>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "dotproxy/frontend/acl.h"
#include "dotproxy/io/socket.h"
#include "dotproxy/cache/packet_cache.h"
#include "dotproxy/policy/sources.h"
#include "dotproxy/tls/client.h"

namespace dotproxy::policy {
class Tables;  // dotproxy/policy/tables.h
}  // namespace dotproxy::policy

namespace dotproxy::tls {
class ServerContext;
}  // namespace dotproxy::tls

namespace dotproxy::config {

inline constexpr uint16_t kDotPort = 853;  // RFC 7858 §3.1
// A DNS name as text, without the trailing dot (RFC 1035 §2.3.4: 255 octets
// on the wire).
inline constexpr size_t kMaxAuthNameBytes = 253;

using SpkiPin = tls::SpkiPin;

// How queries reach an upstream. kTls is DNS over TLS (RFC 7858), the
// default; kHttps is DNS over HTTPS (RFC 8484: HTTP/2 over the same TLS,
// verification and pins); kTcp and kUdp are plain DNS (RFC 1035, RFC
// 7766), for internal resolvers reached over a network the operator trusts
// (forward zones).
enum class Transport : uint8_t { kTls, kTcp, kUdp, kHttps };
inline constexpr uint16_t kPlainDnsPort = 53;
inline constexpr uint16_t kHttpsPort = 443;
inline constexpr char kDefaultDohPath[] = "/dns-query";  // RFC 8484 §4.1.1's example
// Longest DoH :path accepted.
inline constexpr size_t kMaxDohPathBytes = 256;
// TLS-protected and authenticated (name, pins): DoT and DoH.
inline bool IsEncrypted(Transport transport) {
  return transport == Transport::kTls || transport == Transport::kHttps;
}

struct UpstreamConfig {
  io::SocketAddress address;
  // From the spec's scheme: "tls://" or none is kTls, "tcp://" kTcp,
  // "udp://" kUdp (which falls back to TCP on a TC=1 answer), "https://"
  // kHttps. Plain upstreams carry no name or pins.
  Transport transport = Transport::kTls;
  // kHttps: the request :path (RFC 8484 POST), kDefaultDohPath unless the
  // spec names one.
  std::string doh_path;
  // How the upstream is authenticated, used as is by its TLS sessions:
  // auth_name is SNI and the certificate name check (default: the IP
  // literal, which must then appear as an IP SAN); with pins, some
  // certificate in the chain must carry one of them, on top of CA
  // validation, unless pin_only (REQUIRES: pins not empty).
  tls::PeerPolicy peer;
  // Lower is preferred; upstreams of a worse priority get queries only when
  // every better one is unhealthy or full.
  int priority = 0;
  // As given by the operator, for logs.
  std::string spec;
  // Which of a shard's UpstreamStats this upstream counts in. main assigns
  // it by spec (metrics::UpstreamLabels), so an upstream kept across a
  // reload keeps its counters; unassigned (tests): its position.
  static constexpr size_t kPositionSlot = SIZE_MAX;
  size_t metrics_slot = kPositionSlot;
};

// A forward zone ([[zone]] in the file): queries for `name` and the names
// below it go to `upstreams` (their own pools and health; failover stays
// among them) instead of the default zone's. The longest matching zone wins.
struct ZoneConfig {
  // Normalized (NormalizeZoneName): lower case, no trailing dot, never the
  // root (the root zone is Config::upstreams).
  std::string name;
  std::vector<UpstreamConfig> upstreams;
  // Plain upstreams are always allowed in a non-default zone; the key is
  // accepted so every [[zone]] reads alike.
  bool allow_plaintext = false;
  // false: answers from this zone's upstreams are never cached (every query
  // goes upstream), for internal names that change faster than their TTLs.
  bool cache = true;
  int line = 0;  // of its [[zone]] table, for messages; 0: not from a file
};

// A zone name as the operator wrote it ("Corp.Example.", ".") in the form
// zones are compared in: lower case, no trailing dot, "" for the root.
// Labels of 1..63 letters, digits, '-' or '_'; at most 253 characters.
absl::StatusOr<std::string> NormalizeZoneName(std::string_view name);

// Parses "V4/V6" prefix lengths ("24/56"): IPv4 8..32, IPv6 16..128.
absl::Status ParsePrefixLengths(std::string_view text, int& v4, int& v6);

// Parses a base64 SHA-256 pin (44 characters, as printed by
// tools/spki-pin.sh).
absl::StatusOr<SpkiPin> ParsePin(std::string_view base64);

struct Config {
  std::vector<io::SocketAddress> listen;
  // DNS-over-TLS listeners (RFC 7858), with the server certificate and key
  // and, for mutual TLS, the CA client certificates must come from.
  std::vector<io::SocketAddress> listen_tls;
  // DNS-over-HTTPS listeners (RFC 8484, HTTP/2), same certificate options.
  std::vector<io::SocketAddress> listen_https;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // Built from tls_cert/tls_key/tls_client_ca by main (start) and the reload
  // (control thread), shared read-only by every shard; null without
  // listen_tls and listen_https. A reload whose files do not load keeps the
  // running one.
  std::shared_ptr<const tls::ServerContext> tls_server;
  // IP_FREEBIND on every listener: listen addresses may not exist yet (a
  // link-local service address, NodeLocal DNSCache style).
  bool freebind = false;
  // Sockets passed by the service manager (systemd socket activation; main
  // fills this from control::TakeInheritedListeners before the shards
  // start). When not empty they replace `listen` for both transports (main
  // then sets `listen` to their addresses, for logs only). The descriptors
  // belong to the process for its whole life; a Config built on reload must
  // carry them over unchanged (front ends refuse SetListeners then).
  std::vector<io::InheritedListener> inherited_listeners;
  // The default zone's upstreams (".").
  std::vector<UpstreamConfig> upstreams;
  // Plain (udp://, tcp://) upstreams in the default zone: refused unless
  // true (no silent downgrade of privacy for what leaves for the Internet).
  bool allow_plaintext = false;
  // Forward zones other than the root, in file order; names are unique.
  std::vector<ZoneConfig> zones;
  // Client networks allowed to query; others are dropped without a reply
  // (no reflection). Empty until parsing ends, then the default list.
  std::vector<frontend::Cidr> allow;
  std::string ca_file;  // empty: system CA store
  // I/O engine: "uring", "epoll", or "auto" (io_uring unless this host
  // refuses it, then epoll; main resolves it before the shards start).
  std::string io_backend = "auto";
  // Logging: the lowest severity written, and the line format.
  std::string log_level = "info";
  std::string log_format = "text";
  int threads = 0;      // 0: one per CPU the process may run on
  // Entries for the whole proxy, split across shards; 0 turns the cache off.
  // 8192 entries take about 11 MiB.
  size_t cache_size = 8192;

  std::chrono::milliseconds query_timeout{2000};
  std::chrono::milliseconds tcp_idle_timeout{10000};
  // Upstream connect + handshake budget, and the TCP_USER_TIMEOUT that
  // detects half-open upstream connections.
  std::chrono::milliseconds connect_timeout{3000};
  int max_tcp_clients = 1024;     // per shard
  int max_inflight = 16384;       // forwarded queries in flight, per shard
  int udp_socket_buffer = 4 << 20;  // bytes, SO_RCVBUF/SO_SNDBUF per UDP socket
  uint16_t edns_udp_size = 1232;  // advertised in replies we build (DNS flag day 2020)
  // Largest UDP answer sent, whatever the client advertises (DNS Flag Day
  // 2020): larger ones go TC=1 and the client retries over TCP, so a small
  // spoofed query cannot draw a large answer (amplification).
  int max_udp_size = 1232;
  // A TCP message that stays partly received this long closes its
  // connection (slowloris), however often bytes trickle in.
  std::chrono::milliseconds tcp_message_timeout{3000};

  // Upstream side.
  int max_inflight_per_connection = 100;   // then another connection is opened
  int max_connections_per_upstream = 4;    // per shard
  // Idle upstream connections are closed after this, or just before the
  // upstream's own edns-tcp-keepalive timeout (RFC 7828) when it sends one.
  std::chrono::milliseconds upstream_idle_timeout{8000};
  bool pad_queries = true;            // RFC 8467 block padding to 128 bytes
  bool strip_client_subnet = true;    // drop EDNS client-subnet (RFC 7871) options

  // Per-client rate limit (frontend::RateLimiter): queries per second per
  // client prefix, 0 = off; `rate_limit_burst` queries at once on top (0: as
  // many as the rate); a client is its address cut to `rate_limit_prefix`
  // ("V4/V6" prefix lengths); over the limit over UDP every
  // `rate_limit_slip`-th query gets an empty TC=1 answer (0: all dropped),
  // over TCP REFUSED; `rate_limit_exempt` networks are never limited.
  int rate_limit = 0;
  int rate_limit_burst = 0;
  std::string rate_limit_prefix = "24/56";
  int rate_limit_slip = 2;
  std::vector<frontend::Cidr> rate_limit_exempt;
  // RFC 8482: ANY over UDP gets a synthesized HINFO instead of everything.
  bool minimal_any = true;

  // Cache policy, used as is by each shard's cache; `cache.entries` is set
  // per shard from cache_size, the proxy's total entries.
  cache::CacheConfig cache;

  // The metrics endpoint (/metrics, /health, /ready), served by the control
  // thread's HTTP server; unset: off.
  std::optional<io::SocketAddress> metrics_listen;

  // dnstap (RFC-less, dnstap.info): "unix:PATH" (a Frame Streams reader's
  // socket) or "file:PATH"; empty: off. Which messages are written
  // (dnstap::kMessageWords, comma-joined), and the identity written in
  // each (empty: the host name).
  std::string dnstap;
  std::string dnstap_messages = "client-query,client-response,forwarder-query,forwarder-response";
  std::string dnstap_identity;
  // Local answers and blocklists (policy/): the hosts file (hosts(5)), the
  // [[local]], [[blocklist]] and allowlist entries as written, and the
  // tables ParseCommandLine built from them (null when there are none),
  // shared read-only by the shards and replaced whole on reload.
  std::string hosts_file;
  policy::Sources policy;
  std::shared_ptr<const policy::Tables> policy_tables;

  bool check_config = false;
  std::string config_file;  // where the file part came from, for messages
};

// Reads a TOML configuration file into `config` (fields it does not set
// keep their values). The file must be a regular file of at most
// kMaxConfigFileBytes; a directory, device or FIFO is refused without
// blocking. Errors read "FILE: problem" or "FILE:LINE: problem".
absl::Status LoadConfigFile(const std::string& path, Config& config);

// LoadConfigFile's parsing step: `text` is the file's content, `path` only
// names it in errors. Also the entry point of the config_file fuzz target
// (tests/fuzz), which has no file to read.
absl::Status LoadConfigText(std::string_view text, const std::string& path, Config& config);

// Large enough for any real file (they are a few KB), small enough that
// reading one cannot exhaust memory.
inline constexpr size_t kMaxConfigFileBytes = size_t{16} << 20;

// Parses `[tls://]IP[:PORT][#NAME][^PIN[^PIN...]]` (IPv6 in brackets when a
// port follows), `https://IP[:PORT][/PATH][#NAME][^PIN...]` (DoH: port 443,
// path /dns-query by default), `tcp://IP[:PORT]` and `udp://IP[:PORT]`.
absl::StatusOr<UpstreamConfig> ParseUpstream(std::string_view spec);

// The `IP[:PORT][/PATH]` of an https:// upstream (scheme removed): sets
// `upstream.address` and `upstream.doh_path`.
absl::Status ParseHttpsAddress(std::string_view text, UpstreamConfig& upstream);

// Every upstream of every zone, the default zone's first, then each zone's
// in order (metric slots are assigned over this list).
std::vector<UpstreamConfig*> AllUpstreams(Config& config);
std::vector<const UpstreamConfig*> AllUpstreams(const Config& config);

// Checks what no single value can: every upstream's name and pins, that no
// upstream (same address and TLS name) is configured twice, that the lists
// are not empty, and every range of the option table. ParseCommandLine calls
// it after layering, so --check-config applies it too.
absl::Status ValidateConfig(const Config& config);

// --- The option table -------------------------------------------------------
//
// One row per setting: its flag, TOML key and environment variable, the kind
// of value, the accepted range and the Config field it sets. The flag, the
// environment and the file parsers, UsageText() and ValidateConfig() all read
// this table, so a range or a name is written once. Rows are immutable and
// live for the whole program.
//
//   for (const Option& option : Options()) { ... option.flag ... }

enum class OptionKind {
  kInteger,       // decimal; [min, max]
  kMilliseconds,  // decimal milliseconds; [min, max]
  kSwitch,        // the flag takes no value and stores switch_value; the file
                  // takes true or false
  kPath,          // a non-empty file name
  kChoice,        // one of the words in `choices` ("a|b|c")
  kWordSet,       // some of the words in `choices`: "a,c" on the flag, an array
                  // of strings in the file; stored comma-joined
  kPrefixLengths, // "V4/V6": an IPv4 (8..32) and an IPv6 (16..128) prefix length
  kAddress,       // one "ADDR:PORT" (the port is required)
  kAddressList,   // "ADDR:PORT" items
  kUpstreamList,  // upstream specs (ParseUpstream); the file uses [[upstream]]
  kCidrList,      // "NETWORK/LENGTH" items
  kConfigFile,    // --config FILE (flag only)
  kHelp,          // --help (flag only)
  kVersion,       // --version (flag only)
};

// Where a row's value lands; std::monostate for kConfigFile, kHelp, kVersion.
using OptionField =
    std::variant<std::monostate, int Config::*, size_t Config::*, uint32_t Config::*,
                 std::chrono::milliseconds Config::*, bool Config::*, std::string Config::*,
                 std::optional<io::SocketAddress> Config::*,
                 std::vector<io::SocketAddress> Config::*, std::vector<UpstreamConfig> Config::*,
                 std::vector<frontend::Cidr> Config::*, uint32_t cache::CacheConfig::*>;

struct Option {
  std::string_view flag = {};      // without "--"; every row has one
  std::string_view toml_key = {};  // empty: not accepted in the file
  std::string_view env = {};       // empty: no environment variable
  OptionKind kind = OptionKind::kInteger;
  OptionField field = {};
  int64_t min = 0;  // kInteger, kMilliseconds: accepted values, inclusive
  int64_t max = 0;
  bool switch_value = true;     // kSwitch: what the flag stores
  std::string_view value_name = {};  // for the usage text: "N", "MS", ...
  std::string_view choices = {};     // kChoice: the accepted words, '|'-separated
  // For the usage text; '\n' starts a continuation line. Numeric rows get
  // their default appended from Config{}.
  std::string_view help = {};

  bool IsList() const;
  bool IsNumeric() const { return kind == OptionKind::kInteger || kind == OptionKind::kMilliseconds; }

  // The setters below check the value and store it in `config`. Their errors
  // state the problem only; the caller prefixes the flag, variable or
  // FILE:LINE.

  // REQUIRES: IsNumeric().
  absl::Status SetInteger(Config& config, int64_t value) const;
  // REQUIRES: kind == kSwitch.
  void SetBool(Config& config, bool value) const;
  // Flag and environment syntax: a decimal number (numeric rows), a path
  // (kPath), an address (kAddress), or one item appended to the list (list
  // rows).
  // REQUIRES: kind is numeric, kPath, kChoice, kAddress or a list.
  absl::Status SetFromText(Config& config, std::string_view text) const;
  // REQUIRES: kind == kUpstreamList.
  absl::Status AppendUpstream(Config& config, UpstreamConfig upstream) const;
  // REQUIRES: IsList().
  void ClearList(Config& config) const;
  // REQUIRES: IsNumeric().
  int64_t GetInteger(const Config& config) const;
};

// The rows, in the order the usage text lists them.
absl::Span<const Option> Options();

// The row of a flag (without "--") or a TOML key; nullptr when there is none.
const Option* FindOptionByFlag(std::string_view flag);
const Option* FindOptionByTomlKey(std::string_view key);

// What the command line asked for.
struct CommandLine {
  Config config;
  bool show_help = false;
  bool show_version = false;
};

// Parses argv, layered: defaults < --config FILE < environment
// (DOTPROXY_LISTEN, DOTPROXY_UPSTREAMS: comma-separated, flag syntax) <
// flags, then ValidateConfig(). Errors name the flag, variable or file line,
// and the problem, quoting at most an excerpt of the value.
absl::StatusOr<CommandLine> ParseCommandLine(int argc, char** argv);

// The --help text, generated from Options().
std::string UsageText();

}  // namespace dotproxy::config
