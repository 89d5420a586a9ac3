#include "dotproxy/dns/message.h"

#include <algorithm>

namespace dotproxy::dns {
namespace {

// Fixed part of a resource record after its owner name: TYPE, CLASS, TTL,
// RDLENGTH (RFC 1035 §4.1.3).
constexpr size_t kRecordFixedSize = 10;
constexpr size_t kEmptyOptSize = 1 + kRecordFixedSize;

// OPT RR fields as offsets from its (root) owner byte (RFC 6891 §6.1.2-3).
constexpr size_t kOptUdpSize = 3;        // CLASS: UDP payload size, big-endian
constexpr size_t kOptExtendedRcode = 5;  // TTL byte 0: RCODE bits 4-11
constexpr size_t kOptVersion = 6;        // TTL byte 1
constexpr size_t kOptFlags = 7;          // TTL bytes 2-3; DO is the top bit
constexpr size_t kOptRdLength = 9;

// Whether the record at `start` is an OPT RR. REQUIRES: SkipRecord(wire,
// start) != 0, so the fixed part is inside `wire`.
bool IsOpt(std::span<const uint8_t> wire, size_t start) {
  return wire[start] == 0 && ReadU16(&wire[start + 1]) == kTypeOpt;
}

// The TYPE of the record at `start`. REQUIRES: as IsOpt.
uint16_t RecordType(std::span<const uint8_t> wire, size_t start) {
  return ReadU16(&wire[SkipName(wire, start)]);
}

// Offset just past the question section (QDCOUNT entries, names possibly
// compressed), or 0 if it is malformed. Used only where the one-question
// fast path failed but the OPT is still wanted for the error reply.
size_t SkipQuestions(std::span<const uint8_t> wire) {
  size_t pos = kHeaderSize;
  for (unsigned i = 0, n = header::QdCount(wire.data()); i < n; ++i) {
    pos = SkipName(wire, pos);
    if (pos == 0 || pos + 4 > wire.size()) return 0;
    pos += 4;
  }
  return pos;
}

// What walking the records from `pos` (the start of the answer section) to
// the end of the additional section found.
struct RecordScan {
  // Offset past the last record, or 0 when a record is malformed or a second
  // OPT appears (RFC 6891 §6.1.1); the walk stops there.
  size_t end = 0;
  // The first OPT RR of the additional section, 0 if none was reached.
  size_t opt_offset = 0;
  // The TSIG RR, which may only be the last additional record.
  size_t tsig_offset = 0;
};

RecordScan ScanRecords(std::span<const uint8_t> wire, size_t pos) {
  RecordScan scan;
  const uint8_t* h = wire.data();
  // SkipRecord returns 0 on failure; every result is checked before reuse so
  // the walk never restarts at offset 0.
  const unsigned before_additional = header::AnCount(h) + header::NsCount(h);
  // OPT and TSIG are pseudo-records of the additional section only (RFC
  // 6891 §6.1.1, RFC 8945 §5.1).
  for (unsigned i = 0; i < before_additional; ++i) {
    const size_t start = pos;
    pos = SkipRecord(wire, pos);
    if (pos == 0) return scan;
    const uint16_t type = RecordType(wire, start);
    if (type == kTypeOpt || type == kTypeTsig) return scan;
  }
  for (unsigned i = 0, n = header::ArCount(h); i < n; ++i) {
    const size_t start = pos;
    pos = SkipRecord(wire, pos);
    if (pos == 0) return scan;
    if (IsOpt(wire, start)) {
      if (scan.opt_offset != 0) return scan;
      scan.opt_offset = start;
    } else if (RecordType(wire, start) == kTypeTsig) {
      if (i + 1 != n) return scan;  // not last: FORMERR (RFC 8945 §5.1)
      scan.tsig_offset = start;
    }
  }
  scan.end = pos;
  return scan;
}

// Whether the OPT RDATA at `opt` is a sequence of whole options (RFC 6891
// §6.1.2: OPTION-CODE, OPTION-LENGTH, OPTION-LENGTH bytes). REQUIRES:
// SkipRecord(wire, opt) != 0, so the RDATA is inside `wire`.
bool OptionsWellFormed(std::span<const uint8_t> wire, size_t opt) {
  size_t pos = opt + kEmptyOptSize;
  const size_t end = pos + ReadU16(&wire[opt + kOptRdLength]);
  while (pos < end) {
    if (end - pos < 4) return false;
    const size_t option_length = ReadU16(&wire[pos + 2]);
    if (end - pos - 4 < option_length) return false;
    pos += 4 + option_length;
  }
  return true;
}

void RecordEdns(std::span<const uint8_t> wire, size_t opt, QueryInfo& info) {
  info.has_edns = true;
  info.opt_offset = static_cast<uint16_t>(opt);
  info.edns_udp_size = ReadU16(&wire[opt + kOptUdpSize]);
  info.edns_version = wire[opt + kOptVersion];
  info.dnssec_ok = (wire[opt + kOptFlags] & 0x80) != 0;
  info.udp_response_limit = std::max(kClassicUdpLimit, info.edns_udp_size);
}

// Length of the question section BuildErrorReply echoes: the query's one
// uncompressed question, or 0 when it has none or it does not parse.
size_t EchoableQuestionLength(std::span<const uint8_t> query) {
  if (query.size() < kHeaderSize || header::QdCount(query.data()) != 1) return 0;
  const size_t name_length = UncompressedNameLength(query, kHeaderSize);
  if (name_length == 0 || kHeaderSize + name_length + 4 > query.size()) return 0;
  return name_length + 4;
}

// The DO bit of the query's OPT RR: at `info.opt_offset` when that is an
// OPT, else wherever a walk of the query finds one. False without an OPT.
bool QueryDnssecOk(std::span<const uint8_t> query, const QueryInfo& info) {
  if (query.size() < kHeaderSize) return false;
  size_t opt = info.opt_offset;
  if (opt < kHeaderSize || SkipRecord(query, opt) == 0 || !IsOpt(query, opt)) {
    const size_t records = SkipQuestions(query);
    opt = records == 0 ? 0 : ScanRecords(query, records).opt_offset;
    if (opt == 0) return false;
  }
  return (query[opt + kOptFlags] & 0x80) != 0;
}

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

  // The question, when there is exactly one and it is uncompressed.
  bool question_ok = false;
  size_t records = 0;  // start of the answer section; 0 if not found
  if (header::QdCount(h) == 1) {
    const size_t name_length = UncompressedNameLength(wire, kHeaderSize);
    if (name_length != 0 && kHeaderSize + name_length + 4 <= wire.size()) {
      const uint8_t* type_class = h + kHeaderSize + name_length;
      info.qname_length = static_cast<uint16_t>(name_length);
      info.question_length = static_cast<uint16_t>(name_length + 4);
      info.qtype = ReadU16(type_class);
      info.qclass = ReadU16(type_class + 2);
      question_ok = true;
      records = kHeaderSize + info.question_length;
    }
  }
  // Even when the question already decides FORMERR, look for the OPT: any
  // reply to a query with an OPT must carry one (RFC 6891 §7).
  if (!question_ok) records = SkipQuestions(wire);

  // Every record must be well-formed, also where the verdict is NOTIMP.
  RecordScan scan;
  if (records != 0) scan = ScanRecords(wire, records);
  if (scan.opt_offset != 0) RecordEdns(wire, scan.opt_offset, info);

  if (!question_ok) return QueryParse::kFormErr;
  if (header::Opcode(h) != 0) return QueryParse::kNotImp;
  // A malformed record, a misplaced OPT or TSIG, a second OPT, or trailing
  // garbage.
  if (scan.end != wire.size()) return QueryParse::kFormErr;
  // A standard query asks; it carries no answers and no authority (RFC
  // 1035 §4.1.1): forwarding them would let a client smuggle records to the
  // upstream, whose FORMERR we would only relay.
  if (header::AnCount(h) != 0 || header::NsCount(h) != 0) return QueryParse::kFormErr;
  if (scan.tsig_offset != 0) {
    info.tsig_offset = static_cast<uint16_t>(scan.tsig_offset);
    return QueryParse::kNotAuth;
  }
  if (!info.has_edns) return QueryParse::kOk;
  // We implement EDNS version 0 only (RFC 6891 §6.1.3): a higher version is
  // answered here, never forwarded, and its RDATA is not ours to judge.
  if (info.edns_version > 0) return QueryParse::kBadVers;
  if (!OptionsWellFormed(wire, info.opt_offset)) return QueryParse::kFormErr;
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

namespace {

// Appends the unsigned TSIG error record for the query's TSIG at `tsig` to
// `out` (RFC 8945 §5.3.2): returns its length, or 0 when the names are
// compressed or it does not fit in `room`.
size_t AppendTsigError(std::span<const uint8_t> query, size_t tsig, uint8_t* out, size_t room) {
  if (tsig < kHeaderSize || SkipRecord(query, tsig) == 0) return 0;
  const size_t owner = UncompressedNameLength(query, tsig);
  if (owner == 0 || ReadU16(&query[tsig + owner]) != kTypeTsig) return 0;
  const size_t rdata = tsig + owner + kRecordFixedSize;
  const size_t rdata_end = rdata + ReadU16(&query[rdata - 2]);
  const size_t algorithm = UncompressedNameLength(query.first(rdata_end), rdata);
  // Time Signed (6), Fudge (2), MAC Size (2), MAC, Original ID (2).
  if (algorithm == 0 || rdata + algorithm + 10 > rdata_end) return 0;
  const size_t mac_length = ReadU16(&query[rdata + algorithm + 8]);
  const size_t original_id = rdata + algorithm + 10 + mac_length;
  if (original_id + 2 > rdata_end) return 0;
  const size_t rdata_length = algorithm + 16;
  const size_t total = owner + kRecordFixedSize + rdata_length;
  if (total > room) return 0;
  uint8_t* p = out;
  std::memcpy(p, &query[tsig], owner);  // key name
  p += owner;
  WriteU16(p, kTypeTsig);
  WriteU16(p + 2, 255);  // CLASS ANY
  WriteU32(p + 4, 0);    // TTL 0
  WriteU16(p + 8, static_cast<uint16_t>(rdata_length));
  p += kRecordFixedSize;
  std::memcpy(p, &query[rdata], algorithm + 8);  // algorithm, Time Signed, Fudge
  p += algorithm + 8;
  WriteU16(p, 0);  // MAC Size: unsigned
  std::memcpy(p + 2, &query[original_id], 2);
  WriteU16(p + 4, kTsigErrorBadKey);
  WriteU16(p + 6, 0);  // Other Len
  return total;
}

}  // namespace

size_t BuildErrorReply(std::span<const uint8_t> query, const QueryInfo& info,
                       Rcode rcode, uint16_t our_udp_size, std::span<uint8_t> out) {
  // RFC 6891 §6.1.3: RCODE is 12 bits, the upper 8 in the OPT TTL.
  const uint8_t header_rcode = static_cast<uint8_t>(rcode) & 0x0f;
  const uint8_t extended_rcode = static_cast<uint8_t>(rcode) >> 4;
  if (query.size() < 4 || (extended_rcode != 0 && !info.has_edns)) return 0;
  // The question and the DO bit come from `query` itself (only the fact that
  // the client sent EDNS comes from `info`): callers may pass an `info`
  // rebuilt from stored fields rather than the one ParseQuery filled in.
  const size_t question_length = EchoableQuestionLength(query);
  const bool add_opt = info.has_edns;
  const size_t total = kHeaderSize + question_length + (add_opt ? kEmptyOptSize : 0);
  if (out.size() < total) return 0;

  uint8_t* h = out.data();
  std::memcpy(h, query.data(), 2);  // ID
  // QR=1, opcode and RD from the query; RA=1; the rcode's header bits.
  h[2] = static_cast<uint8_t>(0x80 | (query[2] & 0x79));
  h[3] = static_cast<uint8_t>(0x80 | header_rcode);
  WriteU16(h + 4, question_length ? 1 : 0);
  WriteU16(h + 6, 0);
  WriteU16(h + 8, 0);
  WriteU16(h + 10, add_opt ? 1 : 0);
  std::memcpy(h + kHeaderSize, query.data() + kHeaderSize, question_length);
  if (add_opt) {
    const bool dnssec_ok = info.dnssec_ok || QueryDnssecOk(query, info);
    uint8_t* opt = h + kHeaderSize + question_length;
    opt[0] = 0;  // root owner
    WriteU16(opt + 1, kTypeOpt);
    WriteU16(opt + kOptUdpSize, our_udp_size);
    // Extended RCODE, version 0 (the highest we implement, RFC 6891
    // §6.1.3), DO echoed (RFC 3225 §3), Z 0; RDLENGTH 0.
    opt[kOptExtendedRcode] = extended_rcode;
    opt[kOptVersion] = 0;
    WriteU16(opt + kOptFlags, dnssec_ok ? 0x8000 : 0);
    WriteU16(opt + kOptRdLength, 0);
  }
  if (rcode == Rcode::kNotAuth && info.tsig_offset != 0) {
    const size_t room = std::min(out.size(), size_t{kClassicUdpLimit}) - total;
    const size_t tsig = AppendTsigError(query, info.tsig_offset, h + total, room);
    if (tsig > 0) {
      WriteU16(h + 10, static_cast<uint16_t>((add_opt ? 1 : 0) + 1));
      return total + tsig;
    }
  }
  return total;
}

size_t BuildMinimalAnyReply(std::span<const uint8_t> query, const QueryInfo& info,
                            uint16_t our_udp_size, std::span<uint8_t> out) {
  const size_t base = BuildErrorReply(query, info, Rcode::kNoError, our_udp_size, out);
  const size_t question_end = kHeaderSize + EchoableQuestionLength(query);
  if (base == 0 || question_end == kHeaderSize || out.size() < base + kMinimalAnyRrSize) return 0;
  uint8_t* h = out.data();
  // The OPT RR (if any) moves after the answer.
  std::memmove(h + question_end + kMinimalAnyRrSize, h + question_end, base - question_end);
  uint8_t* rr = h + question_end;
  WriteU16(rr, 0xc000 | kHeaderSize);  // the QNAME
  WriteU16(rr + 2, 13);                // HINFO
  std::memcpy(rr + 4, h + question_end - 2, 2);  // QCLASS
  WriteU32(rr + 6, kMinimalAnyTtl);
  WriteU16(rr + 10, 9);                // RDLENGTH: <7>"RFC8482" <0>""
  static constexpr uint8_t kRdata[] = {7, 'R', 'F', 'C', '8', '4', '8', '2', 0};
  std::memcpy(rr + 12, kRdata, sizeof(kRdata));
  WriteU16(h + 6, 1);  // ANCOUNT
  return base + kMinimalAnyRrSize;
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
