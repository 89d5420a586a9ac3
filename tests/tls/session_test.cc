// dotproxy::tls::Session against a real wolfSSL server, entirely in memory:
// ciphertext moves between the two through byte queues that the test
// shuttles by hand, in awkward pieces, the way io_uring completions would
// deliver them. Answers are reassembled with dns::StreamFramer, as the
// upstream connection does.
//
// The PKI comes from tests/tls/make_test_pki.sh, generated at build time into
// the directory named by DOTPROXY_TEST_PKI.

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/ascii.h"
#include "dotproxy/dns/stream_framer.h"
#include "dotproxy/tls/client.h"
#include "tests/tls/memory_tls_server.h"

namespace dotproxy::tls {
namespace {

using dns::StreamFramer;

class WolfSslEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { GlobalInit(); }
  void TearDown() override { wolfSSL_Cleanup(); }
};
[[maybe_unused]] ::testing::Environment* const kWolfSslEnvironment =
    ::testing::AddGlobalTestEnvironment(new WolfSslEnvironment);

// The directory holding the generated PKI, or empty when the build did not
// make one (no openssl); tests then skip.
std::string PkiDir() {
  const char* dir = std::getenv("DOTPROXY_TEST_PKI");
  return dir != nullptr ? dir : "";
}

// The shared in-memory server, with its certificate from the PKI directory.
class MemoryServer : public testing::MemoryServer {
 public:
  explicit MemoryServer(const std::string& cert_name)
      : testing::MemoryServer(PkiDir(), cert_name) {}
};

// Moves the client's pending ciphertext to the server.
void ClientToServer(Session& session, MemoryServer& server) {
  auto& out = session.outbound();
  server.inbound().insert(server.inbound().end(), out.begin(), out.end());
  out.clear();
}

// Moves up to `limit` bytes of the server's ciphertext to the client, the
// way a receive completion would. Returns the bytes moved.
size_t ServerToClient(MemoryServer& server, Session& session, size_t limit) {
  auto& queue = server.outbound();
  const std::span<uint8_t> space = session.InboundSpace();
  const size_t n = std::min({limit, queue.size(), space.size()});
  std::copy_n(queue.begin(), n, space.begin());
  queue.erase(queue.begin(), queue.begin() + n);
  session.CommitInbound(n);
  return n;
}

enum class HandshakeResult { kDone, kClientError, kServerError, kStuck };

// Drives both sides until the client and the server finish, or one fails.
HandshakeResult RunHandshake(Session& session, MemoryServer& server) {
  bool client_done = false;
  bool server_done = false;
  for (int round = 0; round < 50; ++round) {
    if (!client_done) {
      switch (session.Handshake()) {
        case Session::Step::kDone:
          client_done = true;
          break;
        case Session::Step::kWantRead:
          break;
        case Session::Step::kError:
          return HandshakeResult::kClientError;
      }
    }
    ClientToServer(session, server);
    if (!server_done) {
      server_done = server.Accept();
      if (server.failed()) return HandshakeResult::kServerError;
    }
    while (ServerToClient(server, session, SIZE_MAX) > 0) {
    }
    if (client_done && server_done) return HandshakeResult::kDone;
  }
  return HandshakeResult::kStuck;
}

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (PkiDir().empty()) GTEST_SKIP() << "DOTPROXY_TEST_PKI is not set";
    auto context = ClientContext::Create(PkiDir() + "/ca.pem");
    ASSERT_TRUE(context.ok()) << context.status();
    context_ = *std::move(context);
  }

  // Starts a client session that authenticates `auth_name`.
  void Start(Session& session, const std::string& auth_name) {
    policy_.auth_name = auth_name;
    ASSERT_TRUE(session.Start(*context_, policy_, nullptr).ok());
  }

  std::unique_ptr<ClientContext> context_;
  PeerPolicy policy_;
};

TEST_F(SessionTest, HandshakeCompletes) {
  MemoryServer server("server");
  ASSERT_TRUE(server.ok());
  Session session;
  Start(session, "upstream.test");
  ASSERT_EQ(RunHandshake(session, server), HandshakeResult::kDone) << session.error();
  EXPECT_TRUE(session.verified());
  EXPECT_TRUE(session.error().empty()) << session.error();
}

TEST_F(SessionTest, HandshakeAuthenticatesAnIpLiteralAgainstAnIpSan) {
  // An upstream given without #NAME is authenticated by its IP (the
  // config's default); the certificate carries IP:127.0.0.1.
  MemoryServer server("server");
  ASSERT_TRUE(server.ok());
  Session session;
  Start(session, "127.0.0.1");
  ASSERT_EQ(RunHandshake(session, server), HandshakeResult::kDone) << session.error();
  EXPECT_TRUE(session.verified());
}

TEST_F(SessionTest, RejectsCertificateForAnotherName) {
  MemoryServer server("server");
  ASSERT_TRUE(server.ok());
  Session session;
  Start(session, "other.test");
  EXPECT_EQ(RunHandshake(session, server), HandshakeResult::kClientError);
  EXPECT_FALSE(session.verified());
  EXPECT_FALSE(session.error().empty());
  EXPECT_NE(session.error().find("authentication name"), std::string::npos) << session.error();
}

TEST_F(SessionTest, RejectsAnIpLiteralThatIsNotInTheCertificate) {
  MemoryServer server("server");
  ASSERT_TRUE(server.ok());
  Session session;
  Start(session, "127.0.0.2");
  EXPECT_EQ(RunHandshake(session, server), HandshakeResult::kClientError);
  EXPECT_FALSE(session.verified());
  EXPECT_FALSE(session.error().empty());
}

TEST_F(SessionTest, RejectsCertificateFromAnUntrustedCa) {
  // Same names, but signed by other_ca, which the client does not trust.
  MemoryServer server("other_server");
  ASSERT_TRUE(server.ok());
  Session session;
  Start(session, "upstream.test");
  EXPECT_EQ(RunHandshake(session, server), HandshakeResult::kClientError);
  EXPECT_FALSE(session.verified());
  EXPECT_FALSE(session.error().empty());
  EXPECT_NE(session.error().find("trusted CA"), std::string::npos) << session.error();
}

TEST_F(SessionTest, QueryReachesTheServer) {
  MemoryServer server("server");
  ASSERT_TRUE(server.ok());
  Session session;
  Start(session, "upstream.test");
  ASSERT_EQ(RunHandshake(session, server), HandshakeResult::kDone) << session.error();

  const std::vector<uint8_t> query = {0x00, 0x05, 0xab, 0xcd, 0x01, 0x00, 0x00};
  ASSERT_TRUE(session.Write(query)) << session.error();
  ClientToServer(session, server);
  EXPECT_EQ(server.ReadAll(), query);
}

// Builds `count` messages of varied sizes (1..4000 bytes, plus one of the
// largest size a 2-byte prefix allows), each filled with a pattern derived
// from its index so a swapped or shifted byte is caught.
std::vector<std::vector<uint8_t>> MakeMessages() {
  std::vector<size_t> sizes = {1, 2, 3, 12, 17, 100, 255, 256, 257, 511, 512, 1232, 1500, 4000};
  std::mt19937 random(20240611);
  std::uniform_int_distribution<size_t> size(1, 4000);
  for (int i = 0; i < 40; ++i) sizes.push_back(size(random));
  sizes.insert(sizes.begin() + 20, 65535);
  std::vector<std::vector<uint8_t>> messages;
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<uint8_t> message(sizes[i]);
    for (size_t j = 0; j < message.size(); ++j) {
      message[j] = static_cast<uint8_t>(i * 37 + j * 7 + (j >> 8));
    }
    messages.push_back(std::move(message));
  }
  return messages;
}

TEST_F(SessionTest, MessagesSurviveOddRecordAndReadBoundaries) {
  MemoryServer server("server");
  ASSERT_TRUE(server.ok());
  Session session;
  Start(session, "upstream.test");
  ASSERT_EQ(RunHandshake(session, server), HandshakeResult::kDone) << session.error();

  const auto messages = MakeMessages();
  std::vector<uint8_t> stream;
  std::set<size_t> cuts;  // plaintext offsets where one wolfSSL_write ends
  for (size_t i = 0; i < messages.size(); ++i) {
    const size_t prefix = stream.size();
    const auto& m = messages[i];
    stream.push_back(static_cast<uint8_t>(m.size() >> 8));  // big-endian length
    stream.push_back(static_cast<uint8_t>(m.size()));
    stream.insert(stream.end(), m.begin(), m.end());
    switch (i % 4) {
      case 0: cuts.insert(prefix + 1); break;                 // inside the prefix
      case 1: cuts.insert(prefix + 2 + m.size() / 2); break;  // inside the body
      case 2: break;                                           // several per write
      case 3: cuts.insert(prefix + 2); break;                 // right after the prefix
    }
  }
  cuts.insert(stream.size());

  // The server writes record by record: some writes exceed 16 KiB and become
  // several records, others are a single byte.
  size_t written = 0;
  for (size_t cut : cuts) {
    if (cut <= written) continue;
    ASSERT_TRUE(server.Write(std::span(stream).subspan(written, cut - written)));
    written = cut;
  }
  ASSERT_EQ(written, stream.size());

  // The client receives ciphertext in odd pieces, reads plaintext in odd
  // amounts, and frames it as the upstream connection does.
  const size_t kChunks[] = {1, 7, 100, 1500, 3, 16500, 2};
  const size_t kReads[] = {SIZE_MAX, 1, 3, 517, SIZE_MAX, 2};
  StreamFramer framer(65535 + 2);
  std::vector<std::vector<uint8_t>> received;
  size_t chunk = 0;
  size_t read = 0;
  auto drain = [&]() {
    while (true) {
      std::span<uint8_t> message;
      StreamFramer::Next next;
      while ((next = framer.NextMessage(65535, message)) == StreamFramer::Next::kMessage) {
        received.emplace_back(message.begin(), message.end());
      }
      ASSERT_EQ(next, StreamFramer::Next::kNeedMore);
      framer.Compact();
      std::span<uint8_t> space = framer.WritableSpace();
      ASSERT_FALSE(space.empty()) << "framer full after Compact()";
      space = space.first(std::min(space.size(), kReads[read++ % std::size(kReads)]));
      const int n = session.Read(space);
      ASSERT_GE(n, 0) << session.error();
      if (n == 0) return;
      framer.Commit(static_cast<size_t>(n));
    }
  };
  while (!server.outbound().empty()) {
    ASSERT_GT(ServerToClient(server, session, kChunks[chunk++ % std::size(kChunks)]), 0u);
    drain();
    if (HasFatalFailure()) return;
  }
  drain();
  // Tickets and the like may make the client answer; nothing else to send.
  ClientToServer(session, server);

  ASSERT_EQ(received.size(), messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    ASSERT_EQ(received[i].size(), messages[i].size()) << "message " << i;
    EXPECT_TRUE(received[i] == messages[i]) << "message " << i << " corrupted";
  }
  EXPECT_TRUE(framer.empty());
}

TEST_F(SessionTest, ReadReportsPeerClose) {
  MemoryServer server("server");
  ASSERT_TRUE(server.ok());
  Session session;
  Start(session, "upstream.test");
  ASSERT_EQ(RunHandshake(session, server), HandshakeResult::kDone) << session.error();
  wolfSSL_shutdown(server.ssl());  // close_notify
  while (ServerToClient(server, session, SIZE_MAX) > 0) {
  }
  uint8_t plain[64];
  EXPECT_EQ(session.Read(plain), -1);
}

// Reads `name`.pin (base64 SHA-256 of the certificate's SPKI) from the PKI.
SpkiPin ReadPin(const std::string& name) {
  std::ifstream file(PkiDir() + "/" + name + ".pin");
  std::string base64;
  std::getline(file, base64);
  std::string digest;
  SpkiPin pin{};
  if (absl::Base64Unescape(absl::StripAsciiWhitespace(base64), &digest) &&
      digest.size() == pin.size()) {
    std::memcpy(pin.data(), digest.data(), pin.size());
  } else {
    ADD_FAILURE() << "cannot read " << name << ".pin";
  }
  return pin;
}

TEST_F(SessionTest, AcceptsAChainThatCarriesThePin) {
  MemoryServer server("server");
  ASSERT_TRUE(server.ok());
  Session session;
  policy_.auth_name = "upstream.test";
  policy_.pins = {ReadPin("other_server"), ReadPin("server")};
  ASSERT_TRUE(session.Start(*context_, policy_, nullptr).ok());
  ASSERT_EQ(RunHandshake(session, server), HandshakeResult::kDone) << session.error();
  EXPECT_TRUE(session.verified());
  EXPECT_FALSE(session.pin_mismatch());
}

TEST_F(SessionTest, RejectsAValidChainWithoutThePin) {
  // CA and name checks pass; the pin is an extra requirement.
  MemoryServer server("server");
  ASSERT_TRUE(server.ok());
  Session session;
  policy_.auth_name = "upstream.test";
  policy_.pins = {ReadPin("other_server")};
  ASSERT_TRUE(session.Start(*context_, policy_, nullptr).ok());
  EXPECT_EQ(RunHandshake(session, server), HandshakeResult::kClientError);
  EXPECT_FALSE(session.verified());
  EXPECT_TRUE(session.pin_mismatch());
  EXPECT_FALSE(session.error().empty());
}

TEST_F(SessionTest, PinOnlyAcceptsAnUntrustedCaWithThePin) {
  MemoryServer server("other_server");
  ASSERT_TRUE(server.ok());
  Session session;
  policy_.auth_name = "192.0.2.1";  // not in the certificate: pin-only skips the name
  policy_.pins = {ReadPin("other_server")};
  policy_.pin_only = true;
  ASSERT_TRUE(session.Start(*context_, policy_, nullptr).ok());
  ASSERT_EQ(RunHandshake(session, server), HandshakeResult::kDone) << session.error();
  EXPECT_TRUE(session.verified());
}

TEST_F(SessionTest, PinOnlyRejectsAWrongPin) {
  MemoryServer server("other_server");
  ASSERT_TRUE(server.ok());
  Session session;
  policy_.auth_name = "upstream.test";
  policy_.pins = {ReadPin("server")};
  policy_.pin_only = true;
  ASSERT_TRUE(session.Start(*context_, policy_, nullptr).ok());
  EXPECT_EQ(RunHandshake(session, server), HandshakeResult::kClientError);
  EXPECT_FALSE(session.verified());
  EXPECT_TRUE(session.pin_mismatch());
}

}  // namespace
}  // namespace dotproxy::tls
