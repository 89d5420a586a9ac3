#include "dotproxy/dns/message.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace dotproxy::dns {
namespace {

using Bytes = std::vector<uint8_t>;

void AppendName(Bytes& out, const std::string& dotted) {
  size_t start = 0;
  while (start < dotted.size()) {
    size_t dot = dotted.find('.', start);
    if (dot == std::string::npos) dot = dotted.size();
    out.push_back(static_cast<uint8_t>(dot - start));
    out.insert(out.end(), dotted.begin() + start, dotted.begin() + dot);
    start = dot + 1;
  }
  out.push_back(0);
}

void AppendU16(Bytes& out, uint16_t v) {
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v));
}

void AppendOpt(Bytes& out, uint16_t udp_size, bool dnssec_ok) {
  out.push_back(0);
  AppendU16(out, kTypeOpt);
  AppendU16(out, udp_size);
  AppendU16(out, 0);
  AppendU16(out, dnssec_ok ? 0x8000 : 0);
  AppendU16(out, 0);
}

Bytes MakeQuery(const std::string& name, uint16_t qtype = 1, uint16_t id = 0x1234,
                int edns_size = -1, bool dnssec_ok = false) {
  Bytes q = {static_cast<uint8_t>(id >> 8), static_cast<uint8_t>(id), 0x01, 0x00, 0, 1, 0, 0,
             0, 0, 0, static_cast<uint8_t>(edns_size >= 0 ? 1 : 0)};
  AppendName(q, name);
  AppendU16(q, qtype);
  AppendU16(q, 1);
  if (edns_size >= 0) AppendOpt(q, static_cast<uint16_t>(edns_size), dnssec_ok);
  return q;
}

// A response to `query` with `answers` A records (compressed owner names).
Bytes MakeResponse(const Bytes& query, int answers, bool with_opt) {
  Bytes r(query.begin(), query.begin() + kHeaderSize);
  r[2] |= 0x80;
  r[3] = 0x80;
  const size_t question_length = UncompressedNameLength(query, kHeaderSize) + 4;
  r.insert(r.end(), query.begin() + kHeaderSize, query.begin() + kHeaderSize + question_length);
  WriteU16(&r[6], static_cast<uint16_t>(answers));
  WriteU16(&r[10], with_opt ? 1 : 0);
  for (int i = 0; i < answers; ++i) {
    r.push_back(0xc0);
    r.push_back(kHeaderSize);
    AppendU16(r, 1);
    AppendU16(r, 1);
    AppendU16(r, 0);
    AppendU16(r, 300);
    AppendU16(r, 4);
    r.insert(r.end(), {192, 0, 2, static_cast<uint8_t>(i)});
  }
  if (with_opt) AppendOpt(r, 1232, false);
  return r;
}

// An error reply as a client would read it, parsed here independently of
// message.cc (plain offsets, no library helpers) so the tests check the wire
// bytes rather than the code against itself.
struct Reply {
  bool well_formed = false;  // counts, question and OPT all consistent with the length
  uint16_t id = 0;
  uint8_t flags2 = 0;  // header byte 2: QR, opcode, AA, TC, RD
  uint8_t flags3 = 0;  // header byte 3: RA, Z, AD, CD, RCODE
  Bytes question;      // empty when QDCOUNT is 0
  bool has_opt = false;
  uint16_t opt_udp_size = 0;
  uint8_t opt_extended_rcode = 0;  // upper 8 bits of the 12-bit RCODE
  uint8_t opt_version = 0;
  bool opt_dnssec_ok = false;
  uint16_t opt_rdlength = 0;
  // The full RCODE: header bits | extended bits << 4 (RFC 6891 §6.1.3).
  unsigned rcode() const { return (flags3 & 0x0f) | unsigned{opt_extended_rcode} << 4; }
};

Reply ReadReply(const uint8_t* p, size_t n) {
  Reply r;
  if (n < 12) return r;
  r.id = static_cast<uint16_t>(p[0] << 8 | p[1]);
  r.flags2 = p[2];
  r.flags3 = p[3];
  const unsigned qd = p[4] << 8 | p[5], an = p[6] << 8 | p[7], ns = p[8] << 8 | p[9],
                 ar = p[10] << 8 | p[11];
  if (qd > 1 || an != 0 || ns != 0 || ar > 1) return r;
  size_t pos = 12;
  if (qd == 1) {
    while (pos < n && p[pos] != 0) pos += p[pos] + 1;
    pos += 1 + 4;
    if (pos > n) return r;
    r.question.assign(p + 12, p + pos);
  }
  if (ar == 1) {
    if (pos + 11 > n || p[pos] != 0 || (p[pos + 1] << 8 | p[pos + 2]) != kTypeOpt) return r;
    r.has_opt = true;
    r.opt_udp_size = static_cast<uint16_t>(p[pos + 3] << 8 | p[pos + 4]);
    r.opt_extended_rcode = p[pos + 5];
    r.opt_version = p[pos + 6];
    r.opt_dnssec_ok = (p[pos + 7] & 0x80) != 0;
    r.opt_rdlength = static_cast<uint16_t>(p[pos + 9] << 8 | p[pos + 10]);
    pos += 11 + r.opt_rdlength;
  }
  r.well_formed = pos == n;
  return r;
}

Bytes QuestionOf(const Bytes& q, size_t question_length) {
  return Bytes(q.begin() + kHeaderSize, q.begin() + kHeaderSize + question_length);
}

// Checks one error reply against what the query asked for.
void ExpectErrorReply(const Reply& r, uint16_t id, unsigned rcode, const Bytes& question,
                      bool has_opt, bool dnssec_ok, uint16_t our_udp_size) {
  EXPECT_TRUE(r.well_formed);
  EXPECT_EQ(r.id, id);
  EXPECT_EQ(r.flags2 & 0x80, 0x80) << "QR";
  EXPECT_EQ(r.flags3 & 0x80, 0x80) << "RA";
  EXPECT_EQ(r.rcode(), rcode);
  EXPECT_EQ(r.question, question);
  EXPECT_EQ(r.has_opt, has_opt) << "RFC 6891 §7: OPT in the reply iff in the query";
  if (has_opt) {
    EXPECT_EQ(r.opt_udp_size, our_udp_size);
    EXPECT_EQ(r.opt_version, 0) << "we implement EDNS version 0 only";
    EXPECT_EQ(r.opt_dnssec_ok, dnssec_ok) << "RFC 3225 §3: DO copied from the query";
    EXPECT_EQ(r.opt_rdlength, 0);
  }
}

TEST(MessageParserTest, AcceptsPlainQuery) {
  const Bytes q = MakeQuery("www.example.com");
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  EXPECT_EQ(info.id, 0x1234);
  EXPECT_EQ(info.qname_length, 17);
  EXPECT_EQ(info.question_length, 21);
  EXPECT_EQ(info.qtype, 1);
  EXPECT_EQ(info.qclass, 1);
  EXPECT_FALSE(info.has_edns);
  EXPECT_EQ(info.udp_response_limit, 512);
}

TEST(MessageParserTest, ReadsEdnsSizeAndDoBit) {
  const Bytes q = MakeQuery("example.com", 28, 7, 4096, true);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  EXPECT_TRUE(info.has_edns);
  EXPECT_TRUE(info.dnssec_ok);
  EXPECT_EQ(info.edns_udp_size, 4096);
  EXPECT_EQ(info.udp_response_limit, 4096);
  EXPECT_EQ(info.opt_offset, kHeaderSize + info.question_length);
}

TEST(MessageParserTest, EdnsSizeBelow512CountsAs512) {
  const Bytes q = MakeQuery("example.com", 1, 7, 100);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  EXPECT_EQ(info.udp_response_limit, 512);
}

TEST(MessageParserTest, DropsShortPacket) {
  const Bytes q = {1, 2, 3, 4, 5};
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kDrop);
}

TEST(MessageParserTest, DropsResponses) {
  Bytes q = MakeQuery("example.com");
  q[2] |= 0x80;
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kDrop);
}

TEST(MessageParserTest, RejectsQdcountOtherThanOne) {
  Bytes q = MakeQuery("example.com");
  QueryInfo info;
  q[5] = 0;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  EXPECT_EQ(info.id, 0x1234);
  q[5] = 2;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
}

TEST(MessageParserTest, RejectsCompressionPointerLoop) {
  Bytes q = {0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1};
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  EXPECT_EQ(info.question_length, 0);
}

TEST(MessageParserTest, RejectsTruncatedQuestion) {
  Bytes q = MakeQuery("example.com");
  q.resize(q.size() - 3);
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
}

TEST(MessageParserTest, RejectsLabelRunningPastEnd) {
  Bytes q = {0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 60, 'a', 'b'};
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
}

TEST(MessageParserTest, RejectsNameLongerThan255) {
  std::string name;
  for (int i = 0; i < 5; ++i) name += std::string(60, 'a') + ".";
  name += "com";
  const Bytes q = MakeQuery(name);
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
}

TEST(MessageParserTest, RejectsTrailingGarbage) {
  Bytes q = MakeQuery("example.com");
  q.push_back(0xff);
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
}

TEST(MessageParserTest, RejectsTwoOptRecords) {
  Bytes q = MakeQuery("example.com", 1, 1, 1232);
  AppendOpt(q, 1232, false);
  q[11] = 2;
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
}

TEST(MessageParserTest, RejectsAdditionalCountBeyondData) {
  Bytes q = MakeQuery("example.com");
  q[11] = 1;
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
}

TEST(MessageParserTest, NonQueryOpcodeIsNotImp) {
  Bytes q = MakeQuery("example.com");
  q[2] = (2 << 3);  // STATUS
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kNotImp);
  EXPECT_EQ(info.question_length, 17);
}

// A query for `name` A whose OPT says EDNS `version` (RFC 6891 §6.1.3).
Bytes MakeVersionedQuery(uint8_t version, bool dnssec_ok = true) {
  Bytes q = MakeQuery("a.example", 1, 0x0b0b, 4096, dnssec_ok);
  q[q.size() - 5] = version;  // TTL byte 1 of the OPT that ends the message
  return q;
}

TEST(MessageParserTest, RecordsEdnsVersionZero) {
  const Bytes q = MakeVersionedQuery(0);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  EXPECT_EQ(info.edns_version, 0);
}

TEST(MessageParserTest, EdnsVersionAboveZeroIsBadVers) {
  for (const uint8_t version : {1, 2, 255}) {
    const Bytes q = MakeVersionedQuery(version);
    QueryInfo info;
    ASSERT_EQ(ParseQuery(q, info), QueryParse::kBadVers) << int(version);
    // Everything an error reply needs.
    EXPECT_EQ(info.id, 0x0b0b);
    EXPECT_EQ(info.question_length, 15);
    EXPECT_EQ(info.qtype, 1);
    EXPECT_EQ(info.qclass, 1);
    EXPECT_TRUE(info.has_edns);
    EXPECT_TRUE(info.dnssec_ok);
    EXPECT_EQ(info.edns_version, version);
    EXPECT_EQ(info.edns_udp_size, 4096);
    EXPECT_EQ(info.opt_offset, kHeaderSize + 15);
  }
}

// Options of a version we do not implement are not ours to judge.
TEST(MessageParserTest, BadVersIgnoresOptionsOfThatVersion) {
  Bytes q = MakeVersionedQuery(1);
  WriteU16(&q[q.size() - 2], 3);
  q.insert(q.end(), {0xde, 0xad, 0xbe});  // not whole version-0 options
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kBadVers);
}

TEST(MessageParserTest, MalformedMessageIsFormErrBeforeBadVers) {
  Bytes q = MakeVersionedQuery(1);
  q.push_back(0);  // trailing garbage
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  EXPECT_EQ(info.edns_version, 1);
  q = MakeVersionedQuery(1);
  q[2] = (2 << 3);  // STATUS
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kNotImp);
}

TEST(MessageParserTest, QuestionsMatchIgnoresCaseOnly) {
  const Bytes a = MakeQuery("WwW.ExAmPle.CoM");
  const Bytes b = MakeQuery("www.example.com");
  const Bytes c = MakeQuery("www.example.org");
  const Bytes d = MakeQuery("www.example.com", 28);
  auto question = [](const Bytes& q) {
    return std::span<const uint8_t>(q.data() + kHeaderSize, q.size() - kHeaderSize);
  };
  EXPECT_TRUE(QuestionsMatch(question(a), question(b)));
  EXPECT_FALSE(QuestionsMatch(question(b), question(c)));
  EXPECT_FALSE(QuestionsMatch(question(b), question(d)));
}

TEST(AsciiLowerTest, LowersOnlyAsciiCapitals) {
  EXPECT_EQ(AsciiLower('A'), 'a');
  EXPECT_EQ(AsciiLower('Z'), 'z');
  EXPECT_EQ(AsciiLower('a'), 'a');
  EXPECT_EQ(AsciiLower('@'), '@');  // 'A' - 1
  EXPECT_EQ(AsciiLower('['), '[');  // 'Z' + 1
  EXPECT_EQ(AsciiLower(0xc4), 0xc4);  // RFC 4343 §3: only ASCII letters fold
  EXPECT_EQ(AsciiLower(63), 63);      // a label-length byte
}

TEST(MessageParserTest, SkipNameStopsAtPointerWithoutFollowing) {
  const Bytes wire = {0xc0, 0x00};  // points at itself
  EXPECT_EQ(SkipName(wire, 0), 2u);
  const Bytes cut = {0xc0};
  EXPECT_EQ(SkipName(cut, 0), 0u);
}

TEST(ResponseParserTest, AcceptsResponseAndReportsQuestion) {
  const Bytes q = MakeQuery("example.com");
  const Bytes r = MakeResponse(q, 2, false);
  ResponseInfo info;
  ASSERT_TRUE(ParseResponse(r, info));
  EXPECT_EQ(info.id, 0x1234);
  EXPECT_EQ(info.question_length, 17);
}

TEST(ResponseParserTest, RejectsQueriesAndEmptyQuestion) {
  const Bytes q = MakeQuery("example.com");
  ResponseInfo info;
  EXPECT_FALSE(ParseResponse(q, info));
  Bytes r = MakeResponse(q, 0, false);
  r[5] = 0;
  EXPECT_FALSE(ParseResponse(r, info));
}

TEST(ErrorReplyTest, FormErrEchoesIdQuestionAndRd) {
  const Bytes q = MakeQuery("example.com", 1, 0xbeef);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  uint8_t out[512];
  const size_t n = BuildErrorReply(q, info, Rcode::kServFail, 1232, out);
  ASSERT_EQ(n, kHeaderSize + info.question_length);
  EXPECT_EQ(header::Id(out), 0xbeef);
  EXPECT_TRUE(header::IsResponse(out));
  EXPECT_TRUE(header::RecursionDesired(out));
  EXPECT_EQ(header::GetRcode(out), Rcode::kServFail);
  EXPECT_EQ(header::QdCount(out), 1);
  EXPECT_EQ(header::ArCount(out), 0);
  EXPECT_EQ(0, std::memcmp(out + kHeaderSize, q.data() + kHeaderSize, info.question_length));
}

TEST(ErrorReplyTest, AddsOptWhenQueryHadEdns) {
  const Bytes q = MakeQuery("example.com", 1, 1, 4096, true);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  uint8_t out[512];
  const size_t n = BuildErrorReply(q, info, Rcode::kServFail, 1232, out);
  ASSERT_EQ(n, kHeaderSize + info.question_length + 11);
  EXPECT_EQ(header::ArCount(out), 1);
  const uint8_t* opt = out + kHeaderSize + info.question_length;
  EXPECT_EQ(ReadU16(opt + 1), kTypeOpt);
  EXPECT_EQ(ReadU16(opt + 3), 1232);
  EXPECT_EQ(opt[7] & 0x80, 0x80);  // DO echoed
}

TEST(MinimalAnyTest, OneSynthesizedHinfoThenTheOpt) {
  const Bytes q = MakeQuery("example.com", kTypeAny, 7, 4096);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  uint8_t out[512];
  const size_t n = BuildMinimalAnyReply(q, info, 1232, out);
  ASSERT_EQ(n, kHeaderSize + info.question_length + kMinimalAnyRrSize + 11);
  EXPECT_EQ(header::Id(out), 7);
  EXPECT_TRUE(header::IsResponse(out));
  EXPECT_EQ(header::GetRcode(out), Rcode::kNoError);
  EXPECT_EQ(header::AnCount(out), 1);
  EXPECT_EQ(header::ArCount(out), 1);
  const uint8_t* rr = out + kHeaderSize + info.question_length;
  EXPECT_EQ(ReadU16(rr), 0xc000 | kHeaderSize);  // owner: the QNAME
  EXPECT_EQ(ReadU16(rr + 2), 13);                // HINFO
  EXPECT_EQ(ReadU16(rr + 4), 1);                 // IN, as asked
  EXPECT_EQ(ReadU32(rr + 6), kMinimalAnyTtl);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(rr + 13), 7), "RFC8482");
  const uint8_t* opt = rr + kMinimalAnyRrSize;
  EXPECT_EQ(ReadU16(opt + 1), kTypeOpt);
  // Without EDNS: no OPT; too small a buffer: nothing.
  const Bytes plain = MakeQuery("example.com", kTypeAny, 8);
  ASSERT_EQ(ParseQuery(plain, info), QueryParse::kOk);
  EXPECT_EQ(BuildMinimalAnyReply(plain, info, 1232, out),
            kHeaderSize + info.question_length + kMinimalAnyRrSize);
  EXPECT_EQ(BuildMinimalAnyReply(plain, info, 1232, std::span<uint8_t>(out, 20)), 0u);
}

TEST(ErrorReplyTest, FormErrWithoutParseableQuestionHasNoQuestion) {
  Bytes q = {0xab, 0xcd, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0};
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  uint8_t out[512];
  const size_t n = BuildErrorReply(q, info, Rcode::kFormErr, 1232, out);
  ASSERT_EQ(n, kHeaderSize);
  EXPECT_EQ(header::Id(out), 0xabcd);
  EXPECT_EQ(header::QdCount(out), 0);
  EXPECT_EQ(header::GetRcode(out), Rcode::kFormErr);
}

TEST(ErrorReplyTest, RefusesTooSmallBuffer) {
  const Bytes q = MakeQuery("example.com");
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  uint8_t out[10];
  EXPECT_EQ(BuildErrorReply(q, info, Rcode::kServFail, 1232, out), 0u);
}

TEST(ErrorReplyTest, EveryRcodeCarriesOptExactlyWhenTheQueryDid) {
  const Rcode rcodes[] = {Rcode::kFormErr, Rcode::kServFail, Rcode::kNotImp, Rcode::kRefused};
  struct Edns {
    int size;  // -1: no OPT
    bool dnssec_ok;
  };
  const Edns variants[] = {{-1, false}, {4096, false}, {1232, true}};
  for (const Rcode rcode : rcodes) {
    for (const Edns& edns : variants) {
      SCOPED_TRACE(testing::Message() << "rcode " << int(rcode) << " edns " << edns.size
                                      << " do " << edns.dnssec_ok);
      const Bytes q = MakeQuery("a.example", 1, 0x5150, edns.size, edns.dnssec_ok);
      QueryInfo info;
      ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
      uint8_t out[kMaxErrorReplyLength];
      const size_t n = BuildErrorReply(q, info, rcode, 1400, out);
      ASSERT_GT(n, 0u);
      ExpectErrorReply(ReadReply(out, n), 0x5150, static_cast<unsigned>(rcode),
                       QuestionOf(q, info.question_length), edns.size >= 0, edns.dnssec_ok, 1400);
    }
  }
}

// RFC 7873 §5.4 style: QDCOUNT 0 with an OPT. FORMERR, but the OPT is still
// found so the reply carries one.
TEST(ErrorReplyTest, FormErrForMissingQuestionKeepsOpt) {
  Bytes q = {0x00, 0x07, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 1};
  AppendOpt(q, 4096, true);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  EXPECT_EQ(info.question_length, 0);
  EXPECT_TRUE(info.has_edns);
  EXPECT_TRUE(info.dnssec_ok);
  EXPECT_EQ(info.opt_offset, kHeaderSize);
  uint8_t out[kMaxErrorReplyLength];
  const size_t n = BuildErrorReply(q, info, Rcode::kFormErr, 1232, out);
  ExpectErrorReply(ReadReply(out, n), 7, 1, {}, true, true, 1232);
}

TEST(ErrorReplyTest, FormErrForTwoQuestionsKeepsOpt) {
  Bytes q = MakeQuery("a.example");
  AppendName(q, "b.example");
  AppendU16(q, 1);
  AppendU16(q, 1);
  AppendOpt(q, 1232, false);
  q[5] = 2;
  q[11] = 1;
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  EXPECT_TRUE(info.has_edns);
  uint8_t out[kMaxErrorReplyLength];
  const size_t n = BuildErrorReply(q, info, Rcode::kFormErr, 1232, out);
  ExpectErrorReply(ReadReply(out, n), 0x1234, 1, {}, true, false, 1232);
}

TEST(ErrorReplyTest, FormErrForCompressedQuestionKeepsOpt) {
  Bytes q = {0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0xc0, 12, 0, 1, 0, 1};
  AppendOpt(q, 1232, true);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  EXPECT_EQ(info.question_length, 0);
  EXPECT_TRUE(info.has_edns);
  uint8_t out[kMaxErrorReplyLength];
  const size_t n = BuildErrorReply(q, info, Rcode::kFormErr, 1232, out);
  ExpectErrorReply(ReadReply(out, n), 1, 1, {}, true, true, 1232);
}

TEST(ErrorReplyTest, FormErrForTrailingBytesAndSecondOptKeepsOpt) {
  Bytes trailing = MakeQuery("a.example", 1, 2, 1232, true);
  trailing.push_back(0xff);
  Bytes two_opts = MakeQuery("a.example", 1, 2, 1232, true);
  AppendOpt(two_opts, 512, false);
  two_opts[11] = 2;
  for (const Bytes& q : {trailing, two_opts}) {
    QueryInfo info;
    ASSERT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
    uint8_t out[kMaxErrorReplyLength];
    const size_t n = BuildErrorReply(q, info, Rcode::kFormErr, 1232, out);
    ExpectErrorReply(ReadReply(out, n), 2, 1, QuestionOf(q, info.question_length), true, true,
                     1232);
  }
}

// RFC 6891 §7: a FORMERR caused by a malformed OPT option MUST include an
// OPT record. The option framing is checked by ParseQuery itself, so such a
// query never reaches the cache or a slot.
TEST(ErrorReplyTest, FormErrForMalformedOptionKeepsOpt) {
  Bytes q = MakeQuery("a.example", 1, 9, 4096, true);
  WriteU16(&q[q.size() - 2], 5);                  // RDLENGTH 5:
  q.insert(q.end(), {0, 10, 0, 50, 1});           // cookie declares 50 bytes, has 1
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  EXPECT_TRUE(info.has_edns);
  EXPECT_EQ(info.question_length, 15);
  uint8_t out[kMaxErrorReplyLength];
  const size_t n = BuildErrorReply(q, info, Rcode::kFormErr, 1232, out);
  ExpectErrorReply(ReadReply(out, n), 9, 1, QuestionOf(q, 15), true, true, 1232);
}

TEST(ErrorReplyTest, NotImpKeepsOpt) {
  Bytes q = MakeQuery("a.example", 1, 3, 4096, true);
  q[2] = (4 << 3);  // NOTIFY
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kNotImp);
  EXPECT_TRUE(info.has_edns);
  EXPECT_TRUE(info.dnssec_ok);
  uint8_t out[kMaxErrorReplyLength];
  const size_t n = BuildErrorReply(q, info, Rcode::kNotImp, 1232, out);
  const Reply r = ReadReply(out, n);
  ExpectErrorReply(r, 3, 4, QuestionOf(q, info.question_length), true, true, 1232);
  EXPECT_EQ((r.flags2 >> 3) & 0x0f, 4) << "opcode echoed";
}

// The shard answers SERVFAIL for a failed upstream query from the stored
// upstream form and a QueryInfo with only some fields filled in.
TEST(ErrorReplyTest, RebuiltInfoTakesQuestionAndDoBitFromTheQuery) {
  const Bytes q = MakeQuery("a.example", 1, 4, 1232, true);
  QueryInfo rebuilt;
  rebuilt.has_edns = true;  // question_length, dnssec_ok, opt_offset left unset
  uint8_t out[kMaxErrorReplyLength];
  const size_t n = BuildErrorReply(q, rebuilt, Rcode::kServFail, 1232, out);
  ExpectErrorReply(ReadReply(out, n), 4, 2, QuestionOf(q, 15), true, true, 1232);
}

TEST(ErrorReplyTest, StaleQuestionLengthEchoesOnlyTheRealQuestion) {
  const Bytes q = MakeQuery("a.example", 1, 5, 1232, false);
  QueryInfo stale;
  stale.question_length = 20;  // from a longer name; runs into the OPT
  stale.has_edns = true;
  stale.opt_offset = 3;  // not an OPT: ignored
  ASSERT_LE(kHeaderSize + stale.question_length, q.size());
  uint8_t out[kMaxErrorReplyLength];
  const size_t n = BuildErrorReply(q, stale, Rcode::kServFail, 1232, out);
  ExpectErrorReply(ReadReply(out, n), 5, 2, QuestionOf(q, 15), true, false, 1232);
}

// has_edns is the client's: an upstream form always has an OPT (keepalive,
// padding), but a client that sent none must get none (RFC 6891 §7).
TEST(ErrorReplyTest, NoOptWhenInfoSaysClientHadNone) {
  const Bytes q = MakeQuery("a.example", 1, 6, 1232, true);
  QueryInfo info;
  info.question_length = 15;
  uint8_t out[kMaxErrorReplyLength];
  const size_t n = BuildErrorReply(q, info, Rcode::kServFail, 1232, out);
  ExpectErrorReply(ReadReply(out, n), 6, 2, QuestionOf(q, 15), false, false, 1232);
}

// RFC 6891 §6.1.3: BADVERS is extended RCODE 16: header RCODE 0 and 1 in
// the upper 8 bits (the first TTL byte) of our OPT, whose VERSION is 0, the
// highest we implement.
TEST(ErrorReplyTest, BadVersSplitsTheRcodeAcrossHeaderAndOpt) {
  for (const bool dnssec_ok : {false, true}) {
    const Bytes q = MakeVersionedQuery(1, dnssec_ok);
    QueryInfo info;
    ASSERT_EQ(ParseQuery(q, info), QueryParse::kBadVers);
    uint8_t out[kMaxErrorReplyLength];
    const size_t n = BuildErrorReply(q, info, Rcode::kBadVers, 1232, out);
    ASSERT_EQ(n, kHeaderSize + 15 + 11);
    const Reply r = ReadReply(out, n);
    ExpectErrorReply(r, 0x0b0b, 16, QuestionOf(q, 15), true, dnssec_ok, 1232);
    EXPECT_EQ(r.flags3 & 0x0f, 0);
    EXPECT_EQ(r.opt_extended_rcode, 1);
    EXPECT_EQ(header::GetRcode(out), Rcode::kNoError);  // the header alone cannot tell
  }
}

// Without an OPT there is nowhere to put the upper RCODE bits; the reply
// would read as NOERROR, so none is built.
TEST(ErrorReplyTest, ExtendedRcodeWithoutEdnsBuildsNothing) {
  const Bytes q = MakeQuery("a.example");
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  uint8_t out[kMaxErrorReplyLength];
  EXPECT_EQ(BuildErrorReply(q, info, Rcode::kBadVers, 1232, out), 0u);
}

TEST(TruncateTest, KeepsHeaderQuestionAndOptWithTc) {
  const Bytes q = MakeQuery("example.com", 1, 0x4242, 1232);
  Bytes r = MakeResponse(q, 60, true);
  ASSERT_GT(r.size(), 512u);
  const size_t n = TruncateResponse(r, r.size(), 512);
  EXPECT_EQ(n, kHeaderSize + 17 + 11);
  EXPECT_TRUE(header::IsTruncated(r.data()));
  EXPECT_EQ(header::AnCount(r.data()), 0);
  EXPECT_EQ(header::ArCount(r.data()), 1);
  EXPECT_EQ(header::Id(r.data()), 0x4242);
  // The result parses as a response again.
  ResponseInfo info;
  EXPECT_TRUE(ParseResponse(std::span<const uint8_t>(r.data(), n), info));
  const uint8_t* opt = r.data() + kHeaderSize + 17;
  EXPECT_EQ(ReadU16(opt + 1), kTypeOpt);
}

TEST(TruncateTest, WithoutOptKeepsQuestionOnly) {
  const Bytes q = MakeQuery("example.com");
  Bytes r = MakeResponse(q, 60, false);
  const size_t n = TruncateResponse(r, r.size(), 512);
  EXPECT_EQ(n, kHeaderSize + 17);
  EXPECT_EQ(header::ArCount(r.data()), 0);
  EXPECT_TRUE(header::IsTruncated(r.data()));
}

// ---- Malformed structure refused at the edge (issue 10)

// An A record for `name` (uncompressed owner), for the answer or authority
// section of a query that should not have one.
void AppendARecord(Bytes& out, const std::string& name) {
  AppendName(out, name);
  AppendU16(out, 1);
  AppendU16(out, 1);
  AppendU16(out, 0);
  AppendU16(out, 300);
  AppendU16(out, 4);
  out.insert(out.end(), {192, 0, 2, 1});
}

// A TSIG RR (RFC 8945 §4.2) with key `key`, hmac-sha256 and a 32-byte MAC.
void AppendTsig(Bytes& out, const std::string& key, uint16_t original_id) {
  AppendName(out, key);
  AppendU16(out, kTypeTsig);
  AppendU16(out, 255);  // ANY
  AppendU16(out, 0);
  AppendU16(out, 0);
  Bytes rdata;
  AppendName(rdata, "hmac-sha256");
  rdata.insert(rdata.end(), {0, 0, 0x60, 0, 0, 1});  // Time Signed
  AppendU16(rdata, 300);                             // Fudge
  AppendU16(rdata, 32);                              // MAC Size
  rdata.insert(rdata.end(), 32, 0xab);               // MAC
  AppendU16(rdata, original_id);
  AppendU16(rdata, 0);  // Error
  AppendU16(rdata, 0);  // Other Len
  AppendU16(out, static_cast<uint16_t>(rdata.size()));
  out.insert(out.end(), rdata.begin(), rdata.end());
}

TEST(MessageParserTest, QueryWithAnAnswerRecordIsFormErr) {
  Bytes q = MakeQuery("example.com");
  AppendARecord(q, "example.com");
  q[7] = 1;  // ANCOUNT
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  EXPECT_EQ(info.question_length, 17) << "the question is still echoed";
}

TEST(MessageParserTest, QueryWithAnAuthorityRecordIsFormErrAndKeepsItsOpt) {
  Bytes q = MakeQuery("example.com");
  AppendARecord(q, "example.com");
  AppendOpt(q, 1232, true);
  q[9] = 1;   // NSCOUNT
  q[11] = 1;  // ARCOUNT: the OPT
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  EXPECT_TRUE(info.has_edns) << "the FORMERR must carry an OPT (RFC 6891 §7)";
}

TEST(MessageParserTest, OptOutsideTheAdditionalSectionIsFormErr) {
  for (const int section : {7, 9}) {  // ANCOUNT, NSCOUNT
    Bytes q = MakeQuery("example.com");
    AppendOpt(q, 1232, false);
    q[section] = 1;
    QueryInfo info;
    EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr) << "count at byte " << section;
    EXPECT_FALSE(info.has_edns) << "an OPT there is not the query's EDNS";
  }
}

TEST(MessageParserTest, OptOutsideTheAdditionalSectionIsFormErrEvenForNotify) {
  // Other opcodes are NOTIMP, but a misplaced OPT is never taken as EDNS.
  Bytes q = MakeQuery("example.com");
  AppendOpt(q, 1232, false);
  q[7] = 1;
  q[2] = 4 << 3;  // NOTIFY
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kNotImp);
  EXPECT_FALSE(info.has_edns);
}

TEST(MessageParserTest, TsigSignedQueryIsNotAuth) {
  Bytes q = MakeQuery("example.com", 1, 0x7777, 1232);
  const size_t tsig = q.size();
  AppendTsig(q, "key.example", 0x7777);
  q[11] = 2;
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kNotAuth);
  EXPECT_EQ(info.tsig_offset, tsig);
  EXPECT_TRUE(info.has_edns);
}

TEST(MessageParserTest, TsigThatIsNotTheLastRecordIsFormErr) {
  Bytes q = MakeQuery("example.com");
  AppendTsig(q, "key.example", 0x1234);
  AppendOpt(q, 1232, false);
  q[11] = 2;
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr) << "RFC 8945 §5.1";
}

TEST(MessageParserTest, TwoTsigRecordsAreFormErr) {
  Bytes q = MakeQuery("example.com");
  AppendTsig(q, "key.example", 0x1234);
  AppendTsig(q, "key.example", 0x1234);
  q[11] = 2;
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
}

TEST(MessageParserTest, TsigInTheAnswerSectionIsFormErr) {
  Bytes q = MakeQuery("example.com");
  AppendTsig(q, "key.example", 0x1234);
  q[7] = 1;
  QueryInfo info;
  EXPECT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
}

TEST(ErrorReplyTest, NotAuthEchoesAnUnsignedTsigWithBadKey) {
  Bytes q = MakeQuery("example.com", 1, 0x7777, 1232);
  AppendTsig(q, "key.example", 0x7777);
  q[11] = 2;
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kNotAuth);
  uint8_t out[kMaxErrorReplyLength];
  const size_t n = BuildErrorReply(q, info, Rcode::kNotAuth, 1232, out);
  ASSERT_GT(n, 0u);
  EXPECT_EQ(out[3] & 0x0f, 9) << "NOTAUTH";
  EXPECT_EQ(header::ArCount(out), 2) << "OPT, then TSIG";
  // Header, question (17), empty OPT (11), then the TSIG RR.
  size_t pos = kHeaderSize + 17 + 11;
  const Bytes key = {3, 'k', 'e', 'y', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0};
  ASSERT_GE(n, pos + key.size() + 10);
  EXPECT_EQ(Bytes(out + pos, out + pos + key.size()), key);
  pos += key.size();
  EXPECT_EQ(ReadU16(out + pos), kTypeTsig);
  EXPECT_EQ(ReadU16(out + pos + 2), 255);
  const size_t rdlength = ReadU16(out + pos + 8);
  pos += 10;
  ASSERT_EQ(pos + rdlength, n) << "the TSIG is the last thing in the reply";
  const size_t algorithm = 13;  // "hmac-sha256."
  EXPECT_EQ(rdlength, algorithm + 16);
  EXPECT_EQ(ReadU16(out + pos + algorithm + 8), 0) << "MAC Size 0: unsigned (RFC 8945 §5.3.2)";
  EXPECT_EQ(ReadU16(out + pos + algorithm + 10), 0x7777) << "Original ID";
  EXPECT_EQ(ReadU16(out + pos + algorithm + 12), kTsigErrorBadKey);
  EXPECT_EQ(ReadU16(out + pos + algorithm + 14), 0) << "Other Len";
}

TEST(ErrorReplyTest, FormErrForARecordInAQueryStaysHeaderQuestionOpt) {
  Bytes q = MakeQuery("example.com", 1, 0x2222, 1232);
  // The OPT is the last record: an answer record goes before it.
  Bytes answer;
  AppendARecord(answer, "example.com");
  q.insert(q.end() - 11, answer.begin(), answer.end());
  q[7] = 1;
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  uint8_t out[kMaxErrorReplyLength];
  const size_t n = BuildErrorReply(q, info, Rcode::kFormErr, 1232, out);
  ExpectErrorReply(ReadReply(out, n), 0x2222, 1, QuestionOf(q, 17), true, false, 1232);
}

}  // namespace
}  // namespace dotproxy::dns
