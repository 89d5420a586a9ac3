// The option table: one row per setting (see config.h). Flags, the
// environment, the file parser, the usage text and ValidateConfig read it.

#include "dotproxy/config/config.h"

namespace dotproxy::config {
namespace {

// Seven days: longer TTL knobs are mistakes, not policy.
constexpr int64_t kMaxTtlSeconds = 7 * 86400;

// The table. Order is the usage text's order. Numeric rows get "(default)"
// appended to their help from Config{}, so defaults are not written here.
constexpr Option kOptions[] = {
    {.flag = "config", .kind = OptionKind::kConfigFile, .value_name = "FILE",
     .help = "TOML configuration file (see systemd/dotproxy.toml);\n"
             "the environment and flags override it"},
    {.flag = "listen", .toml_key = "listen", .env = "DOTPROXY_LISTEN",
     .kind = OptionKind::kAddressList, .field = &Config::listen, .value_name = "ADDR:PORT",
     .help = "UDP and TCP listen address, e.g. 127.0.0.1:53 or [::1]:53;\n"
             "repeatable (default: 127.0.0.1:53 and [::1]:53)"},
    {.flag = "listen-tls", .toml_key = "listen_tls", .kind = OptionKind::kAddressList,
     .field = &Config::listen_tls, .value_name = "ADDR:PORT",
     .help = "DNS-over-TLS listen address (RFC 7858, ALPN \"dot\"), e.g.\n"
             "127.0.0.1:853; repeatable; needs --tls-cert and --tls-key"},
    {.flag = "listen-https", .toml_key = "listen_https", .kind = OptionKind::kAddressList,
     .field = &Config::listen_https, .value_name = "ADDR:PORT",
     .help = "DNS-over-HTTPS listen address (RFC 8484: HTTP/2, ALPN \"h2\",\n"
             "GET ?dns= and POST on /dns-query), e.g. 127.0.0.1:443;\n"
             "repeatable; needs --tls-cert and --tls-key"},
    {.flag = "tls-cert", .toml_key = "tls_cert", .kind = OptionKind::kPath,
     .field = &Config::tls_cert, .value_name = "PEM",
     .help = "certificate chain of the TLS listeners, leaf first\n"
             "(reloaded on SIGHUP)"},
    {.flag = "tls-key", .toml_key = "tls_key", .kind = OptionKind::kPath,
     .field = &Config::tls_key, .value_name = "PEM",
     .help = "private key of --tls-cert (reloaded on SIGHUP)"},
    {.flag = "tls-client-ca", .toml_key = "tls_client_ca", .kind = OptionKind::kPath,
     .field = &Config::tls_client_ca, .value_name = "PEM",
     .help = "mutual TLS: TLS clients must present a certificate from\n"
             "this CA, others are refused at the handshake"},
    // A switch: no variable (switches have no variable syntax).
    {.flag = "freebind", .toml_key = "freebind", .kind = OptionKind::kSwitch,
     .field = &Config::freebind,
     .help = "bind listen addresses this host does not have (yet):\n"
             "IP_FREEBIND, e.g. a link-local 169.254.20.10 added later"},
    {.flag = "upstream", .toml_key = "upstream", .env = "DOTPROXY_UPSTREAMS",
     .kind = OptionKind::kUpstreamList, .field = &Config::upstreams,
     .value_name = "IP[:PORT][#NAME][^PIN]...",
     .help = "DNS-over-TLS upstream; PORT defaults to 853; NAME is the\n"
             "TLS authentication name (SNI and certificate check),\n"
             "defaulting to the IP (IP SAN); PIN a base64 SHA-256\n"
             "SPKI pin (tools/spki-pin.sh), repeatable with '^';\n"
             "repeatable (default: 1.1.1.1#cloudflare-dns.com,\n"
             "1.0.0.1#cloudflare-dns.com); https://IP[:PORT][/PATH]\n"
             "[#NAME][^PIN] for DNS over HTTPS (port 443, /dns-query);\n"
             "udp:// and tcp:// for plain DNS (--allow-plaintext)"},
    {.flag = "ca-file", .toml_key = "ca_file", .kind = OptionKind::kPath, .field = &Config::ca_file,
     .value_name = "PEM", .help = "trust anchors (default: the system CA store)"},
    {.flag = "hosts-file", .toml_key = "hosts_file", .kind = OptionKind::kPath,
     .field = &Config::hosts_file, .value_name = "FILE",
     .help = "answer the names of this hosts(5) file locally (A, AAAA\n"
             "and the matching PTR), before the cache"},
    {.flag = "io-backend", .toml_key = "io_backend", .env = "DOTPROXY_IO_BACKEND",
     .kind = OptionKind::kChoice, .field = &Config::io_backend, .value_name = "auto|uring|epoll",
     .choices = "auto|uring|epoll",
     .help = "I/O engine (default auto: io_uring, or epoll where io_uring is\n"
             "refused, e.g. by a container's seccomp profile)"},
    {.flag = "log-level", .toml_key = "log_level", .env = "DOTPROXY_LOG_LEVEL",
     .kind = OptionKind::kChoice, .field = &Config::log_level,
     .value_name = "debug|info|warning|error", .choices = "debug|info|warning|error",
     .help = "lowest severity logged (default info)"},
    {.flag = "log-format", .toml_key = "log_format", .env = "DOTPROXY_LOG_FORMAT",
     .kind = OptionKind::kChoice, .field = &Config::log_format, .value_name = "text|json",
     .choices = "text|json",
     .help = "log lines as text or one JSON object each (default text; under\n"
             "systemd lines carry the journal's priority)"},
    {.flag = "threads", .toml_key = "threads", .kind = OptionKind::kInteger,
     .field = &Config::threads, .min = 0, .max = 256, .value_name = "N",
     .help = "shards, one thread each, or 0 for one per usable CPU"},
    // The bound is what a machine can hold (a few hundred bytes an entry);
    // whether this one can is checked against its memory elsewhere.
    {.flag = "cache-size", .toml_key = "cache_size", .kind = OptionKind::kInteger,
     .field = &Config::cache_size, .min = 0, .max = 16777216, .value_name = "N",
     .help = "cache entries for the whole proxy, split across shards;\n"
             "0 turns the cache off"},
    {.flag = "cache-min-ttl", .toml_key = "cache_min_ttl", .kind = OptionKind::kInteger,
     .field = &cache::CacheConfig::min_ttl, .min = 0, .max = kMaxTtlSeconds, .value_name = "S",
     .help = "cached answers live at least S seconds"},
    {.flag = "cache-max-ttl", .toml_key = "cache_max_ttl", .kind = OptionKind::kInteger,
     .field = &cache::CacheConfig::max_ttl, .min = 0, .max = kMaxTtlSeconds, .value_name = "S",
     .help = "and at most S seconds"},
    {.flag = "cache-negative-ttl", .toml_key = "cache_negative_ttl", .kind = OptionKind::kInteger,
     .field = &cache::CacheConfig::negative_max_ttl, .min = 0, .max = kMaxTtlSeconds, .value_name = "S",
     .help = "cap for NXDOMAIN/NODATA (SOA minimum, RFC 2308)"},
    {.flag = "cache-servfail-ttl", .toml_key = "cache_servfail_ttl", .kind = OptionKind::kInteger,
     .field = &cache::CacheConfig::servfail_ttl, .min = 0, .max = kMaxTtlSeconds, .value_name = "S",
     .help = "upstream SERVFAIL answers are cached this long"},
    {.flag = "cache-stale-window", .toml_key = "cache_stale_window", .kind = OptionKind::kInteger,
     .field = &cache::CacheConfig::stale_window, .min = 0, .max = kMaxTtlSeconds, .value_name = "S",
     .help = "expired answers may be served this long after expiry\n"
             "when upstreams fail, with TTL 30 (RFC 8767); 0: off"},
    {.flag = "query-timeout", .toml_key = "query_timeout_ms", .kind = OptionKind::kMilliseconds,
     .field = &Config::query_timeout, .min = 10, .max = 60000, .value_name = "MS",
     .help = "deadline of a forwarded query before SERVFAIL"},
    {.flag = "tcp-idle-timeout", .toml_key = "tcp_idle_timeout_ms", .kind = OptionKind::kMilliseconds,
     .field = &Config::tcp_idle_timeout, .min = 100, .max = 3600000, .value_name = "MS",
     .help = "idle client TCP connections are closed after"},
    {.flag = "tcp-message-timeout", .toml_key = "tcp_message_timeout_ms",
     .kind = OptionKind::kMilliseconds, .field = &Config::tcp_message_timeout, .min = 100,
     .max = 3600000, .value_name = "MS",
     .help = "a client TCP message still incomplete after this closes\n"
             "its connection (slowloris), whatever the idle timeout"},
    {.flag = "connect-timeout", .toml_key = "connect_timeout_ms", .kind = OptionKind::kMilliseconds,
     .field = &Config::connect_timeout, .min = 100, .max = 60000, .value_name = "MS",
     .help = "upstream connect+handshake budget; TCP_USER_TIMEOUT"},
    {.flag = "max-tcp-clients", .toml_key = "max_tcp_clients", .kind = OptionKind::kInteger,
     .field = &Config::max_tcp_clients, .min = 1, .max = 65536, .value_name = "N",
     .help = "client TCP connections per shard"},
    {.flag = "max-inflight", .toml_key = "max_inflight", .kind = OptionKind::kInteger,
     .field = &Config::max_inflight, .min = 16, .max = 1 << 20, .value_name = "N",
     .help = "forwarded queries in flight per shard"},
    {.flag = "udp-buffer", .toml_key = "udp_buffer", .kind = OptionKind::kInteger,
     .field = &Config::udp_socket_buffer, .min = 0, .max = 1 << 30, .value_name = "BYTES",
     .help = "UDP socket receive/send buffer"},
    {.flag = "max-udp-size", .toml_key = "max_udp_size", .kind = OptionKind::kInteger,
     .field = &Config::max_udp_size, .min = 512, .max = 4096, .value_name = "BYTES",
     .help = "largest UDP answer, whatever the client's EDNS size;\n"
             "larger ones go TC=1 (over TCP)"},
    {.flag = "max-inflight-per-connection", .toml_key = "max_inflight_per_connection",
     .kind = OptionKind::kInteger, .field = &Config::max_inflight_per_connection, .min = 1,
     .max = 65535, .value_name = "N", .help = "queries in flight on one upstream connection"},
    {.flag = "max-connections-per-upstream", .toml_key = "max_connections_per_upstream",
     .kind = OptionKind::kInteger, .field = &Config::max_connections_per_upstream, .min = 1,
     .max = 64, .value_name = "N", .help = "upstream connections per shard and upstream"},
    {.flag = "upstream-idle-timeout", .toml_key = "upstream_idle_timeout_ms",
     .kind = OptionKind::kMilliseconds, .field = &Config::upstream_idle_timeout, .min = 100,
     .max = 3600000, .value_name = "MS",
     .help = "close idle upstream connections after this, or just\n"
             "before the upstream's edns-tcp-keepalive timeout"},
    {.flag = "no-padding", .toml_key = "padding", .kind = OptionKind::kSwitch,
     .field = &Config::pad_queries, .switch_value = false,
     .help = "do not pad upstream queries (RFC 8467)"},
    {.flag = "keep-client-subnet", .toml_key = "strip_client_subnet", .kind = OptionKind::kSwitch,
     .field = &Config::strip_client_subnet, .switch_value = false,
     .help = "forward EDNS client-subnet options (stripped by default)"},
    {.flag = "allow-plaintext", .toml_key = "allow_plaintext", .kind = OptionKind::kSwitch,
     .field = &Config::allow_plaintext, .switch_value = true,
     .help = "let plain DNS upstreams (udp://, tcp://) serve the\n"
             "default zone (refused without it: no silent downgrade;\n"
             "forward zones may always use them)"},
    {.flag = "allow", .toml_key = "allow", .kind = OptionKind::kCidrList, .field = &Config::allow,
     .value_name = "CIDR",
     .help = "client network allowed to query; repeatable (default:\n"
             "loopback and private ranges); others get no reply"},
    {.flag = "rate-limit", .toml_key = "rate_limit", .kind = OptionKind::kInteger,
     .field = &Config::rate_limit, .min = 0, .max = 10000000, .value_name = "QPS",
     .help = "queries per second per client prefix (0: no limit)"},
    {.flag = "rate-limit-burst", .toml_key = "rate_limit_burst", .kind = OptionKind::kInteger,
     .field = &Config::rate_limit_burst, .min = 0, .max = 10000000, .value_name = "N",
     .help = "queries a client may send at once on top of the rate\n"
             "(0: as many as --rate-limit)"},
    {.flag = "rate-limit-prefix", .toml_key = "rate_limit_prefix",
     .kind = OptionKind::kPrefixLengths, .field = &Config::rate_limit_prefix,
     .value_name = "V4/V6",
     .help = "a client is its address cut to these prefix lengths\n"
             "(default 24/56)"},
    {.flag = "rate-limit-slip", .toml_key = "rate_limit_slip", .kind = OptionKind::kInteger,
     .field = &Config::rate_limit_slip, .min = 0, .max = 100, .value_name = "N",
     .help = "over the limit over UDP, every Nth query gets an empty\n"
             "TC=1 answer (retry over TCP), the rest are dropped; 0: drop all"},
    {.flag = "rate-limit-exempt", .toml_key = "rate_limit_exempt", .kind = OptionKind::kCidrList,
     .field = &Config::rate_limit_exempt, .value_name = "CIDR",
     .help = "client network never rate-limited; repeatable"},
    {.flag = "no-minimal-any", .toml_key = "minimal_any", .kind = OptionKind::kSwitch,
     .field = &Config::minimal_any, .switch_value = false,
     .help = "forward ANY over UDP (default: answer it with a\n"
             "synthesized HINFO, RFC 8482)"},
    {.flag = "metrics", .toml_key = "metrics_listen", .env = "DOTPROXY_METRICS",
     .kind = OptionKind::kAddress, .field = &Config::metrics_listen, .value_name = "ADDR:PORT",
     .help = "serve Prometheus /metrics, /health and /ready over HTTP,\n"
             "e.g. 127.0.0.1:9153 (default: off)"},
    {.flag = "dnstap", .toml_key = "dnstap", .kind = OptionKind::kPath, .field = &Config::dnstap,
     .value_name = "unix:PATH|file:PATH",
     .help = "write dnstap (Frame Streams) to a reader's Unix socket,\n"
             "e.g. fstrm_capture's, or to a file (default: off)"},
    {.flag = "dnstap-messages", .toml_key = "dnstap_messages", .kind = OptionKind::kWordSet,
     .field = &Config::dnstap_messages, .value_name = "TYPE,...",
     .choices = "client-query|client-response|forwarder-query|forwarder-response",
     .help = "dnstap message types written, comma-separated (default:\n"
             "all of client-query,client-response,forwarder-query,\n"
             "forwarder-response)"},
    {.flag = "dnstap-identity", .toml_key = "dnstap_identity", .kind = OptionKind::kPath,
     .field = &Config::dnstap_identity, .value_name = "TEXT",
     .help = "dnstap identity of this proxy (default: the host name)"},
    {.flag = "check-config", .kind = OptionKind::kSwitch, .field = &Config::check_config,
     .switch_value = true, .help = "validate the configuration and exit"},
    {.flag = "version", .kind = OptionKind::kVersion, .help = "print the version and exit"},
    {.flag = "help", .kind = OptionKind::kHelp, .help = "print this text and exit"},
};

}  // namespace

absl::Span<const Option> Options() { return kOptions; }

const Option* FindOptionByFlag(std::string_view flag) {
  for (const Option& option : kOptions) {
    if (option.flag == flag) return &option;
  }
  return nullptr;
}

const Option* FindOptionByTomlKey(std::string_view key) {
  if (key.empty()) return nullptr;
  for (const Option& option : kOptions) {
    if (option.toml_key == key) return &option;
  }
  return nullptr;
}

}  // namespace dotproxy::config
