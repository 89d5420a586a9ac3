#pragma once
// A real wolfSSL server whose "socket" is two byte queues, for driving
// dotproxy::tls::Session without a network: the caller shuttles ciphertext
// between the session's buffers and inbound()/outbound() by hand, in
// whatever pieces it likes. Shared by tests/tls/session_test.cc and
// bench/tls/client_benchmark.cc. One thread; call wolfSSL_Init first.

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <vector>

namespace dotproxy::tls::testing {

class MemoryServer {
 public:
  // Loads `cert_name`.pem/.key from `dir` (tests/tls/make_test_pki.sh output).
  MemoryServer(const std::string& dir, const std::string& cert_name) {
    ctx_ = wolfSSL_CTX_new(wolfSSLv23_server_method());
    if (ctx_ == nullptr) return;
    if (wolfSSL_CTX_use_certificate_chain_file(ctx_, (dir + "/" + cert_name + ".pem").c_str()) !=
            WOLFSSL_SUCCESS ||
        wolfSSL_CTX_use_PrivateKey_file(ctx_, (dir + "/" + cert_name + ".key").c_str(),
                                        WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS) {
      return;
    }
    ssl_ = wolfSSL_new(ctx_);
    if (ssl_ == nullptr) return;
    // Per-object callbacks: the client's context installs its own.
    wolfSSL_SSLSetIORecv(ssl_, &MemoryServer::Recv);
    wolfSSL_SSLSetIOSend(ssl_, &MemoryServer::Send);
    wolfSSL_SetIOReadCtx(ssl_, this);
    wolfSSL_SetIOWriteCtx(ssl_, this);
  }
  ~MemoryServer() {
    if (ssl_ != nullptr) wolfSSL_free(ssl_);
    if (ctx_ != nullptr) wolfSSL_CTX_free(ctx_);
  }
  MemoryServer(const MemoryServer&) = delete;
  MemoryServer& operator=(const MemoryServer&) = delete;

  bool ok() const { return ssl_ != nullptr; }
  WOLFSSL* ssl() const { return ssl_; }
  std::deque<uint8_t>& inbound() { return inbound_; }
  std::deque<uint8_t>& outbound() { return outbound_; }

  // Runs wolfSSL_accept once: true when done, false when it wants bytes.
  // A hard failure is recorded in failed().
  bool Accept() {
    const int ret = wolfSSL_accept(ssl_);
    if (ret == WOLFSSL_SUCCESS) return true;
    const int code = wolfSSL_get_error(ssl_, ret);
    if (code != WOLFSSL_ERROR_WANT_READ && code != WOLFSSL_ERROR_WANT_WRITE) failed_ = true;
    return false;
  }
  bool failed() const { return failed_; }

  // Encrypts `plain` with one wolfSSL_write call.
  bool Write(std::span<const uint8_t> plain) {
    return wolfSSL_write(ssl_, plain.data(), static_cast<int>(plain.size())) ==
           static_cast<int>(plain.size());
  }

  // Decrypts what the client sent; returns the plaintext read so far.
  std::vector<uint8_t> ReadAll() {
    std::vector<uint8_t> plain;
    uint8_t buffer[4096];
    while (true) {
      const int n = wolfSSL_read(ssl_, buffer, sizeof(buffer));
      if (n <= 0) break;
      plain.insert(plain.end(), buffer, buffer + n);
    }
    return plain;
  }

 private:
  static int Recv(WOLFSSL*, char* buf, int size, void* ctx) {
    auto* self = static_cast<MemoryServer*>(ctx);
    if (self->inbound_.empty()) return WOLFSSL_CBIO_ERR_WANT_READ;
    const size_t n = std::min(self->inbound_.size(), static_cast<size_t>(size));
    std::copy_n(self->inbound_.begin(), n, buf);
    self->inbound_.erase(self->inbound_.begin(), self->inbound_.begin() + n);
    return static_cast<int>(n);
  }
  static int Send(WOLFSSL*, char* buf, int size, void* ctx) {
    auto* self = static_cast<MemoryServer*>(ctx);
    self->outbound_.insert(self->outbound_.end(), buf, buf + size);
    return size;
  }

  WOLFSSL_CTX* ctx_ = nullptr;
  WOLFSSL* ssl_ = nullptr;
  std::deque<uint8_t> inbound_;
  std::deque<uint8_t> outbound_;
  bool failed_ = false;
};

}  // namespace dotproxy::tls::testing
