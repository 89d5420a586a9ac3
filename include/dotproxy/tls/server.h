#pragma once
// The server side of TLS on wolfSSL (DNS-over-TLS listener, RFC 7858; the
// DoH listener terminates TLS the same way), driven by an external event
// loop exactly as the client side: wolfSSL never touches a socket, the
// shard's reactor moves ciphertext through the session's MemoryIo.
//
//   control thread:  auto context = ServerContext::Create(options, keys);   // PEM files read here
//   shard thread:    session.Start(*context, "dot");   // one per accepted connection
//                    session.InboundSpace() / CommitInbound(n)  <- recv
//                    session.Handshake() until kDone, then Read()/Write()
//                    session.outbound()                          -> send
//
// A ServerContext is immutable once created and shared (shared_ptr) by every
// shard: wolfSSL_new takes the context's reference-count lock, once per
// handshake, never per query. A session keeps a reference to the context it
// started with, so a reload (a new context) never pulls one from under an
// established connection: old sessions keep theirs until they close.
//
// Session tickets: the proxy owns the keys (TicketKeys), no wolfSSL session
// cache is used (it takes a global mutex). A ticket key is derived from a
// process secret and the current rotation period, so every shard computes
// the same key with no shared mutable state and no lock: a ticket issued by
// one shard resumes on any other. Keys rotate every kTicketRotation; a
// ticket sealed in the previous period is still accepted (and replaced by a
// fresh one), so a ticket lives between one and two periods.

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "dotproxy/tls/memory_io.h"

struct WOLFSSL_CTX;
struct WOLFSSL;

namespace dotproxy::tls {

// How often the ticket key changes.
inline constexpr std::chrono::seconds kTicketRotation{3600};

// The secret ticket keys are derived from (random per process, or carried
// across a reload). Immutable, shared by the contexts that use it.
class TicketKeys {
 public:
  static std::shared_ptr<const TicketKeys> Generate();
  // For tests: a clock offset in seconds added to the wall clock.
  void set_clock_offset_for_test(int64_t seconds) const { offset_ = seconds; }

  // The wolfSSL ticket callback's work (see ServerContext): seal/open the
  // session state in `ticket` in place with ChaCha20-Poly1305. Returns a
  // WOLFSSL_TICKET_RET_* value.
  int Seal(uint8_t name[16], uint8_t iv[16], uint8_t mac[32], uint8_t* ticket, int length,
           int* out_length) const;
  int Open(const uint8_t name[16], const uint8_t iv[16], const uint8_t mac[32], uint8_t* ticket,
           int length, int* out_length) const;

 private:
  TicketKeys() = default;
  uint64_t Period() const;
  void KeyFor(uint64_t period, uint8_t key[32]) const;

  std::array<uint8_t, 32> secret_{};
  std::array<uint8_t, 8> id_{};  // the key name's first half: "issued by this process"
  mutable int64_t offset_ = 0;   // tests only; set before any handshake
};

struct ServerOptions {
  std::string cert_file;       // PEM chain, leaf first (--tls-cert)
  std::string key_file;        // PEM private key (--tls-key)
  std::string client_ca_file;  // PEM; when set a client certificate from it is required
};

class ServerContext {
 public:
  // Reads and checks the PEM files (errors name the option and the file).
  // TLS 1.2 minimum, 1.3 preferred, X25519 preferred, AEAD suites only.
  // `keys` seals the session tickets; null: new keys.
  static absl::StatusOr<std::shared_ptr<const ServerContext>> Create(
      const ServerOptions& options, std::shared_ptr<const TicketKeys> keys = nullptr);
  ~ServerContext();
  ServerContext(const ServerContext&) = delete;
  ServerContext& operator=(const ServerContext&) = delete;

  WOLFSSL_CTX* get() const { return ctx_; }
  const ServerOptions& options() const { return options_; }
  bool requires_client_cert() const { return !options_.client_ca_file.empty(); }
  const std::shared_ptr<const TicketKeys>& ticket_keys() const { return keys_; }

 private:
  ServerContext(WOLFSSL_CTX* ctx, ServerOptions options, std::shared_ptr<const TicketKeys> keys)
      : ctx_(ctx), options_(std::move(options)), keys_(std::move(keys)) {}
  WOLFSSL_CTX* ctx_;
  ServerOptions options_;
  std::shared_ptr<const TicketKeys> keys_;
};

// One client connection's TLS. Reusable: Start() after Reset() (a
// connection slot keeps its session object and buffers for its lifetime).
class ServerSession : private MemoryIo {
 public:
  enum class Step : uint8_t { kDone, kWantRead, kError };
  // Why a handshake failed, for the counters.
  enum class Failure : uint8_t {
    kNone,
    kNoClientCert,   // mTLS: the client sent no certificate
    kBadClientCert,  // mTLS: a certificate not from the client CA (or expired, ...)
    kProtocol,       // anything else: garbage, alerts, version or ALPN mismatch
  };

  ServerSession() = default;
  ~ServerSession();
  ServerSession(const ServerSession&) = delete;
  ServerSession& operator=(const ServerSession&) = delete;

  // Prepares a handshake with `context` (kept alive until Reset). `alpn` is
  // the protocol this listener speaks ("dot", "h2", comma-separated for
  // several, in preference order); a client offering ALPN without it is
  // refused (RFC 7301 no_application_protocol), a client offering none is
  // served.
  absl::Status Start(std::shared_ptr<const ServerContext> context, std::string_view alpn);
  // Frees the wolfSSL object (and the context reference) and the buffers' contents.
  void Reset();
  bool active() const { return ssl_ != nullptr; }

  using MemoryIo::CommitInbound;
  using MemoryIo::inbound_pending;
  using MemoryIo::InboundSpace;
  using MemoryIo::outbound;
  using MemoryIo::outbound_capacity;

  // Advances the handshake. kWantRead: send outbound() and wait for bytes.
  // outbound() may hold an alert after kError: send it before closing.
  Step Handshake();
  // Decrypts into `plain`: bytes (> 0), 0 when more ciphertext is needed,
  // -1 when the peer closed (close_notify) or the stream failed.
  int Read(std::span<uint8_t> plain);
  // Encrypts `plain` into outbound() as few records as wolfSSL allows.
  bool Write(std::span<const uint8_t> plain);
  // How many of `plain_size` bytes Write can take now without outbound()
  // growing past `capacity` bytes of ciphertext, counting each record's
  // header, tag and padding: a bound on the send buffers. 0 before the
  // handshake is done.
  size_t PlaintextFitting(size_t plain_size, size_t capacity) const;

  bool handshake_done() const { return handshake_done_; }
  bool resumed() const { return resumed_; }
  Failure failure() const { return failure_; }
  const std::string& error() const { return error_; }
  // The ALPN protocol agreed ("dot", "h2"), empty when the client sent none.
  std::string_view alpn() const;
  const ServerContext* context() const { return context_.get(); }

 private:
  void RecordError(int ret);

  WOLFSSL* ssl_ = nullptr;
  std::shared_ptr<const ServerContext> context_;
  std::string error_;
  Failure failure_ = Failure::kNone;
  bool handshake_done_ = false;
  bool resumed_ = false;
};

}  // namespace dotproxy::tls
