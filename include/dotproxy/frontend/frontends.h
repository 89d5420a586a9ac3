#pragma once
// The shard's front ends seen as one Replier: answers go to the UDP front end
// or the TCP clients by the ClientRef's transport. Shard thread only.

#include "dotproxy/frontend/client_ref.h"
#include "dotproxy/frontend/tcp_clients.h"
#include "dotproxy/frontend/udp_frontend.h"

namespace dotproxy::frontend {

class Frontends final : public Replier {
 public:
  Frontends(UdpFrontend& udp, TcpClients& tcp) : udp_(udp), tcp_(tcp) {}

  std::span<uint8_t> BeginReply(const ClientRef& client, size_t max_length) override {
    return client.transport == Transport::kUdp ? udp_.BeginReply(client, max_length)
                                               : tcp_.BeginReply(client, max_length);
  }
  void CommitReply(const ClientRef& client, size_t length) override {
    if (client.transport == Transport::kUdp) {
      udp_.CommitReply(client, length);
    } else {
      tcp_.CommitReply(client, length);
    }
  }
  const sockaddr* LocalAddress(const ClientRef& client) const override {
    return client.transport == Transport::kUdp ? udp_.LocalAddress(client)
                                               : tcp_.LocalAddress(client);
  }
  void QueryDone(const ClientRef& client) override {
    if (client.transport == Transport::kTcp) {
      tcp_.QueryDone(client);
    } else {
      udp_.QueryDone(client);  // a removed UDP socket closes once its queries are done
    }
  }

 private:
  UdpFrontend& udp_;
  TcpClients& tcp_;
};

}  // namespace dotproxy::frontend
