#include "dotproxy/frontend/tcp_clients.h"

#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "dotproxy/control/log.h"

namespace dotproxy::frontend {

using control::Log;
using control::Severity;
using metrics::Bump;

TcpClients::TcpClients(io::Reactor& reactor, const io::LoopClock& clock, const Acl& acl,
                       metrics::ShardStats& stats, int shard_index)
    : reactor_(reactor), clock_(clock), acl_(acl), stats_(stats), shard_index_(shard_index) {}

absl::Status TcpClients::Open(std::span<const io::SocketAddress> listen, const TcpLimits& limits) {
  limits_ = limits;
  for (const io::SocketAddress& address : listen) {
    auto listener = io::OpenTcpListener(address, 1024, limits.freebind);
    if (!listener.ok()) return listener.status();
    listeners_.push_back(*std::move(listener));
  }
  clients_ = std::vector<Client>(static_cast<size_t>(limits.max_clients));
  idle_.Bind(&clients_);
  free_clients_.reserve(clients_.size());
  for (uint32_t i = static_cast<uint32_t>(clients_.size()); i-- > 0;) free_clients_.push_back(i);
  dirty_.reserve(clients_.size());
  return absl::OkStatus();
}

void TcpClients::Start() {
  for (uint32_t i = 0; i < listeners_.size(); ++i) {
    reactor_.AcceptMultishot(listeners_[i].get(), {io::Op::kAccept, i, 0});
  }
}

void TcpClients::StopIntake() {
  intake_stopped_ = true;
  for (const io::UniqueFd& listener : listeners_) reactor_.Abandon(listener.get());
}

void TcpClients::OnAccept(uint32_t listener_index, const io::Completion& completion) {
  if (completion.result >= 0) {
    io::UniqueFd fd(completion.result);
    sockaddr_storage peer{};
    socklen_t peer_length = sizeof(peer);
    const bool allowed =
        getpeername(fd.get(), reinterpret_cast<sockaddr*>(&peer), &peer_length) == 0 &&
        acl_.Allows(reinterpret_cast<const sockaddr*>(&peer));
    if (!allowed) {
      Bump(stats_.tcp_acl_refused);
    } else if (intake_stopped_ || free_clients_.empty()) {
      if (!intake_stopped_) Bump(stats_.tcp_rejected);
    } else {
      // Answers are small and often follow each other: without NODELAY the
      // second one waits for the client's delayed ACK (~40 ms).
      const int one = 1;
      setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      const uint32_t index = free_clients_.back();
      free_clients_.pop_back();
      Client& client = clients_[index];
      client.state = State::kOpen;
      client.fd = std::move(fd);
      client.framer.Clear();
      client.send_end = client.out_end = 0;
      client.send.Reset();
      client.recv_in_flight = client.dirty = false;
      client.read_closed = client.reading_paused = false;
      client.queries_in_flight = 0;
      client.ops_in_flight = 0;
      Bump(stats_.tcp_accepted);
      Touch(index);
      ArmReceive(index);
    }
  } else if (completion.result != -ECANCELED && completion.result != -EINVAL) {
    Log(Severity::kWarning, "shard %d: accept failed: %s", shard_index_,
        std::strerror(-completion.result));
  }
  if (!completion.more && !intake_stopped_) {
    reactor_.AcceptMultishot(listeners_[listener_index].get(), {io::Op::kAccept, listener_index, 0});
  }
}

void TcpClients::ArmReceive(uint32_t index) {
  Client& client = clients_[index];
  reactor_.Recv(client.fd.get(), client.framer.WritableSpace(),
                {io::Op::kClientRecv, index, client.generation});
  client.recv_in_flight = true;
  ++client.ops_in_flight;
}

void TcpClients::OnReceive(uint32_t index, const io::Completion& completion) {
  Client& client = clients_[index];
  if (client.generation != completion.data.generation) return;  // cannot happen: see MaybeRecycle
  client.recv_in_flight = false;
  --client.ops_in_flight;
  if (client.state != State::kOpen) {
    MaybeRecycle(index);
    return;
  }
  if (completion.result <= 0) {
    // EOF: the client is done sending; answer what it asked, then close.
    client.read_closed = true;
    if (completion.result < 0 || Drained(client)) Close(index);
    return;
  }
  client.framer.Commit(static_cast<size_t>(completion.result));
  Touch(index);
  if (intake_stopped_) return;  // no new queries while stopping
  const uint32_t generation = client.generation;
  std::span<uint8_t> message;
  while (true) {
    const auto next = client.framer.NextMessage(kMaxQuerySize, message);
    if (next == dns::StreamFramer::Next::kNeedMore) break;
    if (next == dns::StreamFramer::Next::kTooLarge) {
      Bump(stats_.tcp_bad_frame);
      Close(index);
      return;
    }
    Bump(stats_.tcp_queries);
    ++client.queries_in_flight;
    sink_->OnQuery(message, ClientRef::Tcp(index, generation));
    if (client.state != State::kOpen) return;  // closed while answering (slow client)
  }
  client.framer.Compact();
  Settle(index);
}

// Back-pressure: read more only while the client has few queries in flight
// and few unsent answers; a client that sent FIN closes once drained.
void TcpClients::Settle(uint32_t index) {
  Client& client = clients_[index];
  if (client.state != State::kOpen) return;
  if (client.read_closed) {
    if (Drained(client)) Close(index);
    return;
  }
  const bool backlogged = client.queries_in_flight >= limits_.max_queries_per_client ||
                          client.out_end - client.send_end >= kOutPauseThreshold;
  if (backlogged) {
    client.reading_paused = true;
  } else if (!client.recv_in_flight) {
    client.reading_paused = false;
    ArmReceive(index);
  }
}

TcpClients::Client* TcpClients::Find(const ClientRef& ref) {
  Client& client = clients_[ref.tcp_client];
  if (client.state != State::kOpen || client.generation != ref.tcp_generation) return nullptr;
  return &client;
}

std::span<uint8_t> TcpClients::BeginReply(const ClientRef& ref, size_t max_length) {
  Client* client = Find(ref);
  if (client == nullptr) return {};
  if (kOutCapacity - client->out_end < 2 + max_length) {
    if (!client->send.in_flight()) Compact(*client);  // what was sent is reusable
    if (kOutCapacity - client->out_end < 2 + max_length) {
      // Its answers pile up unread: a client that does not read may not
      // make us buffer without end.
      Bump(stats_.tcp_slow_closed);
      Close(ref.tcp_client);
      return {};
    }
  }
  return {client->out.get() + client->out_end + 2, max_length};
}

void TcpClients::CommitReply(const ClientRef& ref, size_t length) {
  Client* client = Find(ref);
  if (client == nullptr || length == 0) return;
  dns::WriteLengthPrefix(client->out.get() + client->out_end, length);
  client->out_end += 2 + length;
  if (!client->dirty) {
    client->dirty = true;
    dirty_.push_back(ref.tcp_client);
  }
}

void TcpClients::QueryDone(const ClientRef& ref) {
  Client* client = Find(ref);
  if (client == nullptr) return;
  --client->queries_in_flight;
  if (client->reading_paused || client->read_closed) Settle(ref.tcp_client);
}

void TcpClients::Flush() {
  for (uint32_t index : dirty_) {
    clients_[index].dirty = false;
    StartSend(index);
  }
  dirty_.clear();
}

void TcpClients::Compact(Client& client) {
  if (client.send_end == 0) return;
  std::memmove(client.out.get(), client.out.get() + client.send_end,
               client.out_end - client.send_end);
  client.out_end -= client.send_end;
  client.send_end = 0;
}

void TcpClients::StartSend(uint32_t index) {
  Client& client = clients_[index];
  if (client.state != State::kOpen || client.send.in_flight()) return;
  Compact(client);  // the previous send finished
  if (client.out_end == 0) return;
  client.send_end = client.out_end;
  client.send.Start(reactor_, client.fd.get(), {client.out.get(), client.send_end},
                    {io::Op::kClientSend, index, client.generation});
  ++client.ops_in_flight;
}

void TcpClients::OnSendDone(uint32_t index, const io::Completion& completion) {
  Client& client = clients_[index];
  if (client.generation != completion.data.generation) return;
  --client.ops_in_flight;
  if (client.state != State::kOpen) {
    client.send.Reset();
    MaybeRecycle(index);
    return;
  }
  switch (client.send.OnComplete(reactor_, client.fd.get(), completion,
                                 {io::Op::kClientSend, index, client.generation})) {
    case io::StreamSend::Result::kResumed:  // short write: the rest goes first
      ++client.ops_in_flight;
      Touch(index);
      return;
    case io::StreamSend::Result::kFailed:
      Close(index);
      return;
    case io::StreamSend::Result::kComplete:
      Touch(index);
      StartSend(index);  // what queued meanwhile
      Settle(index);
      return;
  }
}

void TcpClients::Close(uint32_t index) {
  Client& client = clients_[index];
  if (client.state != State::kOpen) return;
  client.state = State::kClosing;
  idle_.Remove(index);
  if (client.ops_in_flight > 0) reactor_.Abandon(client.fd.get());
  MaybeRecycle(index);
}

void TcpClients::MaybeRecycle(uint32_t index) {
  Client& client = clients_[index];
  if (client.state != State::kClosing || client.ops_in_flight > 0) return;
  // No operation references this client any more: recycle it. Queries it
  // still has in flight find a new generation and drop their answers.
  client.fd.reset();
  client.state = State::kFree;
  ++client.generation;
  free_clients_.push_back(index);
}

void TcpClients::Touch(uint32_t index) {
  clients_[index].last_activity = clock_.now();
  idle_.Remove(index);
  idle_.PushBack(index);
}

void TcpClients::ExpireIdle() {
  while (!idle_.empty() &&
         clock_.now() - clients_[idle_.head()].last_activity >= limits_.idle_timeout) {
    Bump(stats_.tcp_idle_closed);
    Close(idle_.head());
  }
}

}  // namespace dotproxy::frontend
