#include "dotproxy/metrics/http_server.h"

#include <CivetServer.h>
#include <civetweb.h>
#include <prometheus/exposer.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <vector>

#include "absl/strings/str_cat.h"

namespace dotproxy::metrics {
namespace {

// CivetServer keeps civetweb's user_data for itself, so begin_request finds
// the collector here. Set while a MetricsServer lives.
std::atomic<const ShardCollector*> g_collector{nullptr};

int Reply(mg_connection* connection, bool ok, bool head) {
  const int status = ok ? 200 : 503;
  const char* body = ok ? "ok\n" : "unavailable\n";
  mg_printf(connection,
            "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Length: %zu\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n%s",
            status, ok ? "OK" : "Service Unavailable", std::strlen(body), head ? "" : body);
  return status;
}

// /health and /ready are answered here, before civetweb's handlers (the
// Exposer's /metrics); anything else goes on to civetweb (404).
int BeginRequest(mg_connection* connection) {
  const mg_request_info* info = mg_get_request_info(connection);
  const ShardCollector* collector = g_collector.load(std::memory_order_acquire);
  if (info == nullptr || info->local_uri == nullptr || collector == nullptr) return 0;
  const bool head = info->request_method != nullptr && std::strcmp(info->request_method, "HEAD") == 0;
  const bool get =
      head || (info->request_method != nullptr && std::strcmp(info->request_method, "GET") == 0);
  if (std::strcmp(info->local_uri, "/health") == 0) {
    if (!get) return 0;
    return Reply(connection, collector->Healthy(std::chrono::steady_clock::now()), head);
  }
  if (std::strcmp(info->local_uri, "/ready") == 0) {
    if (!get) return 0;
    return Reply(connection, collector->Ready(), head);
  }
  return 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen, std::shared_ptr<ShardCollector> collector) {
  const ShardCollector* expected = nullptr;
  if (!g_collector.compare_exchange_strong(expected, collector.get())) {
    return absl::FailedPreconditionError("a metrics server is already running");
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->collector_ = std::move(collector);
  static CivetCallbacks callbacks;  // civetweb keeps a copy; static for clarity
  callbacks.begin_request = &BeginRequest;
  std::vector<std::string> options = {
      "listening_ports", listen,
      "num_threads", std::to_string(kThreads),
      // A client that has not sent its whole request (or read the answer)
      // within this is dropped, freeing its worker.
      "request_timeout_ms", std::to_string(kRequestTimeoutMs),
      "keep_alive_timeout_ms", "1000",
      "enable_keep_alive", "yes",
      // Accepted connections waiting for a worker; more wait in the backlog.
      "connection_queue", "32",
      "listen_backlog", "64",
  };
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(options, &callbacks);
  } catch (const std::exception& error) {
    g_collector.store(nullptr, std::memory_order_release);
    return absl::UnavailableError(
        absl::StrCat("--metrics ", listen, ": cannot listen: ", error.what()));
  }
  server->exposer_->RegisterCollectable(server->collector_);
  return server;
}

MetricsServer::~MetricsServer() {
  // Stops civetweb's threads first, so no callback runs past this point.
  exposer_.reset();
  g_collector.store(nullptr, std::memory_order_release);
}

}  // namespace dotproxy::metrics
