#include "dotproxy/frontend/tls_clients.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "dotproxy/control/log.h"
#include "dotproxy/frontend/stream_accept.h"
#include "src/frontend/dot_protocol.h"

// TlsClients, part two: the listeners, the client table and accepting (the
// handshake cap). The connections themselves are in tls_clients.cc.

namespace dotproxy::frontend {

using control::Log;
using control::Severity;
using metrics::Bump;
using tls_slot::kInCapacity;
using tls_slot::kInSlot;
using tls_slot::kSlotBytes;

absl::Status TlsClients::Open(std::span<const TlsListen> listen,
                              std::shared_ptr<const tls::ServerContext> context,
                              const TlsLimits& limits, const StreamProtocolFactory& https) {
  limits_ = limits;
  context_ = std::move(context);
  if (listen.empty()) return absl::OkStatus();
  if (context_ == nullptr) return absl::InvalidArgumentError("TLS listeners need --tls-cert/--tls-key");
  bool any_https = false;
  for (const TlsListen& item : listen) any_https = any_https || item.kind == TlsListenerKind::kHttps;
  if (any_https && !https) return absl::InvalidArgumentError("no DoH protocol for an https listener");
  for (const TlsListen& item : listen) {
    auto fd = io::OpenTcpListener(item.address, 1024, limits.freebind);
    if (!fd.ok()) return fd.status();
    Listener& listener = listeners_.emplace_back();
    listener.fd = *std::move(fd);
    listener.address = item.address;
    listener.kind = item.kind;
  }
  region_bytes_ = static_cast<size_t>(limits.max_clients) * kSlotBytes;
  void* region = mmap(nullptr, region_bytes_, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (region == MAP_FAILED) {
    region_bytes_ = 0;
    return absl::ResourceExhaustedError(
        absl::StrCat("TLS client buffers: mmap failed: ", std::strerror(errno)));
  }
  region_ = static_cast<uint8_t*>(region);
  clients_ = std::vector<Client>(static_cast<size_t>(limits.max_clients));
  for (size_t i = 0; i < clients_.size(); ++i) {
    uint8_t* slot = region_ + i * kSlotBytes;
    const std::span<uint8_t> out(slot + kInSlot, StreamProtocol::kOutCapacity);
    clients_[i].dot = std::make_unique<DotProtocol>(std::span<uint8_t>(slot, kInCapacity), out);
    if (any_https) clients_[i].https = https(out);
    clients_[i].protocol = clients_[i].dot.get();
    // The size of the session's outbound buffer, which it is swapped with
    // (EncryptOutput keeps both within it).
    clients_[i].sending.reserve(tls::MemoryIo::kOutboundReserve);
  }
  timers_.Resize(clients_.size());
  deferred_.Bind(&clients_);
  handshaking_.Bind(&clients_);
  free_clients_.reserve(clients_.size());
  for (uint32_t i = static_cast<uint32_t>(clients_.size()); i-- > 0;) free_clients_.push_back(i);
  dirty_.reserve(clients_.size());
  return absl::OkStatus();
}

void TlsClients::SetContext(std::shared_ptr<const tls::ServerContext> context) {
  if (context != nullptr) context_ = std::move(context);
}

bool TlsClients::ShouldAccept() const {
  return started_ && !intake_stopped_ && handshakes_in_progress_ < limits_.max_handshakes;
}

void TlsClients::ArmAccepts() {
  if (!ShouldAccept()) return;
  accept_paused_ = false;
  for (uint32_t i = 0; i < listeners_.size(); ++i) {
    Listener& listener = listeners_[i];
    if (listener.accepting) continue;
    listener.accepting = true;
    reactor_.AcceptMultishot(listener.fd.get(), {io::Op::kTlsAccept, i, 1});
  }
}

// Connections keep arriving in the kernel's backlog meanwhile (see the header).
void TlsClients::PauseAccepts() {
  if (accept_paused_) return;
  accept_paused_ = true;
  Bump(stats_.tls_accept_paused);
  for (const Listener& listener : listeners_) {
    if (listener.accepting) reactor_.CancelFd(listener.fd.get());
  }
}

void TlsClients::Start() {
  started_ = true;
  budget_ = limits_.handshake_steps_per_iteration;
  ArmAccepts();
}

void TlsClients::StopIntake() {
  intake_stopped_ = true;
  for (const Listener& listener : listeners_) {
    if (listener.accepting) reactor_.Abandon(listener.fd.get());
  }
}

std::vector<io::SocketAddress> TlsClients::listen_addresses() const {
  std::vector<io::SocketAddress> out;
  for (const Listener& listener : listeners_) out.push_back(listener.address);
  return out;
}

void TlsClients::OnAccept(uint32_t listener_index, const io::Completion& completion) {
  if (listener_index >= listeners_.size()) {
    if (completion.result >= 0) ::close(completion.result);
    return;
  }
  Listener& listener = listeners_[listener_index];
  if (completion.result >= 0) {
    io::UniqueFd fd(completion.result);
    sockaddr_storage peer;
    socklen_t peer_length;
    if (!AllowedPeer(fd.get(), acl_, peer, peer_length)) {
      Bump(stats_.tls_acl_refused);
    } else if (intake_stopped_ || free_clients_.empty()) {
      if (!intake_stopped_) Bump(stats_.tls_rejected);
    } else {
      const uint32_t index = free_clients_.back();
      free_clients_.pop_back();
      Client& client = clients_[index];
      client.state = State::kOpen;
      client.fd = std::move(fd);
      client.protocol =
          listener.kind == TlsListenerKind::kHttps ? client.https.get() : client.dot.get();
      client.protocol->Reset();
      client.sending.clear();
      client.send.Reset();
      client.recv_in_flight = client.dirty = client.read_closed = false;
      client.reading_paused = client.close_after_send = client.heard = client.leaving = false;
      client.queries_in_flight = 0;
      client.ops_in_flight = 0;
      std::memcpy(&client.peer, &peer, sizeof(peer));
      client.peer_length = peer_length;
      TakeConnection(client.fd.get(), client.local);
      client.handshaking = true;
      ++handshakes_in_progress_;
      client.accepted_at = clock_.now();
      handshaking_.PushBack(index);
      Bump(stats_.tls_accepted);
      metrics::Set(stats_.tls_clients, open_clients());
      Touch(index);
      // The handshake must be over within the message timeout.
      timers_.StartMessage(index, clock_.now());
      if (auto status = client.session.Start(context_, AlpnFor(listener.kind)); !status.ok()) {
        Log(Severity::kWarning, "shard %d: TLS session: %s", shard_index_, status.message());
        Bump(stats_.tls_handshake_failures);
        Close(index);
      } else {
        ArmReceive(index);
        EvictIdleForRoom(index);
      }
      if (handshakes_in_progress_ >= limits_.max_handshakes && !EvictStalledHandshake()) {
        PauseAccepts();
      }
    }
  } else if (completion.result != -ECANCELED && completion.result != -EINVAL) {
    Log(Severity::kWarning, "shard %d: TLS accept failed: %s", shard_index_,
        std::strerror(-completion.result));
  }
  if (completion.more) return;
  listener.accepting = false;
  ArmAccepts();
}

absl::Status TlsClients::SteerByClientPrefix(uint32_t group_size, int v4_prefix, int v6_prefix) {
  for (const Listener& listener : listeners_) {
    if (!listener.fd) continue;
    if (auto status =
            io::AttachPrefixSteering(listener.fd.get(), group_size, v4_prefix, v6_prefix);
        !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

}  // namespace dotproxy::frontend
