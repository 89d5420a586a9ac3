// dnstap events to protobuf (dnstap.proto via protobuf-c). Writer thread.

#include "dotproxy/dnstap/encode.h"

#include <arpa/inet.h>
#include <time.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "dnstap.pb-c.h"

namespace dotproxy::dnstap {
namespace {

ProtobufCBinaryData Bytes(const void* data, size_t length) {
  return {length, static_cast<uint8_t*>(const_cast<void*>(data))};
}

void SetTime(int64_t steady_ns, int64_t offset_ns, protobuf_c_boolean& has_sec, uint64_t& sec,
             protobuf_c_boolean& has_nsec, uint32_t& nsec) {
  if (steady_ns == 0) return;
  const int64_t wall = steady_ns + offset_ns;
  has_sec = has_nsec = 1;
  sec = static_cast<uint64_t>(wall / 1000000000);
  nsec = static_cast<uint32_t>(wall % 1000000000);
}

int64_t Nanoseconds(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

}  // namespace

absl::StatusOr<MessageMask> ParseMessageTypes(std::string_view text) {
  MessageMask mask = 0;
  for (absl::string_view word : absl::StrSplit(absl::string_view(text.data(), text.size()), ',')) {
    int position = 0;
    bool found = false;
    for (absl::string_view known : absl::StrSplit(
             absl::string_view(kMessageWords.data(), kMessageWords.size()), '|')) {
      if (word == known) {
        mask |= Bit(static_cast<MessageType>(static_cast<int>(MessageType::kClientQuery) + position));
        found = true;
      }
      ++position;
    }
    if (!found) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", word.substr(0, 40), "' is not one of ",
                       absl::string_view(kMessageWords.data(), kMessageWords.size())));
    }
  }
  if (mask == 0) return absl::InvalidArgumentError("no message type");
  return mask;
}

EventAddress EventAddress::From(const sockaddr* address) {
  EventAddress out;
  if (address == nullptr) return out;
  if (address->sa_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(address);
    out.length = 4;
    std::memcpy(out.bytes, &v4->sin_addr, 4);
    out.port = ntohs(v4->sin_port);
  } else if (address->sa_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(address);
    out.length = 16;
    std::memcpy(out.bytes, &v6->sin6_addr, 16);
    out.port = ntohs(v6->sin6_port);
  }
  return out;
}

int64_t WallClockOffsetNs() { return Nanoseconds(CLOCK_REALTIME) - Nanoseconds(CLOCK_MONOTONIC); }

size_t EncodeEvent(const EventHeader& header, std::span<const uint8_t> message,
                   std::string_view identity, std::string_view version, int64_t wall_offset_ns,
                   std::vector<uint8_t>& out) {
  Dnstap__Message m = DNSTAP__MESSAGE__INIT;
  m.type = static_cast<Dnstap__Message__Type>(header.type);
  const EventAddress& family_source =
      header.query_address.length != 0 ? header.query_address : header.response_address;
  if (family_source.length != 0) {
    m.has_socket_family = 1;
    m.socket_family = family_source.length == 4 ? DNSTAP__SOCKET_FAMILY__INET
                                                : DNSTAP__SOCKET_FAMILY__INET6;
  }
  m.has_socket_protocol = 1;
  m.socket_protocol = static_cast<Dnstap__SocketProtocol>(header.protocol);
  if (header.query_address.length != 0) {
    m.has_query_address = m.has_query_port = 1;
    m.query_address = Bytes(header.query_address.bytes, header.query_address.length);
    m.query_port = header.query_address.port;
  }
  if (header.response_address.length != 0) {
    m.has_response_address = m.has_response_port = 1;
    m.response_address = Bytes(header.response_address.bytes, header.response_address.length);
    m.response_port = header.response_address.port;
  }
  SetTime(header.query_time_ns, wall_offset_ns, m.has_query_time_sec, m.query_time_sec,
          m.has_query_time_nsec, m.query_time_nsec);
  SetTime(header.response_time_ns, wall_offset_ns, m.has_response_time_sec, m.response_time_sec,
          m.has_response_time_nsec, m.response_time_nsec);
  const bool is_query = header.type == MessageType::kClientQuery ||
                        header.type == MessageType::kForwarderQuery;
  if (is_query) {
    m.has_query_message = 1;
    m.query_message = Bytes(message.data(), message.size());
  } else {
    m.has_response_message = 1;
    m.response_message = Bytes(message.data(), message.size());
  }

  Dnstap__Dnstap d = DNSTAP__DNSTAP__INIT;
  d.type = DNSTAP__DNSTAP__TYPE__MESSAGE;
  d.message = &m;
  if (!identity.empty()) {
    d.has_identity = 1;
    d.identity = Bytes(identity.data(), identity.size());
  }
  if (!version.empty()) {
    d.has_version = 1;
    d.version = Bytes(version.data(), version.size());
  }
  const size_t size = dnstap__dnstap__get_packed_size(&d);
  const size_t start = out.size();
  out.resize(start + size);
  dnstap__dnstap__pack(&d, out.data() + start);
  return size;
}

}  // namespace dotproxy::dnstap
