#include "dotproxy/frontend/tls_clients.h"

#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "dotproxy/control/log.h"
#include "src/frontend/dot_protocol.h"

// TlsClients, part one: the connections (handshake budget, TLS intake,
// plaintext protocol, answers, timers). Listeners and accepting are in
// tls_listeners.cc.

namespace dotproxy::frontend {

using control::Log;
using control::Severity;
using metrics::Bump;

TlsClients::TlsClients(io::Reactor& reactor, const io::LoopClock& clock, const Acl& acl,
                       metrics::ShardStats& stats, int shard_index)
    : reactor_(reactor), clock_(clock), acl_(acl), stats_(stats), shard_index_(shard_index) {}

TlsClients::~TlsClients() {
  clients_.clear();  // the protocols borrow the region
  if (region_ != nullptr) munmap(region_, region_bytes_);
}

void TlsClients::ArmReceive(uint32_t index) {
  Client& client = clients_[index];
  const std::span<uint8_t> space = client.session.InboundSpace();
  if (space.empty()) return;  // resumed by Process once the session drains it
  reactor_.Recv(client.fd.get(), space, {io::Op::kTlsRecv, index, client.generation});
  client.recv_in_flight = true;
  ++client.ops_in_flight;
}

void TlsClients::OnReceive(uint32_t index, const io::Completion& completion) {
  Client& client = clients_[index];
  if (client.generation != completion.data.generation) return;
  client.recv_in_flight = false;
  --client.ops_in_flight;
  if (client.state != State::kOpen) {
    MaybeRecycle(index);
    return;
  }
  if (completion.result <= 0) {
    client.read_closed = true;
    timers_.StopMessage(index);
    if (client.handshaking) {
      Bump(stats_.tls_handshake_failures);  // gone before finishing
      Close(index);
    } else if (completion.result < 0 || Drained(client)) {
      Close(index);
    }
    return;
  }
  client.heard = true;
  client.session.CommitInbound(static_cast<size_t>(completion.result));
  Touch(index);
  if (intake_stopped_) return;
  Process(index);
}

void TlsClients::Process(uint32_t index) {
  Client& client = clients_[index];
  // Stopping: no new queries (what is in flight is still answered), as in
  // the TCP room. Reached from an answer's QueryDone and deferred turns too.
  if (client.state != State::kOpen || intake_stopped_) return;
  if (client.handshaking) {
    if (client.session.inbound_pending() == 0) {
      Settle(index);
      return;
    }
    if (budget_ <= 0) {
      // Its bytes stay in the session's buffer; no receive is armed until
      // its turn comes (Flush).
      if (!deferred_.Contains(index)) {
        deferred_.PushBack(index);
        Bump(stats_.tls_handshake_deferred);
      }
      return;
    }
    --budget_;
    const tls::ServerSession::Step step = client.session.Handshake();
    if (!client.session.outbound().empty()) MarkDirty(index);
    if (step == tls::ServerSession::Step::kError) {
      HandshakeFailed(index);
      return;
    }
    if (step == tls::ServerSession::Step::kWantRead) {
      Settle(index);
      return;
    }
    HandshakeEnded(client);
    Bump(stats_.tls_handshakes);
    if (client.session.resumed()) Bump(stats_.tls_resumed);
    timers_.StopMessage(index);
  }
  const uint64_t before = handed_up_;
  current_ = index;
  processing_ = index;
  absl::Cleanup done = [this] { processing_ = io::kNoIndex; };
  while (!Backlogged(client)) {
    // Queries held back at the limit go before anything more is decrypted.
    const int n = client.protocol->holds_query()
                      ? 0
                      : client.session.Read(client.protocol->InputSpace());
    if (n == 0 && !client.protocol->holds_query()) break;
    if (n < 0) {
      if (!client.session.error().empty()) {
        Close(index);  // a record failed to decrypt: the stream is broken
        return;
      }
      client.read_closed = true;  // close_notify: answer what is pending
      break;
    }
    switch (client.protocol->CommitInput(static_cast<size_t>(n), *this)) {
      case StreamProtocol::Intake::kOk: break;
      case StreamProtocol::Intake::kDone:
        client.leaving = true;  // closed once drained (Settle)
        break;
      case StreamProtocol::Intake::kError:
        Bump(stats_.tls_bad_frame);
        CloseAfterSending(index);  // an HTTP/2 GOAWAY says why (RFC 9113 §5.4.1)
        return;
      case StreamProtocol::Intake::kClosed: return;
    }
  }
  if (client.state != State::kOpen) return;
  std::move(done).Invoke();
  // DoH writes without an answer too (SETTINGS, their ACKs, PING replies).
  if (!client.session.outbound().empty() || client.protocol->output_pending() > 0) MarkDirty(index);
  // The message timer: restarted when a message completed, kept while the
  // same message stays incomplete (a trickle does not extend it).
  if (!client.protocol->mid_message()) {
    timers_.StopMessage(index);
  } else if (handed_up_ != before || !timers_.MessageTimed(index)) {
    timers_.StartMessage(index, clock_.now());
  }
  Settle(index);
}

bool TlsClients::OnQuery(std::span<uint8_t> wire, uint32_t stream) {
  Client& client = clients_[current_];
  const uint32_t generation = client.generation;
  ++handed_up_;
  Bump(stats_.tls_queries);
  ++client.queries_in_flight;
  sink_->OnQuery(wire, ClientRef::Tls(current_, generation, stream,
                                      reinterpret_cast<const sockaddr*>(&client.peer),
                                      client.peer_length));
  return client.state == State::kOpen && client.generation == generation;
}

bool TlsClients::AtQueryLimit() const {
  return clients_[current_].queries_in_flight >= limits_.max_queries_per_client;
}

bool TlsClients::EvictStalledHandshake() {
  if (handshaking_.empty()) return false;
  const io::Clock::time_point now = clock_.now();
  uint32_t victim = handshaking_.head();
  if (now - clients_[victim].accepted_at < kStalledHandshake) {
    // None stalled: the oldest that has been silent for kSilentHandshake
    // (the list is in accept order, so the scan stops at the young ones).
    victim = io::kNoIndex;
    for (uint32_t i = handshaking_.head(); i != io::kNoIndex; i = handshaking_.Next(i)) {
      if (now - clients_[i].accepted_at < kSilentHandshake) break;
      if (!clients_[i].heard) {
        victim = i;
        break;
      }
    }
    if (victim == io::kNoIndex) return false;
  }
  Bump(stats_.tls_handshake_evicted);
  Close(victim);
  return true;
}

void TlsClients::HandshakeEnded(Client& client) {
  if (!client.handshaking) return;
  client.handshaking = false;
  handshaking_.Remove(static_cast<uint32_t>(&client - clients_.data()));
  --handshakes_in_progress_;
  if (accept_paused_) ArmAccepts();
}

void TlsClients::HandshakeFailed(uint32_t index) {
  Client& client = clients_[index];
  switch (client.session.failure()) {
    case tls::ServerSession::Failure::kNoClientCert:
    case tls::ServerSession::Failure::kBadClientCert:
      Bump(stats_.tls_client_cert_refused);
      break;
    default:
      Bump(stats_.tls_handshake_failures);
      break;
  }
  Log(Severity::kDebug, "shard %d: TLS handshake failed: %s", shard_index_,
      client.session.error());
  HandshakeEnded(client);
  CloseAfterSending(index);  // the alert tells the client why
}

// Reads no more; what is already encrypted or pending in the protocol (a
// TLS alert, HTTP/2's GOAWAY naming the error, answers not yet sent) leaves
// first, then the connection closes.
void TlsClients::CloseAfterSending(uint32_t index) {
  Client& client = clients_[index];
  timers_.StopMessage(index);
  client.read_closed = true;
  // Encrypted now even with a send in flight; what does not fit the buffer
  // follows send by send (a protocol that has failed adds nothing after
  // its last words: nghttp2 frames nothing after its GOAWAY), and the
  // connection closes once the protocol holds nothing more.
  if (!EncryptOutput(client)) {
    Close(index);
    return;
  }
  if (client.session.outbound().empty() && !client.send.in_flight()) {
    Close(index);
    return;
  }
  client.close_after_send = true;
  MarkDirty(index);
}

bool TlsClients::Backlogged(Client& client) const {
  return client.queries_in_flight >= limits_.max_queries_per_client ||
         client.protocol->output_pending() >= StreamProtocol::kOutCapacity / 4;
}

bool TlsClients::Drained(Client& client) const {
  return client.queries_in_flight == 0 && client.protocol->output_pending() == 0 &&
         !client.send.in_flight() && client.session.outbound().empty();
}

// Reading resumes only once the client's backlog has shrunk; a client that
// sent close_notify or FIN is closed once everything it asked is answered.
void TlsClients::Settle(uint32_t index) {
  Client& client = clients_[index];
  if (client.state != State::kOpen) return;
  if (client.read_closed || client.leaving) {
    if (Drained(client) && !client.close_after_send) {
      Close(index);
      return;
    }
    if (client.read_closed) return;
  }
  if (Backlogged(client)) {
    client.reading_paused = true;
    if (!client.handshaking) timers_.StopMessage(index);  // its message waits on us
    return;
  }
  if (intake_stopped_) return;  // neither read on nor armed: see Process
  if (client.reading_paused) {
    client.reading_paused = false;
    if (client.protocol->mid_message() && !timers_.MessageTimed(index)) {
      timers_.StartMessage(index, clock_.now());
    }
    // What arrived before the pause is decrypted first.
    if (client.session.inbound_pending() > 0 || client.session.handshake_done()) {
      Process(index);
      return;
    }
  }
  if (!client.recv_in_flight) ArmReceive(index);
}

void TlsClients::MarkDirty(uint32_t index) {
  Client& client = clients_[index];
  if (client.dirty) return;
  client.dirty = true;
  dirty_.push_back(index);
}

// The protocol's pending plaintext into the session's outbound ciphertext,
// in the pieces a protocol may hand it over in (an HTTP/2 codec's frames),
// as far as the ciphertext fits its reserved buffer: the slot's memory stays
// what it was given at start (the rest waits in the protocol's buffer for
// the next send). False: the TLS write failed, the stream is broken.
bool TlsClients::EncryptOutput(Client& client) {
  for (int piece = 0; piece < 64 && client.session.handshake_done(); ++piece) {
    const std::span<const uint8_t> plain = client.protocol->Output();
    if (plain.empty()) break;
    const size_t fits =
        client.session.PlaintextFitting(plain.size(), tls::MemoryIo::kOutboundReserve);
    if (fits == 0) break;
    if (!client.session.Write(plain.first(fits))) return false;
    client.protocol->Consumed(fits);
    if (fits < plain.size()) break;
  }
  return true;
}

// One encryption per batch of answers (many DNS messages per record), one
// send in flight; answers queue in the protocol's buffer meanwhile.
void TlsClients::TrySend(uint32_t index) {
  Client& client = clients_[index];
  if (client.state != State::kOpen || client.send.in_flight()) return;
  if (!EncryptOutput(client)) {
    Close(index);
    return;
  }
  if (client.session.outbound().empty()) {
    if (client.close_after_send) Close(index);
    return;
  }
  client.sending.clear();
  std::swap(client.sending, client.session.outbound());
  client.send.Start(reactor_, client.fd.get(), client.sending,
                    {io::Op::kTlsSend, index, client.generation});
  ++client.ops_in_flight;
}

void TlsClients::OnSendDone(uint32_t index, const io::Completion& completion) {
  Client& client = clients_[index];
  if (client.generation != completion.data.generation) return;
  --client.ops_in_flight;
  if (client.state != State::kOpen) {
    client.send.Reset();
    MaybeRecycle(index);
    return;
  }
  switch (client.send.OnComplete(reactor_, client.fd.get(), completion,
                                 {io::Op::kTlsSend, index, client.generation})) {
    case io::StreamSend::Result::kResumed:
      ++client.ops_in_flight;
      Touch(index);
      return;
    case io::StreamSend::Result::kFailed:
      Close(index);
      return;
    case io::StreamSend::Result::kComplete:
      Touch(index);
      client.sending.clear();
      TrySend(index);
      Settle(index);
      return;
  }
}

void TlsClients::Flush() {
  budget_ = limits_.handshake_steps_per_iteration;
  while (!deferred_.empty() && budget_ > 0) {
    const uint32_t index = deferred_.head();
    deferred_.Remove(index);
    Process(index);
  }
  for (size_t i = 0; i < dirty_.size(); ++i) {
    const uint32_t index = dirty_[i];
    clients_[index].dirty = false;
    TrySend(index);
  }
  dirty_.clear();
}

size_t TlsClients::ciphertext_capacity() const {
  size_t bytes = 0;
  for (const Client& client : clients_) {
    bytes += client.session.outbound_capacity() + client.sending.capacity();
  }
  return bytes;
}

TlsClients::Client* TlsClients::Find(const ClientRef& ref) {
  if (ref.tcp_client >= clients_.size()) return nullptr;
  Client& client = clients_[ref.tcp_client];
  if (client.state != State::kOpen || client.generation != ref.tcp_generation) return nullptr;
  return &client;
}

std::span<uint8_t> TlsClients::BeginReply(const ClientRef& ref, size_t max_length) {
  Client* client = Find(ref);
  if (client == nullptr) return {};
  std::span<uint8_t> space = client->protocol->BeginAnswer(ref.stream, max_length);
  if (space.empty()) {
    Bump(stats_.tls_slow_closed);
    Close(ref.tcp_client);
  }
  return space;
}

void TlsClients::CommitReply(const ClientRef& ref, size_t length) {
  Client* client = Find(ref);
  if (client == nullptr || length == 0) return;
  client->protocol->CommitAnswer(ref.stream, length);
  MarkDirty(ref.tcp_client);
}

void TlsClients::QueryDone(const ClientRef& ref) {
  Client* client = Find(ref);
  if (client == nullptr) return;
  --client->queries_in_flight;
  client->protocol->QueryDone(ref.stream);
  // Not from inside Process (a query answered at once): it settles itself.
  if ((client->reading_paused || client->read_closed || client->leaving) &&
      !processing(ref.tcp_client)) {
    Settle(ref.tcp_client);
  }
}

const sockaddr* TlsClients::LocalAddress(const ClientRef& ref) const {
  if (ref.tcp_client >= clients_.size()) return nullptr;
  const Client& client = clients_[ref.tcp_client];
  return client.generation == ref.tcp_generation ? reinterpret_cast<const sockaddr*>(&client.local)
                                                 : nullptr;
}

void TlsClients::Close(uint32_t index) {
  Client& client = clients_[index];
  if (client.state != State::kOpen) return;
  client.state = State::kClosing;
  HandshakeEnded(client);
  timers_.Forget(index);
  deferred_.Remove(index);
  if (client.ops_in_flight > 0) reactor_.Abandon(client.fd.get());
  MaybeRecycle(index);
}

void TlsClients::MaybeRecycle(uint32_t index) {
  Client& client = clients_[index];
  if (client.state != State::kClosing || client.ops_in_flight > 0) return;
  client.fd.reset();
  // Frees the wolfSSL object and drops this session's reference to the
  // context it started with (after a reload, possibly the last one).
  client.session.Reset();
  client.protocol->Reset();
  client.sending.clear();
  client.state = State::kFree;
  ++client.generation;
  free_clients_.push_back(index);
  metrics::Set(stats_.tls_clients, open_clients());
}

void TlsClients::Touch(uint32_t index) {
  timers_.Touch(index, clock_.now());
}

// As TcpClients::EvictIdleForRoom: near the cap the least recently active
// client that waits for nothing makes room for a newcomer.
void TlsClients::EvictIdleForRoom(uint32_t newcomer) {
  const size_t reserve = std::max<size_t>(1, clients_.size() / 16);
  if (free_clients_.size() >= reserve || clients_.size() < 2) return;
  const uint32_t victim = timers_.IdleVictim(
      newcomer, clock_.now(), [this](uint32_t index) { return Drained(clients_[index]); });
  if (victim == io::kNoIndex) return;
  Bump(stats_.tls_idle_evicted);
  Close(victim);
}

void TlsClients::ExpireIdle() {
  // Paused at the handshake cap: stalled handshakes make room (ArmAccepts
  // runs as each ends).
  for (int i = 0; accept_paused_ && i < limits_.max_handshakes && EvictStalledHandshake(); ++i) {
  }
  for (uint32_t index; (index = timers_.ExpiredIdle(clock_.now(), limits_.idle_timeout)) !=
                      io::kNoIndex;) {
    Bump(stats_.tls_idle_closed);
    Close(index);
  }
  for (uint32_t index; (index = timers_.ExpiredMessage(clock_.now(), limits_.message_timeout)) !=
                      io::kNoIndex;) {
    Bump(stats_.tls_timeout_closed);
    Close(index);
  }
}

}  // namespace dotproxy::frontend
