// What a shard commits at start and what its clients may add: the figures
// main prints and checks against the machine before anything is bound
// (include/dotproxy/shard/shard.h).

#include <algorithm>

#include "dotproxy/cache/packet_cache.h"
#include "dotproxy/dnstap/tap.h"
#include "dotproxy/frontend/doh_protocol.h"
#include "dotproxy/frontend/rate_limiter.h"
#include "dotproxy/frontend/tcp_clients.h"
#include "dotproxy/shard/query_table.h"
#include "dotproxy/shard/shard.h"
#include "dotproxy/upstream/connection.h"
#include "dotproxy/upstream/id_table.h"
#include "dotproxy/upstream/zone_routing.h"
#include "src/shard/sizing.h"

namespace dotproxy::shard {

size_t CacheEntriesPerShard(const config::Config& config) {
  if (config.cache_size == 0) return 0;
  return std::max<size_t>(1, config.cache_size / static_cast<size_t>(std::max(1, config.threads)));
}

ShardMemory EstimateShardMemory(const config::Config& config) {
  ShardMemory memory;
  memory.cache_bytes = cache::PacketCache::MemoryBytes(CacheEntriesPerShard(config));
  const size_t connections =
      upstream::GroupedUpstreamCount(config) *
      static_cast<size_t>(config.max_connections_per_upstream);
  // Per connection: ID table, framer (two largest messages), plaintext and
  // ciphertext batches, the close scratch list.
  const size_t per_connection = upstream::IdTable::kIds * sizeof(uint32_t) * 2 +
                                2 * (upstream::kMaxStreamMessage + 2) + 2 * 64 * 1024;
  // A udp:// upstream's sockets also keep a copy of each query in flight
  // (the pool's datagram slots, twice the in-flight cap), and the upstream
  // has one more connection: the plain TCP one its TC=1 answers are
  // retried on.
  const size_t udp_upstreams = upstream::GroupedUpstreamCount(config, config::Transport::kUdp);
  const size_t datagram_bytes =
      udp_upstreams * static_cast<size_t>(config.max_connections_per_upstream) *
      (2 * static_cast<size_t>(config.max_inflight_per_connection) + 16) *
      (upstream::kMaxDatagramQuery + 48);
  memory.fixed_bytes =
      static_cast<size_t>(config.max_inflight) * sizeof(QuerySlot) +
      size_t{kReactorOptions.datagram_buffers} * kReactorOptions.datagram_buffer_size +
      kUdpReplySlots * (frontend::kMaxUdpReply + 128) +
      (connections + udp_upstreams) * per_connection + datagram_bytes +
      (config.rate_limit > 0 ? frontend::RateLimiter::kMemoryBytes : 0) +
      (config.dnstap.empty() ? 0 : dnstap::kRingBytesPerShard);
  memory.tcp_worst_bytes = static_cast<size_t>(config.max_tcp_clients) *
      (frontend::TcpClients::kClientBytes +
       frontend::TlsSlotBytes(!config.listen_tls.empty(), !config.listen_https.empty()));
  return memory;
}

}  // namespace dotproxy::shard
