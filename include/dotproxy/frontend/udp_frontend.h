#pragma once
// The UDP front end of a shard: one SO_REUSEPORT socket per listen address,
// a multishot datagram receive on each (the reactor's provided buffers), the
// client ACL, and a fixed pool of reply slots sent as one datagram each.
// Queries go to the QuerySink; answers come back through the Replier half.
// Shard thread only; everything is sized at Open() and never allocates.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "dotproxy/frontend/acl.h"
#include "dotproxy/frontend/client_ref.h"
#include "dotproxy/io/reactor.h"
#include "dotproxy/io/socket.h"
#include "dotproxy/metrics/stats.h"

namespace dotproxy::frontend {

class UdpFrontend {
 public:
  UdpFrontend(io::Reactor& reactor, const Acl& acl, metrics::ShardStats& stats, int shard_index);

  // Binds one socket per address (SO_REUSEPORT; IP_FREEBIND with
  // `freebind`) and sizes `reply_slots`.
  absl::Status Open(std::span<const io::SocketAddress> listen, int socket_buffer_bytes,
                    size_t reply_slots, bool freebind = false);
  void set_sink(QuerySink* sink) { sink_ = sink; }

  // Arms the datagram receives.
  void Start();
  // Stops intake (cancels receives); sockets stay open for the last answers.
  void StopIntake();
  bool idle() const { return free_replies_.size() == replies_.size(); }

  // Completions routed by the shard.
  void OnReceive(uint32_t socket_index, const io::Completion& completion);
  void OnSendDone(uint32_t reply_index, const io::Completion& completion);

  // Replier half (through Frontends).
  std::span<uint8_t> BeginReply(const ClientRef& client, size_t max_length);
  void CommitReply(const ClientRef& client, size_t length);

 private:
  struct Reply {
    io::MessageHeader header;
    sockaddr_in6 destination{};
    socklen_t destination_length = 0;
    uint8_t data[kMaxUdpReply];
  };

  io::Reactor& reactor_;
  const Acl& acl_;
  metrics::ShardStats& stats_;
  int shard_index_;
  QuerySink* sink_ = nullptr;
  bool intake_stopped_ = false;

  std::vector<io::UniqueFd> sockets_;
  std::vector<Reply> replies_;
  std::vector<uint32_t> free_replies_;
  uint32_t open_reply_ = UINT32_MAX;  // between BeginReply and CommitReply
};

}  // namespace dotproxy::frontend
