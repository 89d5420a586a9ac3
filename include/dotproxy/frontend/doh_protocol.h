#pragma once
// The DoH listener's protocol for the TLS room: what the shard gives
// TlsClients::Open for --listen-https listeners. The protocol itself
// (src/frontend/doh_protocol.h) adapts http::DohServerSession to the
// StreamProtocol seam. Shard thread only.

#include <cstddef>

#include "dotproxy/frontend/stream_protocol.h"
#include "dotproxy/frontend/tls_clients.h"
#include "dotproxy/metrics/stats.h"

namespace dotproxy::frontend {

// A DoH connection slot at worst, on top of the TLS room's own (everything
// touched): decrypted input (16 KiB), the answer being written (64 KiB),
// the stream slots' queries (100 x 1 KiB) and the nghttp2 pool (512 KiB).
inline constexpr size_t kDohClientBytes = 16 * 1024 + 65535 + 100 * 1024 + 512 * 1024;
// What one TLS connection slot may commit at worst, by the listeners there are.
constexpr size_t TlsSlotBytes(bool dot, bool https) {
  return (dot || https ? TlsClients::kClientBytes : 0) + (https ? kDohClientBytes : 0);
}

// Makes one DoH protocol per connection slot (at Open), counting in the
// shard's doh_* rows of `stats`, which must outlive the room.
StreamProtocolFactory DohProtocolFactory(metrics::ShardStats& stats);

}  // namespace dotproxy::frontend
