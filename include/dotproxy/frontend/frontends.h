#pragma once
// The shard's front ends seen as one Replier: answers go to the UDP front end,
// the TCP clients or the TLS clients (DoT; DoH connections of the same room
// too, told apart by the room itself) by the ClientRef's transport. Shard
// thread only.

#include "dotproxy/frontend/client_ref.h"
#include "dotproxy/frontend/tcp_clients.h"
#include "dotproxy/frontend/tls_clients.h"
#include "dotproxy/frontend/udp_frontend.h"

namespace dotproxy::frontend {

class Frontends final : public Replier {
 public:
  Frontends(UdpFrontend& udp, TcpClients& tcp, TlsClients& tls)
      : udp_(udp), tcp_(tcp), tls_(tls) {}

  std::span<uint8_t> BeginReply(const ClientRef& client, size_t max_length) override {
    switch (client.transport) {
      case Transport::kUdp: return udp_.BeginReply(client, max_length);
      case Transport::kTcp: return tcp_.BeginReply(client, max_length);
      case Transport::kTls: return tls_.BeginReply(client, max_length);
    }
    return {};
  }
  void CommitReply(const ClientRef& client, size_t length) override {
    switch (client.transport) {
      case Transport::kUdp: udp_.CommitReply(client, length); break;
      case Transport::kTcp: tcp_.CommitReply(client, length); break;
      case Transport::kTls: tls_.CommitReply(client, length); break;
    }
  }
  const sockaddr* LocalAddress(const ClientRef& client) const override {
    switch (client.transport) {
      case Transport::kUdp: return udp_.LocalAddress(client);
      case Transport::kTcp: return tcp_.LocalAddress(client);
      case Transport::kTls: return tls_.LocalAddress(client);
    }
    return nullptr;
  }
  void QueryDone(const ClientRef& client) override {
    switch (client.transport) {
      // A removed UDP socket closes once its queries are done.
      case Transport::kUdp: udp_.QueryDone(client); break;
      case Transport::kTcp: tcp_.QueryDone(client); break;
      case Transport::kTls: tls_.QueryDone(client); break;
    }
  }

 private:
  UdpFrontend& udp_;
  TcpClients& tcp_;
  TlsClients& tls_;
};

}  // namespace dotproxy::frontend
