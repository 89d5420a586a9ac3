// Micro-benchmarks for tls::Session::Write (include/dotproxy/tls/client.h):
// encrypting a batch of 50 framed upstream queries with one Write (one TLS
// record, what the shard's FlushUpstream does) against 50 single Writes (50
// records). The session is handshaken once against an in-memory wolfSSL server
// (as in tests/tls/session_test.cc); the ciphertext is discarded each round.
//
// PKI: generated at build time (tests/tls/make_test_pki.sh) into the directory
// named by DOTPROXY_BENCH_PKI; without it the benchmarks report an error.

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "bench/common/wire.h"
#include "dotproxy/dns/edns.h"
#include "dotproxy/dns/message.h"
#include "dotproxy/tls/client.h"
#include "tests/tls/memory_tls_server.h"

namespace dotproxy::tls {
namespace {

using testing::MemoryServer;

// A client session with a finished, verified handshake (bounded rounds).
struct ReadySession {
  std::unique_ptr<ClientContext> context;
  PeerPolicy policy;
  Session session;
  std::unique_ptr<MemoryServer> server;
  std::string error;

  bool Setup() {
    const char* dir = std::getenv("DOTPROXY_BENCH_PKI");
    if (dir == nullptr) return Fail("DOTPROXY_BENCH_PKI is not set (no openssl at build time?)");
    GlobalInit();
    auto created = ClientContext::Create(std::string(dir) + "/ca.pem");
    if (!created.ok()) return Fail(std::string(created.status().message()));
    context = *std::move(created);
    server = std::make_unique<MemoryServer>(dir, "server");
    if (!server->ok()) return Fail("server certificate/key did not load");
    policy.auth_name = "upstream.test";
    if (!session.Start(*context, policy, nullptr).ok()) return Fail("Session::Start failed");
    bool client_done = false, server_done = false;
    for (int round = 0; round < 50 && !(client_done && server_done); ++round) {
      if (!client_done) {
        const Session::Step step = session.Handshake();
        if (step == Session::Step::kError) return Fail("client handshake: " + session.error());
        client_done = step == Session::Step::kDone;
      }
      auto& out = session.outbound();
      server->inbound().insert(server->inbound().end(), out.begin(), out.end());
      out.clear();
      if (!server_done) {
        server_done = server->Accept();
        if (server->failed()) return Fail("server handshake failed");
      }
      auto& queue = server->outbound();
      while (!queue.empty()) {
        std::span<uint8_t> space = session.InboundSpace();
        if (space.empty()) break;
        const size_t n = std::min(queue.size(), space.size());
        std::copy_n(queue.begin(), n, space.begin());
        queue.erase(queue.begin(), queue.begin() + n);
        session.CommitInbound(n);
      }
    }
    if (!(client_done && server_done)) return Fail("handshake did not finish");
    session.outbound().clear();
    return true;
  }
  bool Fail(std::string why) {
    error = std::move(why);
    return false;
  }
};

// 50 upstream queries (EDNS, padded to 128 bytes as BuildUpstreamQuery makes
// them), each with its 2-byte length prefix.
std::vector<std::vector<uint8_t>> FramedUpstreamQueries(size_t count) {
  std::vector<std::vector<uint8_t>> out;
  uint16_t id = 1;
  for (const std::string& name : bench::MakeNames(count)) {
    std::vector<uint8_t> q = bench::MakeQuery(name, id++, true);
    dns::QueryInfo info;
    if (dns::ParseQuery(q, info) != dns::QueryParse::kOk) std::abort();
    std::vector<uint8_t> framed(2 + q.size() + dns::kUpstreamQueryGrowth);
    const size_t n = dns::BuildUpstreamQuery(q, info, {}, {framed.data() + 2, framed.size() - 2});
    if (n == 0) std::abort();
    dns::WriteU16(framed.data(), static_cast<uint16_t>(n));
    framed.resize(2 + n);
    out.push_back(std::move(framed));
  }
  return out;
}

constexpr size_t kBatch = 50;

// One Write of all 50 queries back to back (one TLS record, ~6.5 KB).
void BM_TlsSession_WriteBatchOf50(benchmark::State& state) {
  ReadySession ready;
  if (!ready.Setup()) {
    state.SkipWithError(ready.error.c_str());
    return;
  }
  std::vector<uint8_t> batch;
  for (const auto& q : FramedUpstreamQueries(kBatch)) batch.insert(batch.end(), q.begin(), q.end());
  size_t ciphertext = 0;
  for (auto _ : state) {
    if (!ready.session.Write(batch)) state.SkipWithError("Write failed");
    ciphertext += ready.session.outbound().size();
    ready.session.outbound().clear();
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["ciphertext_B_per_q"] = benchmark::Counter(
      static_cast<double>(ciphertext) / static_cast<double>(state.iterations() * kBatch));
}
BENCHMARK(BM_TlsSession_WriteBatchOf50);

// 50 Writes of one query each (50 TLS records).
void BM_TlsSession_Write50Singles(benchmark::State& state) {
  ReadySession ready;
  if (!ready.Setup()) {
    state.SkipWithError(ready.error.c_str());
    return;
  }
  const auto queries = FramedUpstreamQueries(kBatch);
  size_t ciphertext = 0;
  for (auto _ : state) {
    for (const auto& q : queries) {
      if (!ready.session.Write(q)) state.SkipWithError("Write failed");
    }
    ciphertext += ready.session.outbound().size();
    ready.session.outbound().clear();
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["ciphertext_B_per_q"] = benchmark::Counter(
      static_cast<double>(ciphertext) / static_cast<double>(state.iterations() * kBatch));
}
BENCHMARK(BM_TlsSession_Write50Singles);

}  // namespace
}  // namespace dotproxy::tls

BENCHMARK_MAIN();
