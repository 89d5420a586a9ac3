#include "dotproxy/frontend/tcp_clients.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "dotproxy/control/log.h"
#include "dotproxy/frontend/stream_accept.h"

namespace dotproxy::frontend {

using control::Log;
using control::Severity;
using metrics::Bump;

TcpClients::TcpClients(io::Reactor& reactor, const io::LoopClock& clock, const Acl& acl,
                       metrics::ShardStats& stats, int shard_index)
    : reactor_(reactor), clock_(clock), acl_(acl), stats_(stats), shard_index_(shard_index) {}

TcpClients::~TcpClients() {
  clients_.clear();  // the framers borrow the region
  if (region_ != nullptr) munmap(region_, region_bytes_);
}

absl::Status TcpClients::Open(std::span<const io::SocketAddress> listen,
                              std::span<const io::InheritedListener> inherited,
                              const TcpLimits& limits) {
  limits_ = limits;
  inherited_ = !inherited.empty();
  if (inherited_) {
    for (const io::InheritedListener& listener : inherited) {
      if (listener.datagram()) continue;
      if (auto status = AddInherited(listener); !status.ok()) return status;
    }
  } else {
    for (const io::SocketAddress& address : listen) {
      auto fd = io::OpenTcpListener(address, 1024, limits.freebind);
      if (!fd.ok()) return fd.status();
      Listener& listener = listeners_.emplace_back();
      listener.state = State::kOpen;
      listener.fd = *std::move(fd);
      listener.address = address;
    }
  }
  // One reservation for every client's buffers: untouched pages cost
  // nothing, and a closed client's pages can be handed back (Recycle).
  region_bytes_ = static_cast<size_t>(limits.max_clients) * kClientBytes;
  void* region = mmap(nullptr, region_bytes_, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (region == MAP_FAILED) {
    region_bytes_ = 0;
    return absl::ResourceExhaustedError(absl::StrCat(
        "TCP client buffers: mmap of ", limits.max_clients, " x ", kClientBytes,
        " bytes failed: ", std::strerror(errno), " (lower --max-tcp-clients)"));
  }
  region_ = static_cast<uint8_t*>(region);
  clients_ = std::vector<Client>(static_cast<size_t>(limits.max_clients));
  for (size_t i = 0; i < clients_.size(); ++i) {
    uint8_t* slot = region_ + i * kClientBytes;
    clients_[i].out = slot;
    clients_[i].framer = dns::StreamFramer(std::span<uint8_t>(slot + kOutSlot, kInCapacity));
  }
  timers_.Resize(clients_.size());
  free_clients_.reserve(clients_.size());
  for (uint32_t i = static_cast<uint32_t>(clients_.size()); i-- > 0;) free_clients_.push_back(i);
  dirty_.reserve(clients_.size());
  return absl::OkStatus();
}

// As UdpFrontend::AddInherited: shard 0 accepts on the passed socket, the
// others on a reuseport sibling, or on the passed socket when there is none.
absl::Status TcpClients::AddInherited(const io::InheritedListener& inherited) {
  Listener& listener = listeners_.emplace_back();
  listener.state = State::kOpen;
  listener.address = inherited.address;
  if (inherited.reuseport && shard_index_ > 0) {
    auto sibling = io::OpenReusePortSibling(inherited, 0);
    if (sibling.ok()) {
      listener.fd = *std::move(sibling);
      return absl::OkStatus();
    }
    Log(Severity::kWarning, "shard %d: %s; sharing the inherited socket instead", shard_index_,
        sibling.status().message());
  }
  auto duplicate = io::DuplicateListener(inherited);
  if (!duplicate.ok()) return duplicate.status();
  listener.fd = *std::move(duplicate);
  listener.shared = true;
  return absl::OkStatus();
}

// A shared listener is left to the other shards while this one's client
// table is full: accepting a connection only to reject it would starve the
// clients of shards that have room (a woken accept on io_uring is
// exclusive: one shard takes each connection).
bool TcpClients::ShouldAccept(const Listener& listener) const {
  return started_ && !intake_stopped_ && listener.state == State::kOpen &&
         !(listener.shared && free_clients_.empty());
}

void TcpClients::ArmAccept(uint32_t index) {
  Listener& listener = listeners_[index];
  listener.accepting = true;
  reactor_.AcceptMultishot(listener.fd.get(), {io::Op::kAccept, index, listener.generation});
}

void TcpClients::Start() {
  started_ = true;
  for (uint32_t i = 0; i < listeners_.size(); ++i) {
    if (ShouldAccept(listeners_[i])) ArmAccept(i);
  }
}

void TcpClients::StopIntake() {
  intake_stopped_ = true;
  for (const Listener& listener : listeners_) {
    if (!listener.accepting) continue;
    // shutdown() would stop the inherited socket for every shard and for
    // the service manager that passed it: only cancel.
    if (listener.shared) {
      reactor_.CancelFd(listener.fd.get());
    } else {
      reactor_.Abandon(listener.fd.get());
    }
  }
}

absl::Status TcpClients::SetListeners(std::span<const io::SocketAddress> listen) {
  if (inherited_) {
    return absl::FailedPreconditionError(
        "TCP listeners came from socket activation: change the socket unit instead");
  }
  if (intake_stopped_) return absl::FailedPreconditionError("TCP front end is stopping");
  auto open_now = [&](const io::SocketAddress& address) {
    for (const Listener& listener : listeners_) {
      if (listener.state == State::kOpen && listener.address == address) return true;
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
    auto fd = io::OpenTcpListener(address, 1024, limits_.freebind);
    if (!fd.ok()) return fd.status();
    added.emplace_back(address, *std::move(fd));
  }
  for (uint32_t i = 0; i < listeners_.size(); ++i) {
    Listener& listener = listeners_[i];
    if (listener.state != State::kOpen) continue;
    bool kept = false;
    for (const io::SocketAddress& address : listen) kept = kept || listener.address == address;
    if (kept) continue;
    listener.state = State::kClosing;
    if (listener.accepting) reactor_.CancelFd(listener.fd.get());
    MaybeCloseListener(i);
  }
  for (auto& [address, fd] : added) {
    uint32_t index = 0;
    while (index < listeners_.size() && listeners_[index].state != State::kFree) ++index;
    if (index == listeners_.size()) listeners_.emplace_back();
    Listener& listener = listeners_[index];
    listener.state = State::kOpen;
    // The number may be one the reactor remembers from a socket closed
    // without Release (a TCP client): start afresh.
    reactor_.Release(fd.get());
    listener.fd = std::move(fd);
    listener.address = address;
    listener.shared = listener.accepting = false;
    if (ShouldAccept(listener)) ArmAccept(index);
  }
  return absl::OkStatus();
}

std::vector<io::SocketAddress> TcpClients::listen_addresses() const {
  std::vector<io::SocketAddress> out;
  for (const Listener& listener : listeners_) {
    if (listener.state == State::kOpen) out.push_back(listener.address);
  }
  return out;
}

size_t TcpClients::closing_listeners() const {
  size_t n = 0;
  for (const Listener& listener : listeners_) n += listener.state == State::kClosing;
  return n;
}

// Closed once its accept has delivered its last completion: until then the
// kernel may still hand over a connection tagged with this slot.
void TcpClients::MaybeCloseListener(uint32_t index) {
  Listener& listener = listeners_[index];
  if (listener.state != State::kClosing || listener.accepting) return;
  reactor_.Release(listener.fd.get());
  listener.fd.reset();
  listener.state = State::kFree;
  ++listener.generation;
}

void TcpClients::OnAccept(uint32_t listener_index, const io::Completion& completion) {
  if (listener_index >= listeners_.size() ||
      listeners_[listener_index].generation != completion.data.generation) {
    if (completion.result >= 0) ::close(completion.result);  // cannot happen: see MaybeCloseListener
    return;
  }
  if (completion.result >= 0) {
    io::UniqueFd fd(completion.result);
    sockaddr_storage peer;
    socklen_t peer_length;
    if (!AllowedPeer(fd.get(), acl_, peer, peer_length)) {
      Bump(stats_.tcp_acl_refused);
    } else if (intake_stopped_ || free_clients_.empty()) {
      if (!intake_stopped_) Bump(stats_.tcp_rejected);
    } else {
      const uint32_t index = free_clients_.back();
      free_clients_.pop_back();
      Client& client = clients_[index];
      client.state = State::kOpen;
      client.fd = std::move(fd);
      client.framer.Clear();
      client.send_end = client.out_end = client.out_high = 0;
      client.send.Reset();
      // `dirty` is left as it is: a slot closed and taken again within one
      // iteration may still be on dirty_, and Flush, which takes it off,
      // is the only place that clears it (else it would go on twice).
      client.recv_in_flight = false;
      client.read_closed = client.reading_paused = false;
      client.queries_in_flight = 0;
      client.ops_in_flight = 0;
      std::memcpy(&client.peer, &peer, sizeof(peer));
      client.peer_length = peer_length;
      TakeConnection(client.fd.get(), client.local);
      Bump(stats_.tcp_accepted);
      Touch(index);
      ArmReceive(index);
      EvictIdleForRoom(index);
      if (free_clients_.empty()) {
        // Full: leave shared listeners to the other shards (ShouldAccept).
        for (const Listener& listener : listeners_) {
          if (listener.shared && listener.accepting) reactor_.CancelFd(listener.fd.get());
        }
      }
    }
  } else if (completion.result != -ECANCELED && completion.result != -EINVAL) {
    Log(Severity::kWarning, "shard %d: accept failed: %s", shard_index_,
        std::strerror(-completion.result));
  }
  if (completion.more) return;
  Listener& listener = listeners_[listener_index];
  listener.accepting = false;
  if (ShouldAccept(listener)) {
    ArmAccept(listener_index);
  } else {
    MaybeCloseListener(listener_index);
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
    timers_.StopMessage(index);  // it can no longer complete; closes once drained
    if (completion.result < 0 || Drained(client)) Close(index);
    return;
  }
  client.framer.Commit(static_cast<size_t>(completion.result));
  Touch(index);
  if (intake_stopped_) return;  // no new queries while stopping
  HandUp(index);
}

// The complete queries buffered, up to the client's in-flight limit: one
// read holds up to ~200 minimal queries (4 KiB), so the limit is checked per query,
// and those past it wait in the framer until answers make room (Settle).
void TcpClients::HandUp(uint32_t index) {
  Client& client = clients_[index];
  const uint32_t generation = client.generation;
  std::span<uint8_t> message;
  bool completed = false;
  while (!intake_stopped_ && !Backlogged(client)) {
    const auto next = client.framer.NextMessage(kMaxQuerySize, message);
    if (next == dns::StreamFramer::Next::kNeedMore) break;
    if (next == dns::StreamFramer::Next::kTooLarge) {
      Bump(stats_.tcp_bad_frame);
      Close(index);
      return;
    }
    completed = true;
    Bump(stats_.tcp_queries);
    ++client.queries_in_flight;
    sink_->OnQuery(message, ClientRef::Tcp(index, generation,
                                           reinterpret_cast<const sockaddr*>(&client.peer),
                                           client.peer_length));
    if (client.state != State::kOpen) return;  // closed while answering (slow client)
  }
  client.framer.Compact();
  TrackPartial(index, completed);
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
  if (Backlogged(client)) {
    client.reading_paused = true;
    // Its partial message waits on us, not on the client.
    timers_.StopMessage(index);
  } else if (!client.recv_in_flight) {
    if (client.reading_paused) {
      client.reading_paused = false;
      // Queries read before the pause go first (HandUp settles again).
      if (client.framer.HasMessage()) {
        HandUp(index);
        return;
      }
      if (!client.framer.empty() && !timers_.MessageTimed(index)) {
        timers_.StartMessage(index, clock_.now());
      }
    }
    ArmReceive(index);
  }
}

// The deadline belongs to the message: it starts with the message's first
// byte (in what was just read when a message ended before it) and ends
// when the message is complete. Bytes trickling in do not extend it.
void TcpClients::TrackPartial(uint32_t index, bool completed) {
  Client& client = clients_[index];
  if (client.framer.empty()) {
    timers_.StopMessage(index);
    return;
  }
  if (completed || !timers_.MessageTimed(index)) timers_.StartMessage(index, clock_.now());
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
  return {client->out + client->out_end + 2, max_length};
}

void TcpClients::CommitReply(const ClientRef& ref, size_t length) {
  Client* client = Find(ref);
  if (client == nullptr || length == 0) return;
  dns::WriteLengthPrefix(client->out + client->out_end, length);
  client->out_end += 2 + length;
  client->out_high = std::max(client->out_high, client->out_end);
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
  std::memmove(client.out, client.out + client.send_end,
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
  client.send.Start(reactor_, client.fd.get(), {client.out, client.send_end},
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
  timers_.Forget(index);
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
  // Give back what a slow reader made us commit: the answer pages past the
  // first (which a typical client's answers fit in, so most closes cost no
  // system call). The next client of this slot gets zero pages on demand.
  if (client.out_high > kPageSize) {
    const size_t used = (client.out_high + kPageSize - 1) / kPageSize * kPageSize;
    if (madvise(client.out + kPageSize, used - kPageSize, MADV_DONTNEED) == 0) {
      returned_bytes_ += used - kPageSize;
    }
  }
  client.out_high = 0;
  free_clients_.push_back(index);
  if (free_clients_.size() == 1) {
    // Room again: take connections from shared listeners once more.
    for (uint32_t i = 0; i < listeners_.size(); ++i) {
      if (!listeners_[i].accepting && ShouldAccept(listeners_[i])) ArmAccept(i);
    }
  }
}

void TcpClients::Touch(uint32_t index) {
  timers_.Touch(index, clock_.now());
}

void TcpClients::EvictIdleForRoom(uint32_t newcomer) {
  // Room kept: 1/16 of the cap (at least one), so a burst of newcomers
  // within one loop iteration finds slots while evicted ones recycle.
  const size_t reserve = std::max<size_t>(1, clients_.size() / 16);
  if (free_clients_.size() >= reserve || clients_.size() < 2) return;
  const uint32_t victim = timers_.IdleVictim(newcomer, clock_.now(), [this](uint32_t index) {
    const Client& client = clients_[index];
    return client.queries_in_flight == 0 && client.out_end == 0 && client.send_end == 0;
  });
  if (victim == io::kNoIndex) return;
  Bump(stats_.tcp_idle_evicted);
  Close(victim);
}

void TcpClients::ExpireIdle() {
  for (uint32_t index; (index = timers_.ExpiredIdle(clock_.now(), limits_.idle_timeout)) !=
                      io::kNoIndex;) {
    Bump(stats_.tcp_idle_closed);
    Close(index);
  }
  for (uint32_t index; (index = timers_.ExpiredMessage(clock_.now(), limits_.message_timeout)) !=
                      io::kNoIndex;) {
    Bump(stats_.tcp_message_timeout_closed);
    Close(index);
  }
}

absl::Status TcpClients::SteerByClientPrefix(uint32_t group_size, int v4_prefix, int v6_prefix) {
  for (const auto& socket : listeners_) {
    if (socket.state == State::kFree || !socket.fd) continue;
    if (auto status = io::AttachPrefixSteering(socket.fd.get(), group_size, v4_prefix, v6_prefix);
        !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

}  // namespace dotproxy::frontend
