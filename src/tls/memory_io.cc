#include "dotproxy/tls/memory_io.h"

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfio.h>

#include <algorithm>
#include <cstring>

namespace dotproxy::tls {

MemoryIo::MemoryIo() : inbound_(new uint8_t[kInboundCapacity]) {
  outbound_.reserve(kOutboundReserve);
}

void MemoryIo::Attach(WOLFSSL* ssl) {
  wolfSSL_SSLSetIORecv(ssl, &MemoryIo::RecvCallback);
  wolfSSL_SSLSetIOSend(ssl, &MemoryIo::SendCallback);
  wolfSSL_SetIOReadCtx(ssl, this);
  wolfSSL_SetIOWriteCtx(ssl, this);
}

void MemoryIo::Clear() {
  in_begin_ = in_end_ = 0;
  outbound_.clear();
}

std::span<uint8_t> MemoryIo::InboundSpace() {
  if (in_begin_ == in_end_) {
    in_begin_ = in_end_ = 0;
  } else if (in_begin_ > 0 && kInboundCapacity - in_end_ < kInboundCapacity / 4) {
    std::memmove(inbound_.get(), inbound_.get() + in_begin_, in_end_ - in_begin_);
    in_end_ -= in_begin_;
    in_begin_ = 0;
  }
  return {inbound_.get() + in_end_, kInboundCapacity - in_end_};
}

int MemoryIo::RecvCallback(WOLFSSL*, char* buf, int size, void* ctx) {
  auto* self = static_cast<MemoryIo*>(ctx);
  const size_t available = self->in_end_ - self->in_begin_;
  // An empty buffer means "not yet": the shard sees a peer's close on the
  // socket itself and drops the session.
  if (available == 0) return WOLFSSL_CBIO_ERR_WANT_READ;
  const size_t n = std::min(available, static_cast<size_t>(size));
  std::memcpy(buf, self->inbound_.get() + self->in_begin_, n);
  self->in_begin_ += n;
  return static_cast<int>(n);
}

int MemoryIo::SendCallback(WOLFSSL*, char* buf, int size, void* ctx) {
  auto* self = static_cast<MemoryIo*>(ctx);
  self->outbound_.insert(self->outbound_.end(), buf, buf + size);
  return size;
}

}  // namespace dotproxy::tls
