// tls::ServerSession against the client side (tls::Session), both in memory:
// ciphertext moves between the two MemoryIo buffers by hand, in pieces, the
// way receive completions deliver it. Covers the handshake, data both ways,
// mutual TLS accepted and refused, and resumption by session ticket across
// two server sessions sharing one context (two shards) and across a
// rotation of the ticket key.
//
// The PKI comes from tests/tls/make_test_pki.sh (DOTPROXY_TEST_PKI).

#include "dotproxy/tls/server.h"

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "dotproxy/tls/client.h"

namespace dotproxy::tls {
namespace {

class WolfSslEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { GlobalInit(); }
  void TearDown() override { wolfSSL_Cleanup(); }
};
[[maybe_unused]] ::testing::Environment* const kWolfSslEnvironment =
    ::testing::AddGlobalTestEnvironment(new WolfSslEnvironment);

std::string PkiDir() {
  const char* dir = std::getenv("DOTPROXY_TEST_PKI");
  return dir != nullptr ? dir : "";
}

// Moves up to `limit` bytes from `from` into a receiver's inbound space.
template <typename Receiver>
size_t Move(std::vector<uint8_t>& from, Receiver& to, size_t limit = SIZE_MAX) {
  const std::span<uint8_t> space = to.InboundSpace();
  const size_t n = std::min({limit, from.size(), space.size()});
  std::copy_n(from.begin(), n, space.begin());
  from.erase(from.begin(), from.begin() + static_cast<std::ptrdiff_t>(n));
  to.CommitInbound(n);
  return n;
}

enum class Outcome { kDone, kClientError, kServerError, kStuck };

// Drives both sides, moving at most `chunk` bytes per step each way.
Outcome Drive(Session& client, ServerSession& server, size_t chunk = SIZE_MAX) {
  bool client_done = false;
  bool server_done = false;
  for (int round = 0; round < 2000; ++round) {
    if (!client_done) {
      switch (client.Handshake()) {
        case Session::Step::kDone: client_done = true; break;
        case Session::Step::kWantRead: break;
        case Session::Step::kError: return Outcome::kClientError;
      }
    }
    Move(client.outbound(), server, chunk);
    if (!server_done) {
      switch (server.Handshake()) {
        case ServerSession::Step::kDone: server_done = true; break;
        case ServerSession::Step::kWantRead: break;
        case ServerSession::Step::kError: return Outcome::kServerError;
      }
    }
    Move(server.outbound(), client, chunk);
    if (client_done && server_done && client.outbound().empty() && server.outbound().empty()) {
      return Outcome::kDone;
    }
  }
  return Outcome::kStuck;
}

class ServerSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (PkiDir().empty()) GTEST_SKIP() << "DOTPROXY_TEST_PKI is not set";
    auto client_context = ClientContext::Create(PkiDir() + "/ca.pem");
    ASSERT_TRUE(client_context.ok()) << client_context.status();
    client_context_ = *std::move(client_context);
    policy_.auth_name = "upstream.test";
  }

  std::shared_ptr<const ServerContext> MakeServer(const std::string& client_ca = "",
                                                  std::shared_ptr<const TicketKeys> keys = nullptr) {
    ServerOptions options;
    options.cert_file = PkiDir() + "/server.pem";
    options.key_file = PkiDir() + "/server.key";
    if (!client_ca.empty()) options.client_ca_file = PkiDir() + "/" + client_ca;
    auto context = ServerContext::Create(options, std::move(keys));
    EXPECT_TRUE(context.ok()) << context.status();
    return context.ok() ? *context : nullptr;
  }

  // Gives the client context a certificate to present (mutual TLS).
  void UseClientCertificate(const std::string& name) {
    ASSERT_EQ(wolfSSL_CTX_use_certificate_file(client_context_->get(),
                                               (PkiDir() + "/" + name + ".pem").c_str(),
                                               WOLFSSL_FILETYPE_PEM),
              WOLFSSL_SUCCESS);
    ASSERT_EQ(wolfSSL_CTX_use_PrivateKey_file(client_context_->get(),
                                              (PkiDir() + "/" + name + ".key").c_str(),
                                              WOLFSSL_FILETYPE_PEM),
              WOLFSSL_SUCCESS);
  }

  // Lets the client read what the server sent after the handshake (a TLS
  // 1.3 ticket arrives that way).
  void Settle(Session& client, ServerSession& server) {
    Move(server.outbound(), client);
    uint8_t plain[256];
    EXPECT_EQ(client.Read(plain), 0);
  }

  // Both sides started for a DoT handshake on `context`, not yet driven.
  void StartPair(Session& client, ServerSession& server,
                 const std::shared_ptr<const ServerContext>& context) {
    ASSERT_NE(context, nullptr);
    ASSERT_TRUE(client.Start(*client_context_, policy_, nullptr).ok());
    ASSERT_TRUE(server.Start(context, "dot").ok());
  }

  std::unique_ptr<ClientContext> client_context_;
  PeerPolicy policy_;
};

TEST_F(ServerSessionTest, HandshakeAndDataBothWays) {
  Session client;
  ServerSession server;
  ASSERT_NO_FATAL_FAILURE(StartPair(client, server, MakeServer()));
  // Awkward 7-byte pieces: a handshake message split across receives.
  ASSERT_EQ(Drive(client, server, 7), Outcome::kDone) << client.error() << " / " << server.error();
  EXPECT_TRUE(server.handshake_done());
  EXPECT_FALSE(server.resumed());
  EXPECT_EQ(server.failure(), ServerSession::Failure::kNone);

  const std::string query = "\x00\x05hello";
  ASSERT_TRUE(client.Write({reinterpret_cast<const uint8_t*>(query.data()), query.size()}));
  Move(client.outbound(), server);
  uint8_t plain[1024];
  const int n = server.Read(plain);
  ASSERT_EQ(n, static_cast<int>(query.size()));
  EXPECT_EQ(std::string(reinterpret_cast<char*>(plain), n), query);

  const std::string answer(3000, 'a');
  ASSERT_TRUE(server.Write({reinterpret_cast<const uint8_t*>(answer.data()), answer.size()}));
  Move(server.outbound(), client);
  std::string got;
  for (int i = 0; i < 10; ++i) {
    const int m = client.Read(plain);
    if (m <= 0) break;
    got.append(reinterpret_cast<char*>(plain), m);
  }
  EXPECT_EQ(got, answer);
  EXPECT_EQ(server.alpn(), "");  // the client offered no ALPN
}

TEST_F(ServerSessionTest, RejectsAMissingKeyOrMismatchedFiles) {
  ServerOptions options;
  options.cert_file = PkiDir() + "/server.pem";
  options.key_file = PkiDir() + "/nonexistent.key";
  auto context = ServerContext::Create(options);
  ASSERT_FALSE(context.ok());
  EXPECT_NE(context.status().message().find("--tls-key"), std::string::npos);
  options.key_file = PkiDir() + "/other_server.key";
  context = ServerContext::Create(options);
  ASSERT_FALSE(context.ok());
  EXPECT_NE(context.status().message().find("does not match"), std::string::npos);
  options.key_file = PkiDir() + "/server.key";
  options.client_ca_file = PkiDir() + "/nonexistent.pem";
  context = ServerContext::Create(options);
  ASSERT_FALSE(context.ok());
  EXPECT_NE(context.status().message().find("--tls-client-ca"), std::string::npos);
}

TEST_F(ServerSessionTest, MutualTlsAcceptsAClientCertificateFromTheCa) {
  auto context = MakeServer("ca.pem");
  ASSERT_NE(context, nullptr);
  UseClientCertificate("client");
  Session client;
  ASSERT_TRUE(client.Start(*client_context_, policy_, nullptr).ok());
  ServerSession server;
  ASSERT_TRUE(server.Start(context, "dot").ok());
  ASSERT_EQ(Drive(client, server), Outcome::kDone) << client.error() << " / " << server.error();
  EXPECT_TRUE(server.handshake_done());
}

TEST_F(ServerSessionTest, MutualTlsRefusesAClientWithoutCertificate) {
  auto context = MakeServer("ca.pem");
  ASSERT_NE(context, nullptr);
  Session client;
  ASSERT_TRUE(client.Start(*client_context_, policy_, nullptr).ok());
  ServerSession server;
  ASSERT_TRUE(server.Start(context, "dot").ok());
  EXPECT_EQ(Drive(client, server), Outcome::kServerError);
  EXPECT_FALSE(server.handshake_done());
  EXPECT_EQ(server.failure(), ServerSession::Failure::kNoClientCert) << server.error();
}

TEST_F(ServerSessionTest, MutualTlsRefusesACertificateFromAnotherCa) {
  auto context = MakeServer("ca.pem");
  ASSERT_NE(context, nullptr);
  UseClientCertificate("other_client");
  Session client;
  ASSERT_TRUE(client.Start(*client_context_, policy_, nullptr).ok());
  ServerSession server;
  ASSERT_TRUE(server.Start(context, "dot").ok());
  EXPECT_EQ(Drive(client, server), Outcome::kServerError);
  EXPECT_EQ(server.failure(), ServerSession::Failure::kBadClientCert) << server.error();
}

// Full handshake on one server session (shard A), resumed on another
// (shard B) with the same context: the key is derived, not stored per shard.
TEST_F(ServerSessionTest, ResumesByTicketOnAnotherSession) {
  auto context = MakeServer();
  ASSERT_NE(context, nullptr);
  ResumptionCache cache;
  {
    Session client;
    ASSERT_TRUE(client.Start(*client_context_, policy_, &cache).ok());
    ServerSession server;
    ASSERT_TRUE(server.Start(context, "dot").ok());
    ASSERT_EQ(Drive(client, server), Outcome::kDone);
    Settle(client, server);
    EXPECT_FALSE(server.resumed());
  }
  ASSERT_NE(cache.get(), nullptr) << "no ticket reached the client";
  Session client;
  ASSERT_TRUE(client.Start(*client_context_, policy_, &cache).ok());
  ServerSession other_shard;
  ASSERT_TRUE(other_shard.Start(context, "dot").ok());
  ASSERT_EQ(Drive(client, other_shard), Outcome::kDone);
  EXPECT_TRUE(other_shard.resumed());
  EXPECT_TRUE(client.resumed());
}

// The same keys carried into a new context (a reload) still resume; a
// ticket two rotation periods old, or from other keys, makes a full handshake.
TEST_F(ServerSessionTest, TicketsSurviveAReloadAndExpireAfterTwoPeriods) {
  auto keys = TicketKeys::Generate();
  ASSERT_NE(keys, nullptr);
  auto first = MakeServer("", keys);
  ResumptionCache cache;
  {
    Session client;
    ASSERT_TRUE(client.Start(*client_context_, policy_, &cache).ok());
    ServerSession server;
    ASSERT_TRUE(server.Start(first, "dot").ok());
    ASSERT_EQ(Drive(client, server), Outcome::kDone);
    Settle(client, server);
  }
  ASSERT_NE(cache.get(), nullptr);
  auto resume_with = [&](std::shared_ptr<const ServerContext> context) {
    Session client;
    WOLFSSL_SESSION* copy = wolfSSL_SESSION_dup(cache.get());
    ResumptionCache scratch;
    scratch.Store(copy);
    EXPECT_TRUE(client.Start(*client_context_, policy_, &scratch).ok());
    ServerSession server;
    EXPECT_TRUE(server.Start(std::move(context), "dot").ok());
    EXPECT_EQ(Drive(client, server), Outcome::kDone);
    return server.resumed();
  };
  auto reloaded = MakeServer("", keys);
  EXPECT_TRUE(resume_with(reloaded));
  keys->set_clock_offset_for_test(kTicketRotation.count());  // next period: still accepted
  EXPECT_TRUE(resume_with(reloaded));
  keys->set_clock_offset_for_test(2 * kTicketRotation.count());  // two periods on: expired
  EXPECT_FALSE(resume_with(reloaded));
  keys->set_clock_offset_for_test(0);
  EXPECT_FALSE(resume_with(MakeServer()));  // other keys
}

TEST_F(ServerSessionTest, RestartsCleanlyOnTheSameObject) {
  auto context = MakeServer();
  ServerSession server;
  for (int i = 0; i < 3; ++i) {
    Session client;
    ASSERT_TRUE(client.Start(*client_context_, policy_, nullptr).ok());
    ASSERT_TRUE(server.Start(context, "dot").ok());
    ASSERT_EQ(Drive(client, server), Outcome::kDone);
    server.Reset();
    EXPECT_FALSE(server.active());
  }
}

// PlaintextFitting is the send buffer's bound: what it allows encrypts to
// no more than the capacity given (whatever is already queued), and little
// less (one record's worth of overhead at most per record); the client
// reads back exactly what was written.
TEST_F(ServerSessionTest, PlaintextFittingKeepsTheCiphertextWithinTheCapacity) {
  Session client;
  ServerSession server;
  ASSERT_NO_FATAL_FAILURE(StartPair(client, server, MakeServer()));
  EXPECT_EQ(server.PlaintextFitting(1000, 64 * 1024), 0u);  // no keys yet
  ASSERT_EQ(Drive(client, server), Outcome::kDone);
  Settle(client, server);
  ASSERT_TRUE(server.outbound().empty());

  std::string sent;
  std::string got;
  uint8_t plain[16384];
  for (const size_t capacity : {size_t{64 * 1024}, size_t{100}, size_t{40000}, size_t{16 * 1024}}) {
    // Twice per capacity: into an empty buffer, then on top of what the
    // first write left there.
    size_t total = 0;
    for (int round = 0; round < 2; ++round) {
      const size_t fits = server.PlaintextFitting(size_t{1} << 20, capacity);
      if (round == 0 && capacity > 1000) {
        EXPECT_GE(fits, capacity - capacity / 100) << capacity;
      }
      EXPECT_EQ(server.PlaintextFitting(7, capacity), std::min<size_t>(7, fits));
      if (fits == 0) continue;
      std::string chunk(fits, static_cast<char>('a' + sent.size() % 26));
      ASSERT_TRUE(server.Write({reinterpret_cast<const uint8_t*>(chunk.data()), chunk.size()}));
      EXPECT_LE(server.outbound().size(), capacity) << capacity << " round " << round;
      sent += chunk;
      total += fits;
    }
    EXPECT_GT(total, 0u) << capacity;
    while (!server.outbound().empty()) {
      Move(server.outbound(), client);
      int n;
      while ((n = client.Read(plain)) > 0) got.append(reinterpret_cast<char*>(plain), n);
    }
  }
  EXPECT_EQ(got.size(), sent.size());
  EXPECT_TRUE(got == sent);
}

}  // namespace
}  // namespace dotproxy::tls
