#pragma once
// The metrics endpoint: GET /metrics (Prometheus text 0.0.4, from a
// ShardCollector), GET /health and GET /ready (200 or 503, see
// ShardCollector::Healthy and Ready). Served by prometheus-cpp's Exposer
// (embedded civetweb) on its own few threads, never on a shard thread.
// Bounded: kThreads worker threads, a queue of accepted connections, and a
// request timeout, so junk and slow clients cannot hold it: a client that
// sends half a request holds one worker for kRequestTimeoutMs at most, so
// with H such clients a scrape waits at worst ceil(H / kThreads) timeouts.
//
// Start and destroy on the control thread; at most one per process (the
// civetweb callback finds it through a process-wide pointer).

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "dotproxy/metrics/prometheus.h"

namespace prometheus {
class Exposer;
}

namespace dotproxy::metrics {

class MetricsServer {
 public:
  static constexpr int kThreads = 8;
  static constexpr int kRequestTimeoutMs = 1500;

  // Listens on `listen` ("127.0.0.1:9153", "[::1]:9153"). Errors (address in
  // use, a second server) are kUnavailable / kFailedPrecondition.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& listen, std::shared_ptr<ShardCollector> collector);
  ~MetricsServer();

  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

 private:
  MetricsServer() = default;

  std::shared_ptr<ShardCollector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace dotproxy::metrics
