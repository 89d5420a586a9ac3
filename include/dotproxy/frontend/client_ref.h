#pragma once
// The seams between the front ends (UDP, TCP clients) and what answers their
// queries (the forwarder):
//
//   front end --OnQuery(wire, client)--> QuerySink (the forwarder)
//   forwarder --BeginReply/CommitReply, QueryDone--> Replier (the front ends)
//
// A front end parses nothing beyond framing: it hands each received message
// with a ClientRef naming where its answer goes, and learns through
// QueryDone that a query is finished (a TCP client then may resume reading).
// Neither side includes the other. Shard thread only.

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace dotproxy::frontend {

// kTls: a connection of the TLS room (TlsClients), whatever its plaintext
// protocol (DNS-over-TCP framing for DoT, HTTP/2 for DoH); `stream` names
// the query within it (0 for DoT, the HTTP/2 stream id for DoH). The order
// indexes metrics::kTransportNames.
enum class Transport : uint8_t { kUdp, kTcp, kTls };

// Largest query accepted from a client, on any transport; a query slot keeps
// the query for its lifetime, so this bounds the slot size.
inline constexpr size_t kMaxQuerySize = 1024;
// Largest UDP reply we send; larger answers are truncated (TC=1) even for
// clients advertising more, so a UDP reply buffer has a fixed size.
inline constexpr size_t kMaxUdpReply = 4096;

// Where an answer goes back to. A value: the forwarder keeps a copy for the
// lifetime of the query, so the UDP source address is copied in.
struct ClientRef {
  Transport transport = Transport::kUdp;
  uint16_t udp_socket = 0;              // UDP: index of the receiving socket
  socklen_t address_length = 0;         // the client's address (UDP: where the
  sockaddr_in6 address{};               //   answer goes; IPv4 fits in it)
  uint32_t tcp_client = 0;              // TCP, TLS: the room's client table index
  uint32_t tcp_generation = 0;          //   and generation (stale after close)
  uint32_t stream = 0;                  // TLS: the query's stream on the connection

  const sockaddr* udp_address() const { return reinterpret_cast<const sockaddr*>(&address); }
  // The client's address on either transport (rate limiting); family
  // AF_UNSPEC when unknown.
  const sockaddr* source() const { return reinterpret_cast<const sockaddr*>(&address); }

  static ClientRef Udp(uint16_t socket, const sockaddr* source, socklen_t length) {
    ClientRef client;
    client.transport = Transport::kUdp;
    client.udp_socket = socket;
    client.address_length = length <= sizeof(client.address) ? length : sizeof(client.address);
    std::memcpy(&client.address, source, client.address_length);
    return client;
  }
  static ClientRef Tls(uint32_t client_index, uint32_t generation, uint32_t stream,
                       const sockaddr* peer = nullptr, socklen_t length = 0) {
    ClientRef client = Tcp(client_index, generation, peer, length);
    client.transport = Transport::kTls;
    client.stream = stream;
    return client;
  }
  static ClientRef Tcp(uint32_t client_index, uint32_t generation,
                       const sockaddr* peer = nullptr, socklen_t length = 0) {
    ClientRef client;
    client.transport = Transport::kTcp;
    client.tcp_client = client_index;
    client.tcp_generation = generation;
    if (peer != nullptr) {
      client.address_length = length <= sizeof(client.address) ? length : sizeof(client.address);
      std::memcpy(&client.address, peer, client.address_length);
    }
    return client;
  }
};

// Receives the queries the front ends read. `wire` borrows the front end's
// buffer for the duration of the call (the sink may patch it in place).
class QuerySink {
 public:
  virtual ~QuerySink() = default;
  virtual void OnQuery(std::span<uint8_t> wire, const ClientRef& client) = 0;
};

// Sends answers to clients, whatever their transport.
class Replier {
 public:
  virtual ~Replier() = default;

  // Space for an answer of at most `max_length` bytes to `client`, written in
  // place (no extra copy). Empty when the client is gone or no buffer is free
  // (counted by the front end); then nothing is to be committed. At most one
  // reply is open at a time.
  virtual std::span<uint8_t> BeginReply(const ClientRef& client, size_t max_length) = 0;
  // Sends the first `length` bytes of the open reply; 0 abandons it.
  virtual void CommitReply(const ClientRef& client, size_t length) = 0;
  // Every query a front end handed over ends with exactly one QueryDone,
  // answered or not (a query refused before it was accepted included).
  virtual void QueryDone(const ClientRef& client) = 0;
  // The address `client`'s query arrived on (dnstap), or null when unknown.
  // Valid until the next call into the front end.
  virtual const sockaddr* LocalAddress(const ClientRef& /*client*/) const { return nullptr; }

  // Copies `wire` out to `client`.
  void Reply(const ClientRef& client, std::span<const uint8_t> wire) {
    std::span<uint8_t> space = BeginReply(client, wire.size());
    if (space.size() < wire.size()) {
      if (!space.empty()) CommitReply(client, 0);
      return;
    }
    std::memcpy(space.data(), wire.data(), wire.size());
    CommitReply(client, wire.size());
  }
};

}  // namespace dotproxy::frontend
