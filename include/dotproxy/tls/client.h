#pragma once
// DNS-over-TLS client side on wolfSSL, driven by an external event loop.
//
// wolfSSL never touches a socket: the shard's io_uring receives ciphertext
// into Session::InboundSpace() and sends Session::outbound(); wolfSSL reads
// and writes those buffers through custom I/O callbacks. A ClientContext is
// configured once (control plane) and then only used by its owner shard to
// create sessions; a Session belongs to one upstream connection.

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "dotproxy/tls/memory_io.h"

struct WOLFSSL_CTX;
struct WOLFSSL;
struct WOLFSSL_SESSION;

namespace dotproxy::tls {

// SHA-256 of a DER SubjectPublicKeyInfo (RFC 7858 §4.2 pin).
using SpkiPin = std::array<uint8_t, 32>;

// The resumable TLS session of one upstream, kept by the shard that talks to
// it (never wolfSSL's internal cache: it takes a global lock). Move-only.
class ResumptionCache {
 public:
  ResumptionCache() = default;
  ResumptionCache(const ResumptionCache&) = delete;
  ResumptionCache& operator=(const ResumptionCache&) = delete;
  ~ResumptionCache();
  // Takes ownership of `session` (a copy), replacing the previous one.
  void Store(WOLFSSL_SESSION* session);
  WOLFSSL_SESSION* get() const { return session_; }

 private:
  WOLFSSL_SESSION* session_ = nullptr;
};

// How a session authenticates its peer.
struct PeerPolicy {
  std::string auth_name;       // SNI (DNS names only) and, unless pin_only, the name check
  std::vector<SpkiPin> pins;   // when set, some certificate in the chain must match one
  bool pin_only = false;       // pins replace CA and name validation (operator's choice)
};

// Call once before any thread creates a context.
void GlobalInit();

class ClientContext {
 public:
  // Trust anchors from `ca_file` (PEM), or the system store when empty. TLS
  // 1.2 is the minimum; 1.3 is negotiated when the server offers it. Peer
  // verification is always on.
  static absl::StatusOr<std::unique_ptr<ClientContext>> Create(const std::string& ca_file);
  ~ClientContext();

  WOLFSSL_CTX* get() const { return ctx_; }

 private:
  explicit ClientContext(WOLFSSL_CTX* ctx) : ctx_(ctx) {}
  WOLFSSL_CTX* ctx_;
};

class Session : private MemoryIo {
 public:
  enum class Step : uint8_t { kDone, kWantRead, kError };

  Session();
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Prepares a fresh handshake. `auth_name` is checked against the peer
  // certificate; a DNS name is also sent as SNI, an IP literal is matched
  // against IP SANs (RFC 6066 forbids IPs in SNI).
  //
  // `cache` (may be null) offers its session for resumption and receives new
  // tickets; it must outlive this session's handshake and reads.
  absl::Status Start(const ClientContext& context, const PeerPolicy& policy,
                     ResumptionCache* cache);
  // Drops the wolfSSL object and all buffered bytes.
  void Reset();

  // Ciphertext intake: receive into InboundSpace(), then CommitInbound(n).
  using MemoryIo::CommitInbound;
  using MemoryIo::InboundSpace;

  // Advances the handshake. kWantRead: send outbound() and wait for bytes.
  Step Handshake();

  // Decrypts into `plain`. Returns the byte count (> 0), 0 when more
  // ciphertext is needed, -1 when the peer closed or the stream failed.
  int Read(std::span<uint8_t> plain);

  // Encrypts `plain` as TLS record(s) appended to outbound(). One call per
  // batch keeps many DNS messages in one record. False on failure.
  bool Write(std::span<const uint8_t> plain);

  // Ciphertext waiting to be sent. The caller swaps it out and keeps it
  // alive until the send completes.
  using MemoryIo::outbound;

  // The last failure in words (certificate verification, alert, ...).
  const std::string& error() const { return error_; }
  // True after a handshake that resumed a cached session.
  bool resumed() const { return resumed_; }
  // True once the handshake completed and the peer passed every check.
  bool verified() const { return handshake_done_; }
  // "TLSv1.3 TLS13-CHACHA20-POLY1305-SHA256, resumed", for logs.
  std::string Describe() const;
  // True when the last failure was a pin mismatch.
  bool pin_mismatch() const { return pin_mismatch_; }
  // True when the last failure was the peer failing authentication (CA,
  // name, validity, pin), not a dropped connection or a protocol error.
  bool verification_failed() const { return verification_failed_; }

  static int NewSessionCallback(WOLFSSL* ssl, WOLFSSL_SESSION* session);

 private:
  void RecordError(int ret);
  bool PeerMatchesPin();

  WOLFSSL* ssl_ = nullptr;
  std::string error_;
  bool handshake_done_ = false;
  bool resumed_ = false;
  bool pin_mismatch_ = false;
  bool verification_failed_ = false;
  const PeerPolicy* policy_ = nullptr;
  ResumptionCache* cache_ = nullptr;
  WOLFSSL_SESSION* pending_session_ = nullptr;  // received before verification ended
};

}  // namespace dotproxy::tls
