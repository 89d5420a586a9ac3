#include "dotproxy/tls/server.h"

#include <sys/random.h>
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/error-ssl.h>
#include <wolfssl/wolfcrypt/chacha20_poly1305.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/hmac.h>
#include <wolfssl/wolfio.h>

#include <algorithm>
#include <cstring>
#include <vector>
#include <ctime>

#include "absl/strings/str_cat.h"

namespace dotproxy::tls {
namespace {

static_assert(WOLFSSL_TICKET_NAME_SZ == 16 && WOLFSSL_TICKET_IV_SZ == 16 &&
              WOLFSSL_TICKET_MAC_SZ == 32);

bool FillRandom(void* out, size_t length) {
  auto* bytes = static_cast<uint8_t*>(out);
  while (length > 0) {
    const ssize_t n = getrandom(bytes, length, 0);
    if (n <= 0) return false;
    bytes += n;
    length -= static_cast<size_t>(n);
  }
  return true;
}

// Additional data of a sealed ticket: its name, nonce and length, so none of
// them can be swapped.
size_t TicketAad(const uint8_t name[16], const uint8_t iv[16], int length, uint8_t aad[36]) {
  std::memcpy(aad, name, 16);
  std::memcpy(aad + 16, iv, 16);
  const uint32_t n = static_cast<uint32_t>(length);
  std::memcpy(aad + 32, &n, 4);
  return 36;
}

int TicketCallback(WOLFSSL* ssl, unsigned char name[WOLFSSL_TICKET_NAME_SZ],
                   unsigned char iv[WOLFSSL_TICKET_IV_SZ], unsigned char mac[WOLFSSL_TICKET_MAC_SZ],
                   int enc, unsigned char* ticket, int length, int* out_length, void*) {
  // The context's ticket context is its TicketKeys (set in Create).
  const auto* keys =
      static_cast<const TicketKeys*>(wolfSSL_CTX_get_TicketEncCtx(wolfSSL_get_SSL_CTX(ssl)));
  if (keys == nullptr) return WOLFSSL_TICKET_RET_FATAL;
  return enc != 0 ? keys->Seal(name, iv, mac, ticket, length, out_length)
                  : keys->Open(name, iv, mac, ticket, length, out_length);
}

int VerifyMode(const ServerOptions& options) {
  return options.client_ca_file.empty()
             ? WOLFSSL_VERIFY_NONE
             : WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT;
}

// A full handshake in memory against `server_ctx` with a throwaway client
// that checks nothing but the server's CertificateVerify signature: the one
// proof that the key belongs to the certificate (wolfSSL_CTX_check_private_key
// in 5.5.4 passes a mismatched EC pair). Control thread, at start and reload.
bool KeyMatchesCertificate(WOLFSSL_CTX* server_ctx) {
  WOLFSSL_CTX* client_ctx = wolfSSL_CTX_new(wolfSSLv23_client_method());
  if (client_ctx == nullptr) return false;
  wolfSSL_CTX_set_verify(client_ctx, WOLFSSL_VERIFY_NONE, nullptr);
  WOLFSSL* client = wolfSSL_new(client_ctx);
  WOLFSSL* server = wolfSSL_new(server_ctx);
  bool ok = false;
  if (client != nullptr && server != nullptr) {
    MemoryIo client_io;
    MemoryIo server_io;
    client_io.Attach(client);
    server_io.Attach(server);
    wolfSSL_set_verify(server, WOLFSSL_VERIFY_NONE, nullptr);  // no client certificate here
    bool client_done = false;
    bool server_done = false;
    auto move = [](MemoryIo& from, MemoryIo& to) {
      std::vector<uint8_t>& bytes = from.outbound();
      const std::span<uint8_t> space = to.InboundSpace();
      const size_t n = std::min(bytes.size(), space.size());
      std::memcpy(space.data(), bytes.data(), n);
      to.CommitInbound(n);
      bytes.erase(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    };
    for (int round = 0; round < 20 && !(client_done && server_done); ++round) {
      if (!client_done) {
        const int ret = wolfSSL_connect(client);
        client_done = ret == WOLFSSL_SUCCESS;
        const int code = client_done ? 0 : wolfSSL_get_error(client, ret);
        if (!client_done && code != WOLFSSL_ERROR_WANT_READ && code != WOLFSSL_ERROR_WANT_WRITE) break;
      }
      move(client_io, server_io);
      if (!server_done) {
        const int ret = wolfSSL_accept(server);
        server_done = ret == WOLFSSL_SUCCESS;
        const int code = server_done ? 0 : wolfSSL_get_error(server, ret);
        if (!server_done && code != WOLFSSL_ERROR_WANT_READ && code != WOLFSSL_ERROR_WANT_WRITE) break;
      }
      move(server_io, client_io);
    }
    ok = client_done && server_done;
  }
  if (client != nullptr) wolfSSL_free(client);
  if (server != nullptr) wolfSSL_free(server);
  wolfSSL_CTX_free(client_ctx);
  return ok;
}

}  // namespace

std::shared_ptr<const TicketKeys> TicketKeys::Generate() {
  std::shared_ptr<TicketKeys> keys(new TicketKeys());
  if (!FillRandom(keys->secret_.data(), keys->secret_.size()) ||
      !FillRandom(keys->id_.data(), keys->id_.size())) {
    return nullptr;
  }
  return keys;
}

uint64_t TicketKeys::Period() const {
  const int64_t now = static_cast<int64_t>(std::time(nullptr)) + offset_;
  return static_cast<uint64_t>(now) / static_cast<uint64_t>(kTicketRotation.count());
}

// key(period) = HMAC-SHA256(secret, "dotproxy ticket key" || period): one
// HMAC per ticket sealed or opened, on the handshake path only.
void TicketKeys::KeyFor(uint64_t period, uint8_t key[32]) const {
  static constexpr char kLabel[] = "dotproxy ticket key";
  Hmac hmac;
  if (wc_HmacInit(&hmac, nullptr, INVALID_DEVID) != 0) {
    std::memset(key, 0, 32);
    return;
  }
  uint8_t period_bytes[8];
  for (int i = 0; i < 8; ++i) period_bytes[i] = static_cast<uint8_t>(period >> (56 - 8 * i));
  if (wc_HmacSetKey(&hmac, WC_SHA256, secret_.data(), static_cast<word32>(secret_.size())) != 0 ||
      wc_HmacUpdate(&hmac, reinterpret_cast<const byte*>(kLabel), sizeof(kLabel) - 1) != 0 ||
      wc_HmacUpdate(&hmac, period_bytes, sizeof(period_bytes)) != 0 ||
      wc_HmacFinal(&hmac, key) != 0) {
    std::memset(key, 0, 32);
  }
  wc_HmacFree(&hmac);
}

int TicketKeys::Seal(uint8_t name[16], uint8_t iv[16], uint8_t mac[32], uint8_t* ticket,
                     int length, int* out_length) const {
  const uint64_t period = Period();
  std::memcpy(name, id_.data(), 8);
  for (int i = 0; i < 8; ++i) name[8 + i] = static_cast<uint8_t>(period >> (56 - 8 * i));
  if (!FillRandom(iv, 16)) return WOLFSSL_TICKET_RET_FATAL;
  uint8_t key[32];
  KeyFor(period, key);
  uint8_t aad[36];
  const size_t aad_length = TicketAad(name, iv, length, aad);
  std::memset(mac, 0, 32);
  if (wc_ChaCha20Poly1305_Encrypt(key, iv, aad, static_cast<word32>(aad_length), ticket,
                                  static_cast<word32>(length), ticket, mac) != 0) {
    return WOLFSSL_TICKET_RET_FATAL;
  }
  *out_length = length;
  return WOLFSSL_TICKET_RET_OK;
}

int TicketKeys::Open(const uint8_t name[16], const uint8_t iv[16], const uint8_t mac[32],
                     uint8_t* ticket, int length, int* out_length) const {
  // Not ours (another process, an older secret): a full handshake.
  if (std::memcmp(name, id_.data(), 8) != 0) return WOLFSSL_TICKET_RET_REJECT;
  uint64_t period = 0;
  for (int i = 0; i < 8; ++i) period = period << 8 | name[8 + i];
  const uint64_t now = Period();
  if (period != now && period + 1 != now) return WOLFSSL_TICKET_RET_REJECT;  // expired
  uint8_t key[32];
  KeyFor(period, key);
  uint8_t aad[36];
  const size_t aad_length = TicketAad(name, iv, length, aad);
  if (wc_ChaCha20Poly1305_Decrypt(key, iv, aad, static_cast<word32>(aad_length), ticket,
                                  static_cast<word32>(length), mac, ticket) != 0) {
    return WOLFSSL_TICKET_RET_REJECT;
  }
  *out_length = length;
  // Sealed in the previous period: use it, and give the client a fresh one.
  return period == now ? WOLFSSL_TICKET_RET_OK : WOLFSSL_TICKET_RET_CREATE;
}

absl::StatusOr<std::shared_ptr<const ServerContext>> ServerContext::Create(
    const ServerOptions& options, std::shared_ptr<const TicketKeys> keys) {
  if (options.cert_file.empty() || options.key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key are both required");
  }
  if (keys == nullptr) keys = TicketKeys::Generate();
  if (keys == nullptr) return absl::InternalError("cannot draw random ticket keys");
  WOLFSSL_CTX* ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
  if (ctx == nullptr) return absl::InternalError("wolfSSL_CTX_new failed");
  std::shared_ptr<ServerContext> context(new ServerContext(ctx, options, keys));
  if (wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2) != WOLFSSL_SUCCESS) {
    return absl::InternalError("cannot require TLS 1.2 as the minimum");
  }
  if (wolfSSL_CTX_use_certificate_chain_file(ctx, options.cert_file.c_str()) != WOLFSSL_SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", options.cert_file, ": cannot load a PEM certificate chain"));
  }
  if (wolfSSL_CTX_use_PrivateKey_file(ctx, options.key_file.c_str(), WOLFSSL_FILETYPE_PEM) !=
      WOLFSSL_SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", options.key_file, ": cannot load a PEM private key"));
  }
  if (!options.client_ca_file.empty() &&
      wolfSSL_CTX_load_verify_locations(ctx, options.client_ca_file.c_str(), nullptr) !=
          WOLFSSL_SUCCESS) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls-client-ca ", options.client_ca_file, ": cannot load PEM trust anchors"));
  }
  wolfSSL_CTX_set_verify(ctx, VerifyMode(options), nullptr);
  // AEAD suites only, ChaCha20-Poly1305 first (no AES-NI in this wolfSSL
  // build: see client.cc), AES-GCM for clients without it.
  if (wolfSSL_CTX_set_cipher_list(
          ctx,
          "TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:"
          "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
          "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
          "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384") != WOLFSSL_SUCCESS) {
    return absl::InternalError("cannot set the TLS cipher suites");
  }
  // X25519 first: the cheapest key exchange in this build (PLATFORM.md).
  int groups[] = {WOLFSSL_ECC_X25519, WOLFSSL_ECC_SECP256R1, WOLFSSL_ECC_SECP384R1};
  if (wolfSSL_CTX_set_groups(ctx, groups, 3) != WOLFSSL_SUCCESS) {
    return absl::InternalError("cannot set the key exchange groups");
  }
  // Resumption by ticket only: wolfSSL's session cache takes a global mutex.
  wolfSSL_CTX_set_session_cache_mode(ctx, WOLFSSL_SESS_CACHE_OFF);
  if (wolfSSL_CTX_set_TicketEncCb(ctx, &TicketCallback) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_set_TicketEncCtx(ctx, const_cast<TicketKeys*>(keys.get())) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_set_TicketHint(ctx, static_cast<int>(kTicketRotation.count())) !=
          WOLFSSL_SUCCESS) {
    return absl::InternalError("cannot install the session ticket keys");
  }
  wolfSSL_SetIORecv(ctx, &MemoryIo::RecvCallback);
  wolfSSL_SetIOSend(ctx, &MemoryIo::SendCallback);
  if (wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS || !KeyMatchesCertificate(ctx)) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-key ", options.key_file,
                                                   " does not match --tls-cert ",
                                                   options.cert_file));
  }
  return std::shared_ptr<const ServerContext>(std::move(context));
}

ServerContext::~ServerContext() { wolfSSL_CTX_free(ctx_); }

ServerSession::~ServerSession() { Reset(); }

void ServerSession::Reset() {
  if (ssl_ != nullptr) wolfSSL_free(ssl_);
  ssl_ = nullptr;
  context_.reset();
  Clear();
  handshake_done_ = resumed_ = false;
}

absl::Status ServerSession::Start(std::shared_ptr<const ServerContext> context,
                                  std::string_view alpn) {
  Reset();
  error_.clear();
  failure_ = Failure::kNone;
  context_ = std::move(context);
  // wolfSSL allocates the object and its handshake state (tens of KiB) here
  // and frees them in Reset(): once per connection, bounded by the room's
  // connection cap, never per query.
  ssl_ = wolfSSL_new(context_->get());
  if (ssl_ == nullptr) return absl::ResourceExhaustedError("wolfSSL_new failed");
  Attach(ssl_);
  // No wolfSSL_UseKeyShare here: on a server it generates a key pair at
  // once (about 100 us, measured 116-147 us per Start against 21-22
  // without), for every accepted connection, even one that never sends a
  // ClientHello; the key share is made for the group the client offers,
  // chosen by the context's group order (X25519 first).
  if (!alpn.empty()) {
    char list[64];
    if (alpn.size() >= sizeof(list)) return absl::InvalidArgumentError("ALPN list too long");
    std::memcpy(list, alpn.data(), alpn.size());
    list[alpn.size()] = '\0';
    if (wolfSSL_UseALPN(ssl_, list, static_cast<unsigned int>(alpn.size()),
                        WOLFSSL_ALPN_FAILED_ON_MISMATCH) != WOLFSSL_SUCCESS) {
      return absl::InternalError("wolfSSL_UseALPN failed");
    }
  }
  return absl::OkStatus();
}

void ServerSession::RecordError(int ret) {
  const int code = wolfSSL_get_error(ssl_, ret);
  char text[WOLFSSL_MAX_ERROR_SZ] = {};
  wolfSSL_ERR_error_string_n(code, text, sizeof(text));
  error_ = absl::StrCat(text, " (", code, ")");
  if (code == NO_PEER_CERT) {
    failure_ = Failure::kNoClientCert;
  } else if (code == ASN_NO_SIGNER_E || code == ASN_SELF_SIGNED_E || code == ASN_AFTER_DATE_E ||
             code == ASN_BEFORE_DATE_E || code == ASN_SIG_CONFIRM_E || code == VERIFY_CERT_ERROR ||
             code == ASN_PARSE_E) {
    failure_ = Failure::kBadClientCert;
  } else {
    failure_ = Failure::kProtocol;
  }
}

ServerSession::Step ServerSession::Handshake() {
  const int ret = wolfSSL_accept(ssl_);
  if (ret == WOLFSSL_SUCCESS) {
    handshake_done_ = true;
    resumed_ = wolfSSL_session_reused(ssl_) == 1;
    return Step::kDone;
  }
  const int code = wolfSSL_get_error(ssl_, ret);
  if (code == WOLFSSL_ERROR_WANT_READ || code == WOLFSSL_ERROR_WANT_WRITE) return Step::kWantRead;
  RecordError(ret);
  return Step::kError;
}

int ServerSession::Read(std::span<uint8_t> plain) {
  const int ret = wolfSSL_read(ssl_, plain.data(), static_cast<int>(plain.size()));
  if (ret > 0) return ret;
  const int code = wolfSSL_get_error(ssl_, ret);
  if (code == WOLFSSL_ERROR_WANT_READ || code == WOLFSSL_ERROR_WANT_WRITE) return 0;
  if (code != WOLFSSL_ERROR_ZERO_RETURN) RecordError(ret);
  return -1;
}

bool ServerSession::Write(std::span<const uint8_t> plain) {
  const int ret = wolfSSL_write(ssl_, plain.data(), static_cast<int>(plain.size()));
  if (ret == static_cast<int>(plain.size())) return true;
  RecordError(ret);
  return false;
}

size_t ServerSession::PlaintextFitting(size_t plain_size, size_t capacity) const {
  if (ssl_ == nullptr || !handshake_done_) return 0;
  const size_t used = outbound_bytes();
  if (used >= capacity) return 0;
  // wolfSSL cuts a write into records of at most `fragment` bytes; a full
  // record's expansion, plus a cipher block for CBC padding that a shorter
  // record may round up differently, bounds every record's.
  const int fragment = wolfSSL_GetMaxOutputSize(ssl_);
  if (fragment <= 0) return 0;
  const int full = wolfSSL_GetOutputSize(ssl_, fragment);
  if (full < fragment) return 0;
  const size_t record = static_cast<size_t>(fragment);
  const size_t overhead = static_cast<size_t>(full - fragment) + 16;
  const size_t room = capacity - used;
  const size_t whole = room / (record + overhead);
  size_t fits = whole * record;
  const size_t rest = room - whole * (record + overhead);
  if (rest > overhead) fits += rest - overhead;
  return std::min(fits, plain_size);
}

std::string_view ServerSession::alpn() const {
  if (ssl_ == nullptr) return {};
  char* name = nullptr;
  unsigned short size = 0;
  if (wolfSSL_ALPN_GetProtocol(ssl_, &name, &size) != WOLFSSL_SUCCESS || name == nullptr) return {};
  return {name, size};
}

}  // namespace dotproxy::tls
