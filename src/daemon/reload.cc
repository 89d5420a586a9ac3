#include "dotproxy/daemon/reload.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "dotproxy/control/log.h"
#include "dotproxy/policy/tables.h"
#include "dotproxy/tls/client.h"
#include "dotproxy/tls/server.h"

namespace dotproxy::daemon {
namespace {

using control::Log;
using control::Severity;

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) absl::StrAppend(&out, out.empty() ? "" : ", ", item);
  return out.empty() ? "none" : out;
}

std::string ListenSummary(const config::Config& config) {
  std::vector<std::string> items;
  for (const auto& address : config.listen) items.push_back(address.ToString());
  return Join(items);
}

std::string UpstreamSummary(const config::Config& config) {
  std::vector<std::string> items;
  for (const auto& upstream : config.upstreams) {
    // A plain upstream has no name: its spec says udp:// or tcp://.
    items.push_back(absl::StrCat(upstream.transport == config::Transport::kTls
                                     ? absl::StrCat(upstream.address.ToString(), "#",
                                                    upstream.peer.auth_name)
                                     : upstream.spec,  // udp://, tcp://, https://...
                                 upstream.peer.pins.empty() ? "" : " (pinned)",
                                 upstream.priority != 0 ? absl::StrCat(" priority ", upstream.priority) : ""));
  }
  return Join(items);
}

// The first few forward zones (a config may hold thousands), for the log.
std::string ZoneSummary(const config::Config& config) {
  constexpr size_t kShown = 5;
  std::vector<std::string> items;
  for (size_t z = 0; z < config.zones.size() && z < kShown; ++z) {
    items.push_back(absl::StrCat(config.zones[z].name, " (", config.zones[z].upstreams.size(),
                                 " upstreams", config.zones[z].cache ? "" : ", not cached", ")"));
  }
  if (config.zones.size() > kShown) {
    items.push_back(absl::StrCat("and ", config.zones.size() - kShown, " more"));
  }
  return absl::StrCat("; ", config.zones.size(), " forward zones", items.empty() ? "" : ": ",
                      Join(items));
}

std::string AllowSummary(const config::Config& config) {
  std::vector<std::string> items;
  for (const auto& cidr : config.allow) items.push_back(cidr.text);
  return Join(items);
}

// Builds the next configuration, or says why not (the message names the
// flag, variable or FILE:LINE). Nothing changes on error.
absl::StatusOr<std::shared_ptr<const config::Config>> LoadNextConfig(
    ReloadContext& context, std::vector<std::string>& kept) {
  auto command_line = config::ParseCommandLine(context.argc, context.argv);
  if (!command_line.ok()) return command_line.status();
  auto next = std::make_shared<config::Config>(std::move(command_line->config));
  const config::Config& running = *context.running;
  if (next->threads == 0) next->threads = context.default_threads;
  if (next->io_backend == context.requested_backend) next->io_backend = running.io_backend;
  // Passed sockets are the process's for life: they stay the listeners.
  next->inherited_listeners = running.inherited_listeners;
  if (!next->inherited_listeners.empty()) next->listen = running.listen;
  KeepRestartOnly(running, *next, kept);
  // The shards build their TLS contexts from it: catch a bad trust store here.
  if (auto tls = tls::ClientContext::Create(next->ca_file); !tls.ok()) {
    return tls.status();
  }
  ReloadServerContext(running, *next);
  const std::vector<config::UpstreamConfig*> all = config::AllUpstreams(*next);
  std::vector<std::string> specs;
  for (const auto* upstream : all) specs.push_back(upstream->spec);
  auto slots = context.slots->Assign(specs);
  if (!slots.ok()) return slots.status();
  for (size_t u = 0; u < all.size(); ++u) all[u]->metrics_slot = (*slots)[u];
  return std::shared_ptr<const config::Config>(std::move(next));
}

}  // namespace

void ReloadServerContext(const config::Config& running, config::Config& next) {
  if (next.listen_tls.empty() && next.listen_https.empty()) return;
  // Tickets carry no authorization without client certificates: the keys
  // (and so every ticket issued) survive the reload. With mutual TLS a
  // ticket stands for a certificate checked against the old CA, so the
  // keys change and every client shows its certificate again.
  std::shared_ptr<const tls::TicketKeys> keys;
  if (running.tls_server != nullptr && running.tls_client_ca.empty() &&
      next.tls_client_ca.empty()) {
    keys = running.tls_server->ticket_keys();
  }
  auto server = tls::ServerContext::Create({next.tls_cert, next.tls_key, next.tls_client_ca}, keys);
  if (server.ok()) {
    next.tls_server = *std::move(server);
    return;
  }
  // Keep serving with what runs: a certificate being replaced file by file
  // must not take the listener down.
  Log(Severity::kError, "reload: TLS certificate kept: %s", server.status().message());
  next.tls_server = running.tls_server;
  next.tls_cert = running.tls_cert;
  next.tls_key = running.tls_key;
  next.tls_client_ca = running.tls_client_ca;
}

void KeepRestartOnly(const config::Config& running, config::Config& next,
                     std::vector<std::string>& kept) {
  auto keep = [&](const char* name, auto& field, const auto& value, auto same) {
    if (!same(field, value)) {
      kept.push_back(name);
      field = value;
    }
  };
  auto equal = [](const auto& a, const auto& b) { return a == b; };
  keep("threads", next.threads, running.threads, equal);
  keep("io_backend", next.io_backend, running.io_backend, equal);
  keep("max_inflight", next.max_inflight, running.max_inflight, equal);
  keep("max_tcp_clients", next.max_tcp_clients, running.max_tcp_clients, equal);
  keep("cache_size", next.cache_size, running.cache_size, equal);
  keep("udp_buffer", next.udp_socket_buffer, running.udp_socket_buffer, equal);
  keep("metrics_listen", next.metrics_listen, running.metrics_listen, equal);
  keep("freebind", next.freebind, running.freebind, equal);
  // TLS listeners are bound at start (certificates and keys reload).
  keep("listen_tls", next.listen_tls, running.listen_tls, equal);
  keep("listen_https", next.listen_https, running.listen_https, equal);
  // The writer and its rings are set up at start (dnstap_messages reloads).
  keep("dnstap", next.dnstap, running.dnstap, equal);
  keep("dnstap_identity", next.dnstap_identity, running.dnstap_identity, equal);
}

// Local data and lists, with what they cost (read and built at parse time).
std::string PolicySummary(const config::Config& config) {
  const policy::Tables* tables = config.policy_tables.get();
  if (tables == nullptr) return "";
  return absl::StrFormat(
      "; local data %d names; blocklists %d (%d names); allowlist %d names; %.1f MiB, built in "
      "%.2f s",
      tables->local_names(), tables->blocklist_count(), tables->blocked_names(),
      tables->allowed_names(), tables->MemoryBytes() / 1048576.0, tables->build_seconds());
}

std::string ConfigSummary(const config::Config& config) {
  return absl::StrFormat(
      "listen %s; upstreams %s%s; allow %s; cache %d entries (ttl %d..%d s, negative %d s, stale "
      "%d s); query timeout %d ms; %d shards; log level %s%s",
      ListenSummary(config), UpstreamSummary(config),
      config.zones.empty() ? std::string() : ZoneSummary(config), AllowSummary(config),
      config.cache_size,
      config.cache.min_ttl, config.cache.max_ttl, config.cache.negative_max_ttl,
      config.cache.stale_window, static_cast<int>(config.query_timeout.count()), config.threads,
      config.log_level, PolicySummary(config));
}

void Reload(ReloadContext& context) {
  Notify(absl::StrFormat("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=%d", MonotonicMicroseconds()));
  std::vector<std::string> kept;
  auto next = LoadNextConfig(context, kept);
  if (!next.ok()) {
    metrics::Bump(context.control->reload_failures);
    metrics::Set(context.control->last_reload_successful, 0);
    Log(Severity::kError, "reload refused, configuration unchanged: %s", next.status().message());
    Notify(absl::StrCat("READY=1\nSTATUS=reload refused: ", next.status().message()));
    return;
  }
  const uint64_t generation = ++context.generation;
  control::ConfigureLogging((*next)->log_level, (*next)->log_format);
  for (const auto& shard : *context.shards) shard->PostConfig(*next, generation);
  // A shard applies it within a loop turn, or once the pool the previous
  // reload replaced has drained (a query timeout at most).
  const auto deadline = std::chrono::steady_clock::now() + (*next)->query_timeout +
                        context.running->query_timeout + std::chrono::seconds(2);
  std::vector<int> late;
  std::vector<std::string> errors;
  for (const auto& shard : *context.shards) {
    while (shard->applied_generation() < generation && !shard->failed() &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (shard->applied_generation() < generation) {
      late.push_back(shard->index());
    } else if (std::string error = shard->reload_error(); !error.empty()) {
      errors.push_back(absl::StrCat("shard ", shard->index(), ": ", error));
    }
  }
  if (context.upstreams_changed) {
    std::vector<size_t> configured;
    for (const auto* upstream : config::AllUpstreams(**next)) {
      if (std::find(configured.begin(), configured.end(), upstream->metrics_slot) ==
          configured.end()) {
        configured.push_back(upstream->metrics_slot);
      }
    }
    context.upstreams_changed(context.slots->specs(), std::move(configured));
  }
  if (!errors.empty()) {
    // The rest is in force; what failed is named (and counted).
    auto partial = std::make_shared<config::Config>(**next);
    partial->listen = context.running->listen;
    context.running = std::move(partial);
    metrics::Bump(context.control->reload_failures);
    metrics::Set(context.control->last_reload_successful, 0);
    Log(Severity::kError, "reload partly applied: %s", Join(errors));
  } else {
    context.running = *next;
    metrics::Set(context.control->last_reload_successful, 1);
  }
  metrics::Bump(context.control->reloads);
  Log(Severity::kInfo, "reload applied (generation %d): %s%s%s", generation,
      ConfigSummary(*context.running),
      kept.empty() ? "" : absl::StrCat("; not applied until restart: ", Join(kept)),
      late.empty() ? ""
                   : absl::StrCat("; shards still draining the old upstreams: ", late.size()));
  Notify(absl::StrCat("READY=1\nSTATUS=serving; reloaded (generation ", generation, ")"));
}

}  // namespace dotproxy::daemon
