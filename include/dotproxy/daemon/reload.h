#pragma once
// SIGHUP on the control thread: re-read flags, file and environment as at
// start, validate, and hand the result to every shard (Shard::PostConfig),
// or refuse it and keep the running configuration. One log line and the
// ControlStats counters say which; systemd hears RELOADING=1 ... READY=1.
//
//   ReloadContext reload{.argc = argc, .argv = argv, ...};
//   ... on SIGHUP: Reload(reload);   // reload.running is then in force

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dotproxy/config/config.h"
#include "dotproxy/daemon/systemd.h"
#include "dotproxy/metrics/stats.h"
#include "dotproxy/metrics/upstream_slots.h"

namespace dotproxy::daemon {

struct ReloadContext {
  // How the process was started, to re-read everything the same way.
  int argc = 0;
  char** argv = nullptr;
  std::string requested_backend;  // --io-backend before "auto" was resolved
  int default_threads = 1;        // what threads = 0 resolves to
  // What runs now; replaced by each applied reload.
  std::shared_ptr<const config::Config> running;
  const ShardList* shards = nullptr;
  metrics::UpstreamSlots* slots = nullptr;
  metrics::ControlStats* control = nullptr;
  // Told the slots' specs and the configured slots after each applied
  // reload (the metrics endpoint's labels); may be empty.
  std::function<void(const std::vector<std::string>& specs, std::vector<size_t> configured)>
      upstreams_changed;
  uint64_t generation = 0;
};

void Reload(ReloadContext& context);

// Settings that size a shard's tables and sockets at start: those of `next`
// that differ from `running` are set back to the running values and their
// names appended to `kept`.
// The TLS listeners' context for `next` (control thread): built from its
// certificate, key and client CA files, or, when they do not load, the
// running one kept (logged), with the running file names.
void ReloadServerContext(const config::Config& running, config::Config& next);
void KeepRestartOnly(const config::Config& running, config::Config& next,
                     std::vector<std::string>& kept);

// The effective configuration in one line, for the start and reload logs.
std::string ConfigSummary(const config::Config& config);

}  // namespace dotproxy::daemon
