#pragma once
// The memory-buffer "socket" under a wolfSSL object, shared by the client
// (tls::Session) and the server (tls::ServerSession) sides: the shard's
// reactor receives ciphertext into InboundSpace() and sends outbound();
// wolfSSL reads and writes those buffers through RecvCallback/SendCallback,
// with the MemoryIo as their I/O context. Both buffers are allocated once,
// when the owner is constructed (a connection slot), not per connection;
// `outbound` grows past its reservation only if one flush encrypts more
// than that. One thread.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

struct WOLFSSL;

namespace dotproxy::tls {

class MemoryIo {
 public:
  // Room for a few full TLS records (16 KiB + overhead each).
  static constexpr size_t kInboundCapacity = 64 * 1024;
  static constexpr size_t kOutboundReserve = 64 * 1024;

  MemoryIo();
  MemoryIo(const MemoryIo&) = delete;
  MemoryIo& operator=(const MemoryIo&) = delete;

  // Installs the callbacks and this buffer pair on `ssl` (per object, so the
  // context's callbacks do not matter).
  void Attach(WOLFSSL* ssl);
  void Clear();

  // Ciphertext intake: receive into InboundSpace(), then CommitInbound(n).
  std::span<uint8_t> InboundSpace();
  void CommitInbound(size_t n) { in_end_ += n; }
  size_t inbound_pending() const { return in_end_ - in_begin_; }

  // Ciphertext waiting to be sent. The caller swaps it out and keeps it
  // alive until the send completes.
  std::vector<uint8_t>& outbound() { return outbound_; }
  size_t outbound_bytes() const { return outbound_.size(); }
  size_t outbound_capacity() const { return outbound_.capacity(); }

  static int RecvCallback(WOLFSSL* ssl, char* buf, int size, void* ctx);
  static int SendCallback(WOLFSSL* ssl, char* buf, int size, void* ctx);

 private:
  std::unique_ptr<uint8_t[]> inbound_;
  size_t in_begin_ = 0;
  size_t in_end_ = 0;
  std::vector<uint8_t> outbound_;
};

}  // namespace dotproxy::tls
