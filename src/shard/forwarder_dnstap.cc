// The forwarder's dnstap events: what a shard copies into its dnstap ring
// (dnstap/tap.h) for a client's query and answer and for a query to and an
// answer from an upstream. Only called with dnstap on; no allocation.

#include "dotproxy/shard/forwarder.h"

namespace dotproxy::shard {
namespace {

int64_t Nanoseconds(io::Clock::time_point time) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(time.time_since_epoch()).count();
}

bool IsQuery(dnstap::MessageType type) {
  return type == dnstap::MessageType::kClientQuery || type == dnstap::MessageType::kForwarderQuery;
}

// Query events carry the query time (now); response events the response
// time (now) and, when known, the query's.
void SetTimes(dnstap::EventHeader& header, dnstap::MessageType type, io::Clock::time_point now,
              io::Clock::time_point query_time) {
  if (IsQuery(type)) {
    header.query_time_ns = Nanoseconds(now);
  } else {
    header.response_time_ns = Nanoseconds(now);
    if (query_time != io::Clock::time_point{}) header.query_time_ns = Nanoseconds(query_time);
  }
}

}  // namespace

void Forwarder::TapClient(dnstap::MessageType type, const frontend::ClientRef& client,
                          std::span<const uint8_t> wire, io::Clock::time_point query_time) {
  if (!tap_->wants(type)) return;
  dnstap::EventHeader header;
  header.type = type;
  // A TLS client speaks DoT (stream 0) or DoH: an HTTP/2 stream id, which
  // a client's request never has as 0 (RFC 9113 §5.1.1).
  header.protocol = client.transport == frontend::Transport::kUdp   ? dnstap::SocketProtocol::kUdp
                    : client.transport == frontend::Transport::kTcp ? dnstap::SocketProtocol::kTcp
                    : client.stream != 0                            ? dnstap::SocketProtocol::kDoh
                                                                    : dnstap::SocketProtocol::kDot;
  header.query_address = dnstap::EventAddress::From(client.source());
  header.response_address = dnstap::EventAddress::From(replier_.LocalAddress(client));
  SetTimes(header, type, clock_.now(), query_time);
  tap_->Log(header, wire);
}

void Forwarder::TapUpstream(dnstap::MessageType type, const upstream::Binding& binding,
                            std::span<const uint8_t> wire, io::Clock::time_point query_time) {
  if (!tap_->wants(type)) return;
  dnstap::EventHeader header;
  header.type = type;
  const sockaddr* address = nullptr;
  const sockaddr* local = nullptr;
  bool tls = true, udp = false;
  if (router_.DescribeUpstream(binding, &address, &local, &tls, &udp)) {
    // The upstream answers: it is the response address; this proxy asks:
    // its end of the connection is the query address (dnstap.proto).
    header.response_address = dnstap::EventAddress::From(address);
    if (local != nullptr) header.query_address = dnstap::EventAddress::From(local);
  }
  // DNS over TLS or HTTPS to an upstream is logged as TCP, which it runs
  // on: the schema's DOT (3) and DOH (4) are recent, and dnstap-read in
  // Debian 12 (BIND 9.18) prints them as UDP.
  (void)tls;
  header.protocol = udp ? dnstap::SocketProtocol::kUdp : dnstap::SocketProtocol::kTcp;
  SetTimes(header, type, clock_.now(), query_time);
  tap_->Log(header, wire);
}

}  // namespace dotproxy::shard
