#include "dotproxy/upstream/connection.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dotproxy::upstream {

using metrics::Bump;

const char* ToString(ConnectionState state) {
  switch (state) {
    case ConnectionState::kIdle: return "idle";
    case ConnectionState::kConnecting: return "connecting";
    case ConnectionState::kHandshaking: return "handshaking";
    case ConnectionState::kReady: return "ready";
    case ConnectionState::kClosing: return "closing";
  }
  return "?";
}

const char* ToString(ConnectionKind kind) {
  switch (kind) {
    case ConnectionKind::kTls: return "tls";
    case ConnectionKind::kTcp: return "tcp";
    case ConnectionKind::kUdp: return "udp";
    case ConnectionKind::kHttps: return "https";
  }
  return "?";
}

bool IsFailure(CloseReason reason) {
  switch (reason) {
    case CloseReason::kConnectFailed:
    case CloseReason::kHandshakeFailed:
    case CloseReason::kVerifyFailed:
    case CloseReason::kBroken:
      return true;
    case CloseReason::kPeerClosed:
    case CloseReason::kIdle:
    case CloseReason::kShutdown:
    case CloseReason::kRetired:
      return false;
  }
  return true;
}

Connection::Connection(uint32_t index, int upstream, UpstreamTarget& target,
                       const ConnectionSettings& settings, io::Reactor& reactor,
                       const io::LoopClock& clock, const tls::ClientContext& tls_context,
                       FastRng& rng, ConnectionObserver& observer, metrics::ShardStats& stats,
                       ConnectionKind kind)
    : index_(index),
      upstream_(upstream),
      kind_(kind),
      target_(target),
      settings_(settings),
      reactor_(reactor),
      clock_(clock),
      tls_context_(tls_context),
      rng_(rng),
      observer_(observer),
      stats_(stats),
      // A datagram connection frames nothing, and a DoH one has HTTP/2
      // frames (its codec keeps each stream's body): no stream buffers.
      framer_(kind == ConnectionKind::kUdp || kind == ConnectionKind::kHttps
                  ? 0
                  : 2 * (kMaxStreamMessage + 2)) {
  lost_.reserve(IdTable::kIds);
  if (kind_ == ConnectionKind::kUdp) {
    datagrams_.resize(settings_.datagram_slots);
    free_datagrams_.reserve(datagrams_.size());
    for (size_t i = datagrams_.size(); i-- > 0;) free_datagrams_.push_back(static_cast<uint16_t>(i));
    unsent_datagrams_.reserve(datagrams_.size());
    sent_datagrams_.reserve(datagrams_.size());
    datagram_of_id_.reset(new uint16_t[IdTable::kIds]);
    std::fill_n(datagram_of_id_.get(), IdTable::kIds, kNoDatagram);
    return;
  }
  if (kind_ == ConnectionKind::kHttps) {
    // :authority is the authentication name (an IPv6 literal in brackets).
    const std::string& name = target_.policy->auth_name;
    http::DohClientSettings doh;
    doh.authority = name.find(':') != std::string::npos ? absl::StrCat("[", name, "]") : name;
    if (target_.doh_path != nullptr) doh.path = *target_.doh_path;
    doh.max_streams = settings_.http_streams;
    doh_ = std::make_unique<http::DohClient>(std::move(doh),
                                             static_cast<http::DohClient::Observer&>(*this));
    doh_in_.reset(new uint8_t[kDohReadChunk]);
    doh_out_.reserve(64 * 1024);
  }
  pending_plain_.reserve(64 * 1024);
  sending_.reserve(64 * 1024);
  if (kind_ == ConnectionKind::kTcp) plain_outbound_.reserve(64 * 1024);
}

Connection::~Connection() = default;

std::string Connection::Describe() const {
  switch (kind_) {
    case ConnectionKind::kTls: return session_.Describe();
    case ConnectionKind::kTcp: return "plain TCP";
    case ConnectionKind::kUdp: return "plain UDP";
    case ConnectionKind::kHttps: return absl::StrCat(session_.Describe(), ", HTTP/2");
  }
  return "?";
}

absl::Status Connection::Connect() {
  if (kind_ == ConnectionKind::kUdp) return OpenDatagram();
  auto fd = io::OpenTcpClient(target_.address->family(),
                              static_cast<int>(settings_.connect_timeout.count()));
  if (!fd.ok()) return fd.status();
  fd_ = *std::move(fd);
  state_ = ConnectionState::kConnecting;
  connect_deadline_ = clock_.now() + settings_.connect_timeout;
  last_activity_ = clock_.now();
  keepalive_timeout_ = std::chrono::milliseconds(-1);
  quick_acks_left_ = 8;
  timeouts_since_answer_ = 0;
  framer_.Clear();
  sending_.clear();
  plain_outbound_.clear();
  send_.Reset();
  if (kind_ == ConnectionKind::kHttps) {
    // The HTTP/2 session exists from now on, so queries that arrive during
    // the handshake become streams queued behind the preface.
    if (auto status = doh_->Start(); !status.ok()) {
      fd_.reset();
      state_ = ConnectionState::kIdle;
      return status;
    }
  }
  reactor_.Connect(fd_.get(), target_.address->get(), target_.address->length,
                   Tag(io::Op::kUpstreamConnect));
  ++ops_in_flight_;
  return absl::OkStatus();
}

void Connection::OnCompletion(const io::Completion& completion) {
  if (completion.data.generation != generation_) return;
  switch (completion.data.op) {
    case io::Op::kUpstreamConnect: OnConnected(completion); break;
    case io::Op::kUpstreamRecv:
      if (kind_ == ConnectionKind::kUdp) {
        OnDatagram(completion);
      } else {
        OnReceive(completion);
      }
      break;
    case io::Op::kUpstreamSend:
      if (kind_ == ConnectionKind::kUdp) {
        OnDatagramSent(completion);
      } else {
        OnSendDone(completion);
      }
      break;
    default: break;
  }
}

void Connection::NoteLocalAddress() {
  socklen_t length = sizeof(local_);
  local_length_ =
      getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&local_), &length) == 0 ? length : 0;
}

void Connection::OnConnected(const io::Completion& completion) {
  --ops_in_flight_;
  if (state_ != ConnectionState::kConnecting) {
    MaybeRecycle();
    return;
  }
  if (completion.result < 0) {
    Close(CloseReason::kConnectFailed, absl::StrCat("connect: ", std::strerror(-completion.result)));
    return;
  }
  NoteLocalAddress();
  if (kind_ == ConnectionKind::kTcp) {
    // Plain DNS over TCP: ready once connected.
    ArmReceive();
    BecomeReady();
    return;
  }
  if (auto status = session_.Start(tls_context_, *target_.policy, &target_.resumption,
                                   kind_ == ConnectionKind::kHttps ? "h2" : "");
      !status.ok()) {
    Close(CloseReason::kHandshakeFailed, std::string(status.message()));
    return;
  }
  state_ = ConnectionState::kHandshaking;
  ArmReceive();
  DriveHandshake();
}

void Connection::DriveHandshake() {
  const auto step = session_.Handshake();
  StartSend();
  if (step == tls::Session::Step::kWantRead) return;
  if (step == tls::Session::Step::kError) {
    // Never use a connection whose peer failed authentication; other
    // handshake errors (a reset, a protocol error) are counted apart.
    const bool verification = session_.verification_failed();
    if (verification) {
      Bump(stats_.upstream_verify_failures);
      Bump(target_.stats->verify_failures);
      if (session_.pin_mismatch()) Bump(target_.stats->pin_failures);
    }
    Close(verification ? CloseReason::kVerifyFailed : CloseReason::kHandshakeFailed,
          absl::StrCat("TLS handshake: ", session_.error()));
    return;
  }
  if (kind_ == ConnectionKind::kHttps && session_.alpn() != "h2") {
    // RFC 8484 §5.2: HTTP/2 is the minimum; this codec speaks nothing else.
    Close(CloseReason::kHandshakeFailed,
          absl::StrCat("the upstream did not select ALPN h2 (got '", std::string(session_.alpn()), "')"));
    return;
  }
  if (session_.resumed()) Bump(target_.stats->resumptions);
  BecomeReady();
  // Queries that waited for the handshake go out with this iteration's
  // batch; data that arrived with the last handshake flight is read now.
  ReadPlaintext();
}

void Connection::BecomeReady() {
  state_ = ConnectionState::kReady;
  last_activity_ = clock_.now();
  Bump(stats_.upstream_connects);
  Bump(target_.stats->connection_opens);
  Bump(target_.stats->connections);
  observer_.OnReady(*this);
}

void Connection::ArmReceive() {
  if (kind_ == ConnectionKind::kUdp) {
    reactor_.ReceiveDatagrams(fd_.get(), Tag(io::Op::kUpstreamRecv));
  } else if (kind_ == ConnectionKind::kTcp) {
    // Plain TCP reads straight into the framer. It always has room: a
    // message longer than half its capacity cannot be announced.
    reactor_.Recv(fd_.get(), framer_.WritableSpace(), Tag(io::Op::kUpstreamRecv));
  } else {
    reactor_.Recv(fd_.get(), session_.InboundSpace(), Tag(io::Op::kUpstreamRecv));
  }
  recv_in_flight_ = true;
  ++ops_in_flight_;
}

void Connection::OnReceive(const io::Completion& completion) {
  recv_in_flight_ = false;
  --ops_in_flight_;
  if (state_ == ConnectionState::kClosing) {
    MaybeRecycle();
    return;
  }
  if (completion.result <= 0) {
    // An upstream closing an established connection is routine (public
    // resolvers do it after ~10 s idle); only a failed setup counts.
    const std::string detail = completion.result == 0
                                   ? std::string("closed by upstream")
                                   : absl::StrCat("receive: ", std::strerror(-completion.result));
    if (state_ == ConnectionState::kReady) {
      Bump(stats_.upstream_closed);
      Close(CloseReason::kPeerClosed, detail);
    } else {
      Close(CloseReason::kHandshakeFailed, detail);
    }
    return;
  }
  if (kind_ == ConnectionKind::kTcp) {
    framer_.Commit(static_cast<size_t>(completion.result));
  } else {
    session_.CommitInbound(static_cast<size_t>(completion.result));
  }
  if (quick_acks_left_ > 0) {
    // Right after the handshake the upstream often has two small writes in
    // a row (session ticket, then our first answer); with Nagle on its side
    // and delayed ACKs on ours the answer would wait ~40 ms. Once queries
    // flow, our own segments carry the ACKs.
    --quick_acks_left_;
    const int one = 1;
    setsockopt(fd_.get(), IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
  }
  if (kind_ == ConnectionKind::kTcp) {
    ReadFramed();
  } else if (state_ == ConnectionState::kHandshaking) {
    DriveHandshake();
  } else {
    ReadPlaintext();
  }
  if ((state_ == ConnectionState::kHandshaking || state_ == ConnectionState::kReady) &&
      !recv_in_flight_) {
    ArmReceive();
  }
}

void Connection::ReadPlaintext() {
  if (kind_ == ConnectionKind::kHttps) {
    ReadStreams();
    return;
  }
  while (state_ == ConnectionState::kReady) {
    const int n = session_.Read(framer_.WritableSpace());
    if (n == 0) break;
    if (n < 0) {
      if (session_.error().empty()) {
        Bump(stats_.upstream_closed);
        Close(CloseReason::kPeerClosed, "TLS close_notify from upstream");
      } else {
        Close(CloseReason::kBroken, absl::StrCat("TLS: ", session_.error()));
      }
      return;
    }
    framer_.Commit(static_cast<size_t>(n));
    std::span<uint8_t> message;
    while (state_ == ConnectionState::kReady &&
           framer_.NextMessage(kMaxStreamMessage, message) == dns::StreamFramer::Next::kMessage) {
      observer_.OnMessage(*this, message);
    }
    framer_.Compact();
  }
  // Reading may have produced TLS output (key updates, alerts).
  StartSend();
}

// Plain TCP: the framer holds what the socket delivered.
void Connection::ReadFramed() {
  std::span<uint8_t> message;
  dns::StreamFramer::Next next = dns::StreamFramer::Next::kNeedMore;
  while (state_ == ConnectionState::kReady &&
         (next = framer_.NextMessage(kMaxStreamMessage, message)) ==
             dns::StreamFramer::Next::kMessage) {
    observer_.OnMessage(*this, message);
  }
  if (state_ != ConnectionState::kReady) return;
  if (next != dns::StreamFramer::Next::kNeedMore) {
    Close(CloseReason::kBroken, "bad frame from upstream");
    return;
  }
  framer_.Compact();
}

bool Connection::Queue(uint32_t token, std::span<uint8_t> query, uint16_t& id) {
  if (kind_ == ConnectionKind::kUdp) return QueueDatagram(token, query, id);
  if (kind_ == ConnectionKind::kHttps) return QueueStream(token, query, id);
  if (!ids_.Insert(token, rng_, id)) return false;
  dns::header::SetId(query.data(), id);
  const size_t at = pending_plain_.size();
  pending_plain_.resize(at + 2 + query.size());
  dns::WriteLengthPrefix(pending_plain_.data() + at, query.size());
  std::memcpy(pending_plain_.data() + at + 2, query.data(), query.size());
  last_activity_ = clock_.now();
  return true;
}

void Connection::Flush() {
  if (kind_ == ConnectionKind::kUdp) {
    FlushDatagrams();
    return;
  }
  if (kind_ == ConnectionKind::kHttps) {
    FlushStreams();
    return;
  }
  if (state_ != ConnectionState::kReady || pending_plain_.empty()) return;
  if (kind_ == ConnectionKind::kTcp) {
    // The framed batch is the stream: one send for all of it.
    if (plain_outbound_.empty()) {
      std::swap(plain_outbound_, pending_plain_);
    } else {
      plain_outbound_.insert(plain_outbound_.end(), pending_plain_.begin(), pending_plain_.end());
    }
    pending_plain_.clear();
    StartSend();
    return;
  }
  // One wolfSSL_write for the whole batch: many DNS messages per TLS record.
  const bool written = session_.Write(pending_plain_);
  pending_plain_.clear();
  if (!written) {
    Close(CloseReason::kBroken, absl::StrCat("TLS write: ", session_.error()));
    return;
  }
  StartSend();
}

void Connection::StartSend() {
  std::vector<uint8_t>& outbound = Outbound();
  if (send_.in_flight() || outbound.empty() || !fd_) return;
  std::swap(sending_, outbound);
  outbound.clear();
  send_.Start(reactor_, fd_.get(), sending_, Tag(io::Op::kUpstreamSend));
  ++ops_in_flight_;
}

void Connection::OnSendDone(const io::Completion& completion) {
  --ops_in_flight_;
  if (state_ == ConnectionState::kClosing) {
    send_.Reset();
    MaybeRecycle();
    return;
  }
  switch (send_.OnComplete(reactor_, fd_.get(), completion, Tag(io::Op::kUpstreamSend))) {
    case io::StreamSend::Result::kResumed:
      ++ops_in_flight_;
      return;
    case io::StreamSend::Result::kFailed:
      Close(state_ == ConnectionState::kReady ? CloseReason::kBroken
                                              : CloseReason::kHandshakeFailed,
            absl::StrCat("send: ", std::strerror(-completion.result)));
      return;
    case io::StreamSend::Result::kComplete:
      sending_.clear();
      StartSend();
      return;
  }
}

void Connection::Close(CloseReason reason, std::string_view detail) {
  if (state_ == ConnectionState::kClosing || state_ == ConnectionState::kIdle) return;
  if (state_ == ConnectionState::kReady) {
    metrics::Set(target_.stats->connections, target_.stats->connections.load(std::memory_order_relaxed) - 1);
  }
  state_ = ConnectionState::kClosing;
  // Collected and cleared before anyone retries: a retry may reopen this
  // very connection and bind new IDs in it.
  lost_.clear();
  for (uint32_t id = 0; id < IdTable::kIds && lost_.size() < ids_.size(); ++id) {
    const uint32_t token = ids_.Lookup(static_cast<uint16_t>(id));
    if (token != IdTable::kFree) lost_.push_back(token);
  }
  ids_.Clear();
  pending_plain_.clear();
  if (kind_ == ConnectionKind::kUdp) ClearDatagrams();
  // Its streams die with it (reported through `lost_`, not one by one).
  if (kind_ == ConnectionKind::kHttps) doh_->Reset();
  if (ops_in_flight_ > 0) reactor_.Abandon(fd_.get());
  MaybeRecycle();
  observer_.OnClosed(*this, reason, detail, lost_);
}

void Connection::MaybeRecycle() {
  if (state_ != ConnectionState::kClosing || ops_in_flight_ > 0) return;
  if (fd_) reactor_.Release(fd_.get());  // epoll: a later socket of this number starts afresh
  fd_.reset();
  local_length_ = 0;
  session_.Reset();
  framer_.Clear();
  sending_.clear();
  plain_outbound_.clear();
  send_.Reset();
  recv_in_flight_ = false;
  ++generation_;
  state_ = ConnectionState::kIdle;  // reopened when a query needs it
}

void Connection::NoteAnswered() {
  last_activity_ = clock_.now();
  timeouts_since_answer_ = 0;
}

// A stream that stops answering while others are sent on it is broken: a
// half-open TCP connection, or an upstream whose framing went wrong (a
// partial message that never completes would swallow every later answer).
// Close it; the next queries open a fresh one.
void Connection::NoteTimeout() {
  // A datagram lost now and then is UDP, not a broken socket: the health
  // tracker counts the timeout, and closing would lose the other queries.
  if (state_ != ConnectionState::kReady || kind_ == ConnectionKind::kUdp) return;
  ++timeouts_since_answer_;
  if (!framer_.empty()) {
    Close(CloseReason::kBroken, "query timed out while a partial answer was pending");
  } else if (timeouts_since_answer_ >= settings_.timeout_limit) {
    Close(CloseReason::kBroken,
          absl::StrCat(timeouts_since_answer_, " queries timed out without an answer"));
  }
}

std::chrono::milliseconds Connection::IdleTimeout() const {
  if (keepalive_timeout_.count() < 0) return settings_.idle_timeout;  // none sent
  // 0: the upstream wants the connection closed as soon as it is idle.
  if (keepalive_timeout_.count() == 0) return std::chrono::milliseconds(0);
  // Close just before the upstream would (RFC 7828 §3.2.2), leaving room
  // for a query already on its way.
  const auto margin = std::max(std::chrono::milliseconds(200), keepalive_timeout_ / 10);
  return std::clamp(keepalive_timeout_ - margin, std::chrono::milliseconds(100),
                    settings_.idle_timeout);
}

void Connection::CheckTimers() {
  const auto now = clock_.now();
  if ((state_ == ConnectionState::kConnecting || state_ == ConnectionState::kHandshaking) &&
      now >= connect_deadline_) {
    Close(state_ == ConnectionState::kConnecting ? CloseReason::kConnectFailed
                                                  : CloseReason::kHandshakeFailed,
          "connect/handshake timed out");
  } else if (state_ == ConnectionState::kReady && kind_ != ConnectionKind::kUdp &&
             ids_.size() == 0 && pending_plain_.empty() &&
             now - last_activity_ >= IdleTimeout()) {
    Bump(stats_.upstream_idle_closed);
    Close(CloseReason::kIdle, "idle");
  }
}

void Connection::ShutdownSocket() {
  if (fd_) ::shutdown(fd_.get(), SHUT_RDWR);
}

}  // namespace dotproxy::upstream
