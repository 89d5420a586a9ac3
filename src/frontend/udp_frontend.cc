#include "dotproxy/frontend/udp_frontend.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "dotproxy/control/log.h"

namespace dotproxy::frontend {

namespace {
constexpr std::chrono::milliseconds kRateWindow{100};
constexpr int64_t kDatagramTruesize = 1024;
}  // namespace

using control::Log;
using control::Severity;
using metrics::Bump;

UdpFrontend::UdpFrontend(io::Reactor& reactor, const Acl& acl, metrics::ShardStats& stats,
                         int shard_index)
    : reactor_(reactor), acl_(acl), stats_(stats), shard_index_(shard_index) {}

absl::Status UdpFrontend::Open(std::span<const io::SocketAddress> listen,
                               std::span<const io::InheritedListener> inherited,
                               int socket_buffer_bytes, size_t reply_slots, bool freebind) {
  socket_buffer_bytes_ = socket_buffer_bytes;
  freebind_ = freebind;
  inherited_ = !inherited.empty();
  if (inherited_) {
    for (const io::InheritedListener& listener : inherited) {
      if (!listener.datagram()) continue;
      if (auto status = AddInherited(listener, socket_buffer_bytes); !status.ok()) return status;
    }
  } else {
    for (const io::SocketAddress& address : listen) {
      auto socket = io::OpenUdpListener(address, socket_buffer_bytes, freebind);
      if (!socket.ok()) return socket.status();
      Socket& slot = sockets_.emplace_back();
      slot.state = SocketState::kOpen;
      slot.fd = *std::move(socket);
      slot.address = address;
    }
  }
  replies_ = std::vector<Reply>(reply_slots);
  free_replies_.reserve(reply_slots);
  for (uint32_t i = static_cast<uint32_t>(reply_slots); i-- > 0;) free_replies_.push_back(i);
  return absl::OkStatus();
}

// Shard 0 reads the passed socket itself; the others a sibling on the same
// address when the kernel lets them join its reuseport group, else the
// passed socket too (each shard's reactor arms its own receive on it; one
// datagram is read by one of them).
absl::Status UdpFrontend::AddInherited(const io::InheritedListener& listener,
                                       int socket_buffer_bytes) {
  Socket& slot = sockets_.emplace_back();
  slot.state = SocketState::kOpen;
  slot.address = listener.address;
  if (listener.reuseport && shard_index_ > 0) {
    auto sibling = io::OpenReusePortSibling(listener, socket_buffer_bytes);
    if (sibling.ok()) {
      slot.fd = *std::move(sibling);
      return absl::OkStatus();
    }
    Log(Severity::kWarning, "shard %d: %s; sharing the inherited socket instead", shard_index_,
        sibling.status().message());
  }
  auto duplicate = io::DuplicateListener(listener);
  if (!duplicate.ok()) return duplicate.status();
  slot.fd = *std::move(duplicate);
  slot.inherited = true;
  io::EnableReceiveTimestamps(slot.fd.get());
  reactor_.WatchSharedDatagrams(slot.fd.get());
  return absl::OkStatus();
}

void UdpFrontend::Arm(uint32_t index) {
  sockets_[index].receiving = true;
  reactor_.ReceiveDatagrams(sockets_[index].fd.get(), {io::Op::kUdpRecv, index, 0});
}

void UdpFrontend::Start() {
  started_ = true;
  for (uint32_t i = 0; i < sockets_.size(); ++i) {
    if (sockets_[i].state == SocketState::kOpen) Arm(i);
  }
}

void UdpFrontend::StopIntake() {
  intake_stopped_ = true;
  for (const Socket& socket : sockets_) {
    if (socket.receiving) reactor_.CancelFd(socket.fd.get());
  }
}

absl::Status UdpFrontend::SetListeners(std::span<const io::SocketAddress> listen) {
  if (inherited_) {
    return absl::FailedPreconditionError(
        "UDP listeners came from socket activation: change the socket unit instead");
  }
  if (intake_stopped_) return absl::FailedPreconditionError("UDP front end is stopping");
  auto open_now = [&](const io::SocketAddress& address) {
    for (const Socket& socket : sockets_) {
      if (socket.state == SocketState::kOpen && socket.address == address) return true;
    }
    return false;
  };
  // Bind every new address before changing anything.
  std::vector<std::pair<io::SocketAddress, io::UniqueFd>> added;
  for (const io::SocketAddress& address : listen) {
    if (open_now(address)) continue;
    bool twice = false;
    for (const auto& [seen, fd] : added) twice = twice || seen == address;
    if (twice) continue;
    auto socket = io::OpenUdpListener(address, socket_buffer_bytes_, freebind_);
    if (!socket.ok()) return socket.status();
    added.emplace_back(address, *std::move(socket));
  }
  // Removed addresses: no more intake; closed once nothing refers to them.
  for (uint32_t i = 0; i < sockets_.size(); ++i) {
    Socket& socket = sockets_[i];
    if (socket.state != SocketState::kOpen) continue;
    bool kept = false;
    for (const io::SocketAddress& address : listen) kept = kept || socket.address == address;
    if (kept) continue;
    socket.state = SocketState::kClosing;
    if (socket.receiving) reactor_.CancelFd(socket.fd.get());
    MaybeClose(i);
  }
  for (auto& [address, fd] : added) {
    uint32_t index = 0;
    while (index < sockets_.size() && sockets_[index].state != SocketState::kFree) ++index;
    if (index == sockets_.size()) sockets_.emplace_back();
    Socket& socket = sockets_[index];
    socket = Socket{};
    socket.state = SocketState::kOpen;
    // The number may be one the reactor remembers from a socket closed
    // without Release (a TCP client): start afresh.
    reactor_.Release(fd.get());
    socket.fd = std::move(fd);
    socket.address = address;
    if (started_) Arm(index);
  }
  return absl::OkStatus();
}

std::vector<io::SocketAddress> UdpFrontend::listen_addresses() const {
  std::vector<io::SocketAddress> out;
  for (const Socket& socket : sockets_) {
    if (socket.state == SocketState::kOpen) out.push_back(socket.address);
  }
  return out;
}

size_t UdpFrontend::closing_sockets() const {
  size_t n = 0;
  for (const Socket& socket : sockets_) n += socket.state == SocketState::kClosing;
  return n;
}

// A removed socket closes when its receive has ended, its replies have left
// and every query it received is done: until then an SQE or a ClientRef may
// name it.
void UdpFrontend::MaybeClose(uint32_t index) {
  Socket& socket = sockets_[index];
  if (socket.state != SocketState::kClosing || socket.receiving || socket.sends_in_flight > 0 ||
      socket.queries_in_flight > 0) {
    return;
  }
  reactor_.Release(socket.fd.get());
  socket.fd.reset();
  socket.state = SocketState::kFree;
}

bool UdpFrontend::Stale(const io::Datagram& datagram, Socket& socket) {
  if (clock_ == nullptr || datagram.received_realtime_ns == 0) return false;
  // The kernel dropped datagrams on this socket since the last one read:
  // its buffer overflowed, which is what keeps a cut buffer's short queue
  // standing (its datagrams are young: the cut is what keeps them so).
  const bool overflowed = datagram.socket_drops != socket.last_drops;
  socket.last_drops = datagram.socket_drops;
  // Read in arrival order: this datagram is the oldest its socket holds.
  // The stamp may be a little after the loop's wall time (received during
  // this iteration): no wait.
  const auto waited = std::chrono::nanoseconds(
      std::max<int64_t>(0, clock_->realtime_ns() - datagram.received_realtime_ns));
  const auto now = clock_->now();
  intake_queue_.Observe(
      now, overflowed && buffers_shrunk_ ? std::max<std::chrono::nanoseconds>(
                                               waited, intake_queue_.settings().overload_wait)
                                         : waited);
  const bool standing = intake_queue_.standing();
  if (standing != buffers_shrunk_) ShrinkReceiveBuffers(standing);
  // The cut buffer holds a few ms of service at most: what it
  // holds is served; shed is what waited longer than overload_wait (the
  // backlog from before the cut, which would only lengthen every answer's
  // wait behind it).
  if (waited >= intake_queue_.ShedAfter()) return true;
  if (now - rate_window_start_ >= kRateWindow) {
    served_last_window_ = served_in_window_;
    served_in_window_ = 0;
    rate_window_start_ = now;
    if (buffers_shrunk_) CutReceiveBuffers(CutDatagrams());
    longest_off_cpu_ = std::chrono::nanoseconds(0);
  }
  ++served_in_window_;
  return false;
}

// An eighth of overload_wait (about 6 ms: under a CFS quota of 10 ms
// periods, what a shard serves in one slice; a quarter measured 1.6x the
// mean latency at 4x overload for no more goodput), never below what a
// burst of 32 datagrams needs.
int64_t UdpFrontend::CutCap() const {
  const int64_t per_window = std::max<int64_t>(served_last_window_, served_in_window_);
  return std::max<int64_t>(32, per_window * (intake_queue_.settings().overload_wait.count() / 8) /
                                   std::chrono::nanoseconds(kRateWindow).count());
}

// What waits in the cut buffer is what every answered query waits behind,
// about three times over (in the socket, in the turn that reads it, in the
// turn that reads the upstream's answer), so it holds only what keeps the
// shard busy across its stalls off the CPU (twice the longest a window saw,
// for the ones it did not): a shard under a CFS quota runs 1 ms in every
// 10 and needs the cap; one that has its core, or shares it in fine
// slices, needs little more than a batch (kCutFloor), and its answers then
// wait about 10 ms at 4x its capacity where the cap cost them 20 to 30
// (bench/load/overload_cpu.py --thief).
int64_t UdpFrontend::CutDatagramsFor(int64_t served_per_window, std::chrono::nanoseconds window,
                                     std::chrono::nanoseconds longest_stall, int64_t cap) {
  const int64_t across_stall = 2 * served_per_window * longest_stall.count() / window.count();
  return std::clamp<int64_t>(across_stall, kCutFloor, std::max(kCutFloor, cap));
}

int64_t UdpFrontend::CutDatagrams() const {
  return CutDatagramsFor(served_last_window_, kRateWindow, longest_off_cpu_, CutCap());
}

void UdpFrontend::ShrinkReceiveBuffers(bool shrink) {
  buffers_shrunk_ = shrink;
  Bump(shrink ? stats_.intake_overload_began : stats_.intake_overload_ended);
  if (!shrink) {
    for (Socket& socket : sockets_) {
      if (socket.restore_receive_buffer > 0 && socket.fd) {
        io::SetReceiveBuffer(socket.fd.get(), socket.restore_receive_buffer);
      }
      socket.restore_receive_buffer = 0;
    }
    Log(Severity::kInfo, "shard %d: UDP intake recovered: receive buffers restored",
        shard_index_);
    return;
  }
  // No stall measured yet: the cap, for a whole window from now (the
  // window in progress may be about to end, with a turn or two measured).
  const int64_t datagrams = CutCap();
  CutReceiveBuffers(datagrams);
  served_last_window_ = static_cast<uint32_t>(
      std::max<int64_t>(served_last_window_, served_in_window_));
  served_in_window_ = 0;
  rate_window_start_ = clock_->now();
  longest_off_cpu_ = std::chrono::nanoseconds(0);
  Log(Severity::kInfo,
      "shard %d: UDP intake overloaded: receive buffers cut to about %lld datagrams (then to "
      "what the shard serves across its stalls) until the backlog clears",
      shard_index_, static_cast<long long>(datagrams));
}

// At the kernel's accounting per small datagram (its truesize: 840 bytes
// on loopback, about 1 KiB on common NICs), halved as setsockopt doubles it.
void UdpFrontend::CutReceiveBuffers(int64_t datagrams) {
  const int small = static_cast<int>(std::min<int64_t>(datagrams * kDatagramTruesize / 2, 1 << 24));
  for (Socket& socket : sockets_) {
    // A passed socket read by every shard is not one shard's to resize.
    if (socket.state != SocketState::kOpen || !socket.fd || socket.inherited) continue;
    if (socket.restore_receive_buffer == 0) {
      const int current = io::ReceiveBufferBytes(socket.fd.get());
      if (current / 2 <= small) continue;  // already small: leave it
      socket.restore_receive_buffer = current / 2;
    }
    io::SetReceiveBuffer(socket.fd.get(), std::min(small, socket.restore_receive_buffer));
  }
}

void UdpFrontend::OnReceive(uint32_t socket_index, const io::Completion& completion) {
  Socket& socket = sockets_[socket_index];
  // Data first: the last completion of a multishot may still carry a datagram.
  io::Datagram datagram;
  if (reactor_.ReadDatagram(completion, datagram)) {
    if (!intake_stopped_ && socket.state == SocketState::kOpen) {
      if (datagram.truncated) {
        Bump(stats_.dropped_oversized);
      } else if (Stale(datagram, socket)) {
        Bump(stats_.shed_intake);
      } else if (!acl_.Allows(datagram.source)) {
        Bump(stats_.dropped_acl);  // no reply: a spoofed source gets nothing
      } else {
        Bump(stats_.udp_queries);
        ++socket.queries_in_flight;
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
  if (completion.more) return;
  // A multishot ends on an empty buffer ring or CQ overflow: re-arm, unless
  // intake stopped or the address was removed.
  socket.receiving = false;
  if (socket.state == SocketState::kOpen && !intake_stopped_) {
    Arm(socket_index);
  } else {
    MaybeClose(socket_index);
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
  reply.socket = client.udp_socket;
  // The socket is open: a removed one stays so while this query is not done.
  Socket& socket = sockets_[client.udp_socket];
  ++socket.sends_in_flight;
  reactor_.SendTo(socket.fd.get(), {reply.data, length},
                  reinterpret_cast<const sockaddr*>(&reply.destination), reply.destination_length,
                  reply.header, {io::Op::kUdpSend, index, 0});
}

void UdpFrontend::QueryDone(const ClientRef& client) {
  Socket& socket = sockets_[client.udp_socket];
  --socket.queries_in_flight;
  if (socket.state == SocketState::kClosing) MaybeClose(client.udp_socket);
}

void UdpFrontend::OnSendDone(uint32_t reply_index, const io::Completion& completion) {
  if (reactor_.NoteSendToResult(completion.result)) {
    Log(Severity::kInfo, "shard %d: kernel lacks io_uring sendto; using sendmsg", shard_index_);
  }
  if (completion.result < 0) Bump(stats_.udp_send_errors);
  free_replies_.push_back(reply_index);
  const uint16_t socket = replies_[reply_index].socket;
  --sockets_[socket].sends_in_flight;
  if (sockets_[socket].state == SocketState::kClosing) MaybeClose(socket);
}

absl::Status UdpFrontend::SteerByClientPrefix(uint32_t group_size, int v4_prefix, int v6_prefix) {
  for (const auto& socket : sockets_) {
    if (socket.state == SocketState::kFree || !socket.fd) continue;
    if (auto status = io::AttachPrefixSteering(socket.fd.get(), group_size, v4_prefix, v6_prefix);
        !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

}  // namespace dotproxy::frontend
