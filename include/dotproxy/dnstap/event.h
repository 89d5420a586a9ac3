#pragma once
// One dnstap event as a shard hands it to the writer thread: the fixed
// fields (who, when, how) and the DNS message bytes, copied as they are.
// The protobuf encoding (encode.h) happens on the writer thread.
// A plain value, no pointers: it is copied byte for byte through a ring.

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace dotproxy::dnstap {

// The dnstap Message.Type values this proxy writes (dnstap.proto).
enum class MessageType : uint8_t {
  kClientQuery = 5,
  kClientResponse = 6,
  kForwarderQuery = 7,
  kForwarderResponse = 8,
};
// dnstap.proto's SocketProtocol values.
enum class SocketProtocol : uint8_t { kUdp = 1, kTcp = 2, kDot = 3, kDoh = 4 };

// A set of MessageType, one bit each (bit = the type's value).
using MessageMask = uint32_t;
constexpr MessageMask Bit(MessageType type) { return MessageMask{1} << static_cast<int>(type); }
inline constexpr MessageMask kAllMessages =
    Bit(MessageType::kClientQuery) | Bit(MessageType::kClientResponse) |
    Bit(MessageType::kForwarderQuery) | Bit(MessageType::kForwarderResponse);
// The words of --dnstap-messages, in MessageType order.
inline constexpr std::string_view kMessageWords =
    "client-query|client-response|forwarder-query|forwarder-response";

// Parses "client-query,forwarder-response" (comma-separated words of
// kMessageWords, at least one).
absl::StatusOr<MessageMask> ParseMessageTypes(std::string_view text);

// An address as dnstap carries it: 4 or 16 bytes and a port (host order).
struct EventAddress {
  uint8_t length = 0;  // 0: absent, 4: IPv4, 16: IPv6
  uint8_t bytes[16] = {};
  uint16_t port = 0;

  // From a sockaddr_in/sockaddr_in6; absent for anything else or null.
  static EventAddress From(const sockaddr* address);
};

// The fixed part of an event; the DNS message follows it in the ring.
struct EventHeader {
  MessageType type = MessageType::kClientQuery;
  SocketProtocol protocol = SocketProtocol::kUdp;
  EventAddress query_address;     // who asked: the client, or this proxy
  EventAddress response_address;  // who answers: this proxy, or the upstream
  // Steady-clock nanoseconds (the writer converts to wall time); 0: absent.
  int64_t query_time_ns = 0;
  int64_t response_time_ns = 0;
  uint32_t message_length = 0;
};

}  // namespace dotproxy::dnstap
