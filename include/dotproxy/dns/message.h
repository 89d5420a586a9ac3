#pragma once
// DNS wire-format views, validation and in-place rewriting (RFC 1035, 6891).
//
// Everything here works on borrowed bytes: nothing allocates, nothing copies
// unless a caller-provided output buffer is named. All multi-byte wire fields
// are big-endian (network order); accessors convert. Safe to call from any
// thread; no shared state.
//
//   dns::QueryInfo info;
//   switch (dns::ParseQuery(datagram, info)) {
//     case dns::QueryParse::kOk: ...forward...
//     case dns::QueryParse::kFormErr: ...reply FORMERR...
//     case dns::QueryParse::kBadVers: ...BuildErrorReply(..., Rcode::kBadVers, ...)...
//   }

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace dotproxy::dns {

inline constexpr size_t kHeaderSize = 12;
// RFC 1035 §2.3.4: a name is at most 255 octets on the wire.
inline constexpr size_t kMaxNameLength = 255;
// Largest question section: name + QTYPE + QCLASS.
inline constexpr size_t kMaxQuestionLength = kMaxNameLength + 4;
// Largest reply BuildErrorReply writes: header, question and an OPT RR
// without options (root name, TYPE, CLASS, TTL, RDLENGTH).
// A NOTAUTH reply to a TSIG-signed query also echoes the TSIG RR, unsigned
// (RFC 8945 §5.3.2): key name, fixed part, algorithm name, then Time
// Signed (6), Fudge, MAC Size 0, Original ID, Error, Other Len 0.
inline constexpr size_t kMaxTsigErrorRecordLength = kMaxNameLength + 10 + kMaxNameLength + 16;
inline constexpr size_t kMaxErrorReplyLength =
    kHeaderSize + kMaxQuestionLength + 11 + kMaxTsigErrorRecordLength;
// Without EDNS a UDP response may not exceed 512 bytes (RFC 1035 §4.2.1).
inline constexpr uint16_t kClassicUdpLimit = 512;
inline constexpr uint16_t kTypeOpt = 41;
inline constexpr uint16_t kTypeSoa = 6;
inline constexpr uint16_t kTypeTsig = 250;
// TSIG error (RFC 8945 §5.2.1): the key is not one we know.
inline constexpr uint16_t kTsigErrorBadKey = 17;

// Response codes. Values up to 15 fit the header's RCODE field; larger ones
// are extended RCODEs (RFC 6891 §6.1.3): the low 4 bits go in the header and
// the upper 8 bits in the OPT RR's TTL, so only a reply with an OPT can
// carry them. header::GetRcode reads the header bits alone and so never
// returns one of them.
enum class Rcode : uint8_t {
  kNoError = 0,
  kFormErr = 1,
  kServFail = 2,
  kNxDomain = 3,
  kNotImp = 4,
  kRefused = 5,
  kNotAuth = 9,   // with TSIG: the server does not know the key (RFC 8945 §5.2.1)
  kBadVers = 16,  // extended: the query's EDNS VERSION is above ours (0)
};

inline uint16_t ReadU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t ReadU32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}
inline void WriteU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline void WriteU32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

// Lower-cases an ASCII letter and returns any other byte unchanged: DNS
// names compare case-insensitively for A-Z only (RFC 4343 §3). Shared by
// QuestionsMatch and anything that hashes or compares names (the cache), so
// both fold case the same way.
inline uint8_t AsciiLower(uint8_t c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<uint8_t>(c + ('a' - 'A')) : c;
}

// Header field accessors. REQUIRES: at least kHeaderSize bytes at `h`.
namespace header {
inline uint16_t Id(const uint8_t* h) { return ReadU16(h); }
inline void SetId(uint8_t* h, uint16_t id) { WriteU16(h, id); }
inline bool IsResponse(const uint8_t* h) { return (h[2] & 0x80) != 0; }
inline uint8_t Opcode(const uint8_t* h) { return (h[2] >> 3) & 0x0f; }
inline bool IsTruncated(const uint8_t* h) { return (h[2] & 0x02) != 0; }
inline void SetTruncated(uint8_t* h) { h[2] |= 0x02; }
inline bool RecursionDesired(const uint8_t* h) { return (h[2] & 0x01) != 0; }
inline bool CheckingDisabled(const uint8_t* h) { return (h[3] & 0x10) != 0; }
inline Rcode GetRcode(const uint8_t* h) { return static_cast<Rcode>(h[3] & 0x0f); }
inline uint16_t QdCount(const uint8_t* h) { return ReadU16(h + 4); }
inline uint16_t AnCount(const uint8_t* h) { return ReadU16(h + 6); }
inline uint16_t NsCount(const uint8_t* h) { return ReadU16(h + 8); }
inline uint16_t ArCount(const uint8_t* h) { return ReadU16(h + 10); }
}  // namespace header

// What ParseQuery decided about a client's message.
enum class QueryParse : uint8_t {
  kOk,        // a well-formed standard query: forward it
  kDrop,      // no reply at all: too short to carry an ID, or QR=1 (reflection)
  kFormErr,   // reply FORMERR (header usable, body malformed)
  kNotImp,    // reply NOTIMP (opcode other than QUERY)
  kBadVers,   // reply Rcode::kBadVers (EDNS VERSION > 0, RFC 6891 §6.1.3)
  kNotAuth,   // reply Rcode::kNotAuth: signed with TSIG, a key we cannot know
};

// Facts about a query, as offsets into the caller's buffer: all of them for
// a valid query, as many as could be read for one ParseQuery rejects.
struct QueryInfo {
  uint16_t id = 0;
  // The question section starts at kHeaderSize; these are its lengths.
  uint16_t qname_length = 0;     // wire length of QNAME incl. the root label
  uint16_t question_length = 0;  // qname_length + 4
  uint16_t qtype = 0;
  uint16_t qclass = 0;
  bool has_edns = false;
  bool dnssec_ok = false;       // EDNS DO bit
  uint8_t edns_version = 0;     // OPT VERSION as sent, 0 without EDNS
  uint16_t edns_udp_size = 0;   // as advertised, 0 without EDNS
  // Offset of the OPT RR (its owner name byte) or 0 when absent.
  uint16_t opt_offset = 0;
  // Offset of the TSIG RR (the last additional record) or 0 when absent.
  uint16_t tsig_offset = 0;
  // Largest UDP response this client accepts: 512 without EDNS, else
  // max(512, advertised size) (RFC 6891 §6.2.5).
  uint16_t udp_response_limit = kClassicUdpLimit;
};

// Validates a client query in place. On kOk, `info` describes it; on kFormErr
// and kNotImp, `info.id` and (when parseable) the question fields are set so
// an error reply can echo them (question_length == 0 when it could not be
// parsed). The EDNS fields are set on every verdict but kDrop whenever the
// message is readable as far as its OPT RR, so the error reply carries an
// OPT as RFC 6891 §7 requires; this includes a FORMERR for the OPT itself
// (a second OPT, or options that do not add up to its RDLENGTH).
//
// Verdicts in order of precedence: kDrop; kFormErr for the question;
// kNotImp; kFormErr for the records (malformed, trailing bytes, an OPT or
// TSIG outside the additional section, a second OPT, a TSIG that is not the
// last record (RFC 8945 §5.1), and any answer or authority record: a
// standard query has QDCOUNT 1 and ANCOUNT = NSCOUNT = 0, RFC 1035 §4.1.1,
// RFC 7766); kNotAuth for a well-placed TSIG (RFC 8945 §5.2.1: we hold no
// keys, and a forwarder that rewrites the ID and EDNS cannot pass a signed
// message on unchanged as §5.5 would want); kBadVers for an OPT VERSION
// above 0 (its options are then not checked: their format is that
// version's); kFormErr for malformed version-0 options; kOk.
QueryParse ParseQuery(std::span<const uint8_t> wire, QueryInfo& info);

// Returns the wire length of the uncompressed name at `wire[offset]`, or 0 if
// it is malformed: a compression pointer, a label type other than 0b00, a
// name over 255 bytes, or running past the end.
size_t UncompressedNameLength(std::span<const uint8_t> wire, size_t offset);

// Skips a possibly compressed name starting at `offset` (pointers are not
// followed, so loops cannot hang this). Returns the offset just past the
// name, or 0 if malformed.
size_t SkipName(std::span<const uint8_t> wire, size_t offset);

// Skips one resource record at `offset`; returns the offset past it, or 0.
size_t SkipRecord(std::span<const uint8_t> wire, size_t offset);

// Compares two question sections (QNAME + QTYPE + QCLASS, uncompressed):
// names case-insensitively (RFC 4343), type and class exactly.
bool QuestionsMatch(std::span<const uint8_t> a, std::span<const uint8_t> b);

// Facts about an upstream response needed to route it back.
struct ResponseInfo {
  uint16_t id = 0;
  uint16_t question_length = 0;  // question starts at kHeaderSize
};

// Checks that `wire` is a response with exactly one uncompressed question.
// Returns false for anything else (the caller discards and counts it).
bool ParseResponse(std::span<const uint8_t> wire, ResponseInfo& info);

// Writes a header-plus-question error reply for `query` into `out` with
// rcode `rcode`: ID, opcode and RD copied, QR=1, RA=1. The question is echoed
// when `query` has exactly one uncompressed question (read from `query`, not
// from `info.question_length`). An OPT RR (UDP size `our_udp_size`, version
// 0, no options) is added exactly when `info.has_edns` (RFC 6891 §7); its DO
// bit is set when `info.dnssec_ok` or the query's own OPT has DO (RFC 3225
// §3). So `info` may be the one ParseQuery filled in or one rebuilt with only
// `has_edns` (and optionally `dnssec_ok`) from a stored query. Returns the
// length written (at most kMaxErrorReplyLength), or 0 if `out` is too small
// or `query` is shorter than 4 bytes.
//
// For Rcode::kNotAuth with `info.tsig_offset` naming the query's TSIG RR
// (uncompressed names), that RR is echoed unsigned after the OPT: MAC Size
// 0, Error BADKEY, Other Len 0, the query's Time Signed, Fudge and Original
// ID (RFC 8945 §5.2.1, §5.3.2); ARCOUNT counts it. Left out when it would
// take the reply past 512 bytes.
//
// An extended `rcode` (above 15, e.g. kBadVers) is split: its low 4 bits in
// the header, its upper 8 bits in the OPT TTL's first byte. Without
// `info.has_edns` there is no OPT to carry them, so none is built (returns 0)
// rather than a reply that would read as a different RCODE.
size_t BuildErrorReply(std::span<const uint8_t> query, const QueryInfo& info,
                       Rcode rcode, uint16_t our_udp_size,
                       std::span<uint8_t> out);

// RFC 8482 §4.2: the answer to an ANY query over UDP, one synthesized
// HINFO RR (CPU "RFC8482", OS "", TTL kMinimalAnyTtl) for the QNAME,
// otherwise as BuildErrorReply(NOERROR). 0 when `out` is too small.
inline constexpr uint32_t kMinimalAnyTtl = 3600;
inline constexpr uint16_t kTypeAny = 255;
inline constexpr size_t kMinimalAnyRrSize = 2 + 10 + 9;  // pointer, fixed part, RDATA
size_t BuildMinimalAnyReply(std::span<const uint8_t> query, const QueryInfo& info,
                            uint16_t our_udp_size, std::span<uint8_t> out);

// Shrinks the response in `msg[0, length)` to fit `limit` bytes as a valid
// message with TC=1: header, question and (if it fits) the OPT RR; no other
// records (RFC 2181 §9: a client that sees TC retries over TCP). Returns the
// new length. REQUIRES: the message passed ParseResponse.
size_t TruncateResponse(std::span<uint8_t> msg, size_t length, size_t limit);

}  // namespace dotproxy::dns
