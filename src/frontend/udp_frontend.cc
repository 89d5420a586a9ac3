#include "dotproxy/frontend/udp_frontend.h"

#include <cerrno>
#include <cstring>

#include "dotproxy/control/log.h"

namespace dotproxy::frontend {

using control::Log;
using control::Severity;
using metrics::Bump;

UdpFrontend::UdpFrontend(io::Reactor& reactor, const Acl& acl, metrics::ShardStats& stats,
                         int shard_index)
    : reactor_(reactor), acl_(acl), stats_(stats), shard_index_(shard_index) {}

absl::Status UdpFrontend::Open(std::span<const io::SocketAddress> listen, int socket_buffer_bytes,
                               size_t reply_slots, bool freebind) {
  for (const io::SocketAddress& address : listen) {
    auto socket = io::OpenUdpListener(address, socket_buffer_bytes, freebind);
    if (!socket.ok()) return socket.status();
    sockets_.push_back(*std::move(socket));
  }
  replies_ = std::vector<Reply>(reply_slots);
  free_replies_.reserve(reply_slots);
  for (uint32_t i = static_cast<uint32_t>(reply_slots); i-- > 0;) free_replies_.push_back(i);
  return absl::OkStatus();
}

void UdpFrontend::Start() {
  for (uint32_t i = 0; i < sockets_.size(); ++i) {
    reactor_.ReceiveDatagrams(sockets_[i].get(), {io::Op::kUdpRecv, i, 0});
  }
}

void UdpFrontend::StopIntake() {
  intake_stopped_ = true;
  for (const io::UniqueFd& socket : sockets_) reactor_.CancelFd(socket.get());
}

void UdpFrontend::OnReceive(uint32_t socket_index, const io::Completion& completion) {
  // Data first: the last completion of a multishot may still carry a datagram.
  io::Datagram datagram;
  if (reactor_.ReadDatagram(completion, datagram)) {
    if (!intake_stopped_) {
      if (datagram.truncated) {
        Bump(stats_.dropped_oversized);
      } else if (!acl_.Allows(datagram.source)) {
        Bump(stats_.dropped_acl);  // no reply: a spoofed source gets nothing
      } else {
        Bump(stats_.udp_queries);
        sink_->OnQuery(datagram.payload,
                       ClientRef::Udp(static_cast<uint16_t>(socket_index), datagram.source,
                                      datagram.source_length));
      }
    }
    reactor_.RecycleDatagram(datagram.buffer_id);
  } else if (completion.result < 0 && completion.result != -ENOBUFS &&
             completion.result != -ECANCELED) {
    Log(Severity::kWarning, "shard %d: UDP receive failed: %s", shard_index_,
        std::strerror(-completion.result));
  }
  // A multishot ends on an empty buffer ring or CQ overflow: re-arm.
  if (!completion.more && !intake_stopped_) {
    reactor_.ReceiveDatagrams(sockets_[socket_index].get(), {io::Op::kUdpRecv, socket_index, 0});
  }
}

std::span<uint8_t> UdpFrontend::BeginReply(const ClientRef& client, size_t max_length) {
  if (max_length > kMaxUdpReply) return {};  // callers truncate first; never cut silently
  if (free_replies_.empty()) {
    Bump(stats_.udp_send_no_buffer);
    return {};
  }
  open_reply_ = free_replies_.back();
  free_replies_.pop_back();
  Reply& reply = replies_[open_reply_];
  std::memcpy(&reply.destination, &client.address, client.address_length);
  reply.destination_length = client.address_length;
  return {reply.data, max_length};
}

void UdpFrontend::CommitReply(const ClientRef& client, size_t length) {
  const uint32_t index = open_reply_;
  open_reply_ = UINT32_MAX;
  if (length == 0) {
    free_replies_.push_back(index);
    return;
  }
  Reply& reply = replies_[index];
  reactor_.SendTo(sockets_[client.udp_socket].get(), {reply.data, length},
                  reinterpret_cast<const sockaddr*>(&reply.destination), reply.destination_length,
                  reply.header, {io::Op::kUdpSend, index, 0});
}

void UdpFrontend::OnSendDone(uint32_t reply_index, const io::Completion& completion) {
  if (reactor_.NoteSendToResult(completion.result)) {
    Log(Severity::kInfo, "shard %d: kernel lacks io_uring sendto; using sendmsg", shard_index_);
  }
  if (completion.result < 0) Bump(stats_.udp_send_errors);
  free_replies_.push_back(reply_index);
}

}  // namespace dotproxy::frontend
