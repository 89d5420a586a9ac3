#include "dotproxy/dns/message.h"

#include <algorithm>

namespace dotproxy::dns {
namespace {

// Fixed part of a resource record after its owner name: TYPE, CLASS, TTL,
// RDLENGTH (RFC 1035 §4.1.3).
constexpr size_t kRecordFixedSize = 10;
constexpr size_t kEmptyOptSize = 1 + kRecordFixedSize;

}  // namespace

size_t UncompressedNameLength(std::span<const uint8_t> wire, size_t offset) {
  size_t pos = offset;
  while (pos < wire.size()) {
    const uint8_t label = wire[pos];
    if ((label & 0xc0) != 0) return 0;  // pointer or reserved label type
    if (label == 0) {
      const size_t length = pos + 1 - offset;
      return length <= kMaxNameLength ? length : 0;
    }
    pos += label + 1;
    if (pos - offset > kMaxNameLength) return 0;
  }
  return 0;
}

size_t SkipName(std::span<const uint8_t> wire, size_t offset) {
  size_t pos = offset;
  while (pos < wire.size()) {
    const uint8_t label = wire[pos];
    if ((label & 0xc0) == 0xc0) return pos + 2 <= wire.size() ? pos + 2 : 0;
    if ((label & 0xc0) != 0) return 0;
    if (label == 0) return pos + 1;
    pos += label + 1;
    if (pos - offset > kMaxNameLength) return 0;
  }
  return 0;
}

size_t SkipRecord(std::span<const uint8_t> wire, size_t offset) {
  const size_t fixed = SkipName(wire, offset);
  if (fixed == 0 || fixed + kRecordFixedSize > wire.size()) return 0;
  const size_t end = fixed + kRecordFixedSize + ReadU16(&wire[fixed + 8]);
  return end <= wire.size() ? end : 0;
}

QueryParse ParseQuery(std::span<const uint8_t> wire, QueryInfo& info) {
  info = QueryInfo{};
  if (wire.size() < kHeaderSize) return QueryParse::kDrop;
  const uint8_t* h = wire.data();
  if (header::IsResponse(h)) return QueryParse::kDrop;
  info.id = header::Id(h);

  if (header::QdCount(h) != 1) return QueryParse::kFormErr;
  const size_t name_length = UncompressedNameLength(wire, kHeaderSize);
  if (name_length == 0 || kHeaderSize + name_length + 4 > wire.size()) {
    return QueryParse::kFormErr;
  }
  const uint8_t* type_class = h + kHeaderSize + name_length;
  info.qname_length = static_cast<uint16_t>(name_length);
  info.question_length = static_cast<uint16_t>(name_length + 4);
  info.qtype = ReadU16(type_class);
  info.qclass = ReadU16(type_class + 2);
  if (header::Opcode(h) != 0) return QueryParse::kNotImp;

  size_t pos = kHeaderSize + info.question_length;
  // Queries normally carry no answer or authority records; tolerate them
  // (skip) but require every record to be well-formed.
  const unsigned non_additional = header::AnCount(h) + header::NsCount(h);
  for (unsigned i = 0; i < non_additional; ++i) {
    pos = SkipRecord(wire, pos);
    if (pos == 0) return QueryParse::kFormErr;
  }
  const unsigned additional = header::ArCount(h);
  for (unsigned i = 0; i < additional; ++i) {
    const size_t start = pos;
    pos = SkipRecord(wire, pos);
    if (pos == 0) return QueryParse::kFormErr;
    // OPT's owner must be the root: a single zero byte.
    if (wire[start] == 0 && ReadU16(&wire[start + 1]) == kTypeOpt) {
      if (info.has_edns) return QueryParse::kFormErr;  // RFC 6891 §6.1.1
      info.has_edns = true;
      info.opt_offset = static_cast<uint16_t>(start);
      info.edns_udp_size = ReadU16(&wire[start + 3]);
      info.dnssec_ok = (wire[start + 7] & 0x80) != 0;
      info.udp_response_limit = std::max(kClassicUdpLimit, info.edns_udp_size);
    }
  }
  if (pos != wire.size()) return QueryParse::kFormErr;  // trailing garbage
  return QueryParse::kOk;
}

bool QuestionsMatch(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  if (a.size() != b.size() || a.size() < 5) return false;
  const size_t name_length = a.size() - 4;
  for (size_t i = 0; i < name_length; ++i) {
    // Label-length bytes are < 64, so lowering them is harmless.
    if (AsciiLower(a[i]) != AsciiLower(b[i])) return false;
  }
  return std::memcmp(a.data() + name_length, b.data() + name_length, 4) == 0;
}

bool ParseResponse(std::span<const uint8_t> wire, ResponseInfo& info) {
  if (wire.size() < kHeaderSize) return false;
  const uint8_t* h = wire.data();
  if (!header::IsResponse(h) || header::QdCount(h) != 1) return false;
  const size_t name_length = UncompressedNameLength(wire, kHeaderSize);
  if (name_length == 0 || kHeaderSize + name_length + 4 > wire.size()) return false;
  info.id = header::Id(h);
  info.question_length = static_cast<uint16_t>(name_length + 4);
  return true;
}

size_t BuildErrorReply(std::span<const uint8_t> query, const QueryInfo& info,
                       Rcode rcode, uint16_t our_udp_size, std::span<uint8_t> out) {
  const size_t question_length =
      kHeaderSize + info.question_length <= query.size() ? info.question_length : 0;
  const bool add_opt = info.has_edns;
  const size_t total = kHeaderSize + question_length + (add_opt ? kEmptyOptSize : 0);
  if (query.size() < 4 || out.size() < total) return 0;

  uint8_t* h = out.data();
  std::memcpy(h, query.data(), 2);  // ID
  // QR=1, opcode and RD from the query; RA=1; rcode.
  h[2] = static_cast<uint8_t>(0x80 | (query[2] & 0x79));
  h[3] = static_cast<uint8_t>(0x80 | static_cast<uint8_t>(rcode));
  WriteU16(h + 4, question_length ? 1 : 0);
  WriteU16(h + 6, 0);
  WriteU16(h + 8, 0);
  WriteU16(h + 10, add_opt ? 1 : 0);
  std::memcpy(h + kHeaderSize, query.data() + kHeaderSize, question_length);
  if (add_opt) {
    uint8_t* opt = h + kHeaderSize + question_length;
    opt[0] = 0;  // root owner
    WriteU16(opt + 1, kTypeOpt);
    WriteU16(opt + 3, our_udp_size);
    // Extended RCODE 0, version 0, DO echoed (RFC 3225 §3), Z 0, RDLENGTH 0.
    WriteU32(opt + 5, info.dnssec_ok ? 0x8000u : 0u);
    WriteU16(opt + 9, 0);
  }
  return total;
}

size_t TruncateResponse(std::span<uint8_t> msg, size_t length, size_t limit) {
  std::span<const uint8_t> wire(msg.data(), length);
  uint8_t* h = msg.data();
  const size_t name_length = UncompressedNameLength(wire, kHeaderSize);
  const size_t question_end = kHeaderSize + name_length + 4;

  // Find the OPT RR in the additional section, if any, so the client still
  // learns the server's EDNS parameters (RFC 6891 §7).
  size_t opt_start = 0, opt_end = 0;
  size_t pos = question_end;
  const unsigned before_additional = header::AnCount(h) + header::NsCount(h);
  const unsigned total_records = before_additional + header::ArCount(h);
  for (unsigned i = 0; i < total_records && pos != 0; ++i) {
    const size_t start = pos;
    pos = SkipRecord(wire, pos);
    if (pos != 0 && i >= before_additional && wire[start] == 0 &&
        ReadU16(&wire[start + 1]) == kTypeOpt) {
      opt_start = start;
      opt_end = pos;
      break;
    }
  }
  size_t new_length = question_end;
  const size_t opt_length = opt_end - opt_start;
  const bool keep_opt = opt_length > 0 && question_end + opt_length <= limit;
  if (keep_opt) {
    std::memmove(h + question_end, h + opt_start, opt_length);
    new_length += opt_length;
  }
  WriteU16(h + 6, 0);
  WriteU16(h + 8, 0);
  WriteU16(h + 10, keep_opt ? 1 : 0);
  header::SetTruncated(h);
  return new_length;
}

}  // namespace dotproxy::dns
