// The kUdp side of Connection: a connected UDP socket to a plain upstream.
// Each query is one datagram; its bytes stay in a preallocated slot until
// the answer (or a TC=1 retry over TCP, which needs them again) and until
// its send completed. The kernel delivers only datagrams from the address
// and port the socket is connected to; the ID table and the forwarder's
// question check do the rest, as on a stream.

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "dotproxy/dns/edns.h"
#include "dotproxy/upstream/connection.h"

namespace dotproxy::upstream {
namespace {

using metrics::Bump;

// The datagram came from the upstream (the connected socket already makes
// sure; this keeps it true should a backend ever hand over another one).
bool FromUpstream(const io::Datagram& datagram, const io::SocketAddress& upstream) {
  if (datagram.source == nullptr || datagram.source_length == 0) return true;
  if (datagram.source->sa_family != upstream.family()) return false;
  if (upstream.family() == AF_INET) {
    const auto* from = reinterpret_cast<const sockaddr_in*>(datagram.source);
    const auto* to = reinterpret_cast<const sockaddr_in*>(upstream.get());
    return from->sin_port == to->sin_port && from->sin_addr.s_addr == to->sin_addr.s_addr;
  }
  const auto* from = reinterpret_cast<const sockaddr_in6*>(datagram.source);
  const auto* to = reinterpret_cast<const sockaddr_in6*>(upstream.get());
  return from->sin6_port == to->sin6_port &&
         std::memcmp(&from->sin6_addr, &to->sin6_addr, sizeof(in6_addr)) == 0;
}

// Rewrites the upstream form of a query for UDP in place: the OPT's payload
// size becomes kUpstreamUdpSize (what a plain path carries unfragmented),
// and the stream options go: edns-tcp-keepalive MUST NOT be sent over UDP
// (RFC 7828 §3.2.1), and padding is for encrypted transports (RFC 7830).
// Returns the new length, or 0 when the query does not parse.
size_t PrepareDatagramQuery(uint8_t* query, size_t length) {
  dns::QueryInfo info;
  if (dns::ParseQuery({query, length}, info) != dns::QueryParse::kOk) return 0;
  if (!info.has_edns || info.opt_offset == 0) return length;
  uint8_t* opt = query + info.opt_offset;  // owner (root), TYPE, CLASS, TTL, RDLENGTH
  dns::WriteU16(opt + 3, kUpstreamUdpSize);
  const size_t rdlength = dns::ReadU16(opt + 9);
  uint8_t* rdata = opt + 11;
  size_t read = 0;
  size_t kept = 0;
  while (read + 4 <= rdlength) {
    const uint16_t code = dns::ReadU16(rdata + read);
    const size_t option_length = 4 + size_t{dns::ReadU16(rdata + read + 2)};
    if (read + option_length > rdlength) break;  // ParseQuery accepted it: not reached
    if (code != dns::kOptionTcpKeepalive && code != dns::kOptionPadding) {
      std::memmove(rdata + kept, rdata + read, option_length);
      kept += option_length;
    }
    read += option_length;
  }
  if (kept == rdlength) return length;
  dns::WriteU16(opt + 9, static_cast<uint16_t>(kept));
  // Records after the OPT (a TSIG) move up.
  const size_t tail = info.opt_offset + 11 + rdlength;
  std::memmove(rdata + kept, query + tail, length - tail);
  return length - (rdlength - kept);
}

}  // namespace

absl::Status Connection::OpenDatagram() {
  const io::SocketAddress& address = *target_.address;
  io::UniqueFd fd(socket(address.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return absl::UnavailableError(absl::StrCat("socket(UDP upstream): ", std::strerror(errno)));
  // Connected: the kernel picks a random source port, drops datagrams from
  // any other address or port, and reports ICMP unreachables as errors.
  if (::connect(fd.get(), address.get(), address.length) != 0) {
    return absl::UnavailableError(absl::StrCat("connect(UDP upstream): ", std::strerror(errno)));
  }
  fd_ = std::move(fd);
  NoteLocalAddress();
  timeouts_since_answer_ = 0;
  ArmReceive();
  BecomeReady();
  return absl::OkStatus();
}

bool Connection::QueueDatagram(uint32_t token, std::span<uint8_t> query, uint16_t& id) {
  if (state_ != ConnectionState::kReady || free_datagrams_.empty() ||
      query.size() > kMaxDatagramQuery) {
    return false;
  }
  if (!ids_.Insert(token, rng_, id)) return false;
  const uint16_t slot = free_datagrams_.back();
  DatagramQuery& datagram = datagrams_[slot];
  dns::header::SetId(query.data(), id);
  std::memcpy(datagram.bytes, query.data(), query.size());
  const size_t length = PrepareDatagramQuery(datagram.bytes, query.size());
  if (length == 0) {
    ids_.Erase(id);
    return false;
  }
  free_datagrams_.pop_back();
  datagram.length = static_cast<uint16_t>(length);
  datagram.id = id;
  datagram.fallback_id = kNoFallback;
  datagram.bound = true;
  datagram.sending = true;
  datagram_of_id_[id] = slot;
  unsent_datagrams_.push_back(slot);
  last_activity_ = clock_.now();
  return true;
}

// One SendTo per datagram; the reactor submits them all at once (epoll:
// one sendmmsg per socket).
void Connection::FlushDatagrams() {
  if (unsent_datagrams_.empty() || !fd_) return;
  for (uint16_t slot : unsent_datagrams_) {
    DatagramQuery& datagram = datagrams_[slot];
    reactor_.SendTo(fd_.get(), {datagram.bytes, datagram.length}, target_.address->get(),
                    target_.address->length, datagram.header, Tag(io::Op::kUpstreamSend));
    ++ops_in_flight_;
    ++datagram_sends_;
    sent_datagrams_.push_back(slot);
  }
  unsent_datagrams_.clear();
}

void Connection::OnDatagramSent(const io::Completion& completion) {
  --ops_in_flight_;
  --datagram_sends_;
  reactor_.NoteSendToResult(completion.result);
  if (datagram_sends_ == 0) {
    // Sends may complete in any order, so slots come free once none is
    // out: their bytes are no longer borrowed.
    for (uint16_t slot : sent_datagrams_) {
      DatagramQuery& datagram = datagrams_[slot];
      datagram.sending = false;
      if (!datagram.bound) free_datagrams_.push_back(slot);
    }
    sent_datagrams_.clear();
  }
  if (state_ == ConnectionState::kClosing) {
    MaybeRecycle();
    return;
  }
  // A refused send (ICMP unreachable reported on the socket, no route) is
  // the upstream failing; the query itself times out or is lost with the
  // connection.
  if (completion.result < 0 && completion.result != -EAGAIN && completion.result != -ENOBUFS &&
      state_ == ConnectionState::kReady) {
    Close(CloseReason::kBroken, absl::StrCat("UDP send: ", std::strerror(-completion.result)));
  }
}

void Connection::OnDatagram(const io::Completion& completion) {
  io::Datagram datagram;
  if (reactor_.ReadDatagram(completion, datagram)) {
    if (state_ == ConnectionState::kReady) {
      if (datagram.truncated || datagram.payload.size() < dns::kHeaderSize) {
        Bump(stats_.upstream_malformed);  // over our advertised size: not an answer we asked for
      } else if (!FromUpstream(datagram, *target_.address)) {
        Bump(stats_.upstream_unknown_id);
      } else {
        observer_.OnMessage(*this, datagram.payload);
      }
    }
    reactor_.RecycleDatagram(datagram.buffer_id);
  } else if (const int error = -completion.result;
             error > 0 && error != ENOBUFS && error != ECANCELED && error != EINTR &&
             error != EAGAIN && state_ == ConnectionState::kReady) {
    // ECONNREFUSED: an ICMP port unreachable, nobody serves DNS there now.
    // (epoll reports it with the intake still armed; Close cancels it.)
    if (!completion.more) {
      recv_in_flight_ = false;
      --ops_in_flight_;
    }
    Close(CloseReason::kConnectFailed, absl::StrCat("UDP receive: ", std::strerror(error)));
    return;
  }
  if (completion.more) return;
  recv_in_flight_ = false;
  --ops_in_flight_;
  if (state_ == ConnectionState::kClosing) {
    MaybeRecycle();
    return;
  }
  if (state_ == ConnectionState::kReady) ArmReceive();
}

std::span<const uint8_t> Connection::SentQuery(uint16_t id) const {
  if (kind_ != ConnectionKind::kUdp) return {};
  const uint16_t slot = datagram_of_id_[id];
  if (slot == kNoDatagram) return {};
  return {datagrams_[slot].bytes, datagrams_[slot].length};
}

void Connection::SetFallback(uint16_t id, int fallback_id) {
  if (kind_ != ConnectionKind::kUdp) return;
  const uint16_t slot = datagram_of_id_[id];
  if (slot != kNoDatagram) datagrams_[slot].fallback_id = fallback_id;
}

int Connection::Fallback(uint16_t id) const {
  if (kind_ != ConnectionKind::kUdp) return kNoFallback;
  const uint16_t slot = datagram_of_id_[id];
  return slot == kNoDatagram ? kNoFallback : datagrams_[slot].fallback_id;
}

void Connection::FreeDatagram(uint16_t id) {
  const uint16_t slot = datagram_of_id_[id];
  if (slot == kNoDatagram) return;
  datagram_of_id_[id] = kNoDatagram;
  DatagramQuery& datagram = datagrams_[slot];
  datagram.bound = false;
  datagram.fallback_id = kNoFallback;
  if (!datagram.sending) free_datagrams_.push_back(slot);
}

// Close: every ID is gone. Queued datagrams are not sent; those whose
// sends are out come free when the sends complete.
void Connection::ClearDatagrams() {
  for (uint16_t slot : unsent_datagrams_) {
    DatagramQuery& datagram = datagrams_[slot];
    datagram.sending = false;
    if (!datagram.bound) free_datagrams_.push_back(slot);
  }
  unsent_datagrams_.clear();
  for (size_t slot = 0; slot < datagrams_.size(); ++slot) {
    DatagramQuery& datagram = datagrams_[slot];
    if (!datagram.bound) continue;
    datagram_of_id_[datagram.id] = kNoDatagram;
    datagram.bound = false;
    datagram.fallback_id = kNoFallback;
    if (!datagram.sending) free_datagrams_.push_back(static_cast<uint16_t>(slot));
  }
}

}  // namespace dotproxy::upstream
