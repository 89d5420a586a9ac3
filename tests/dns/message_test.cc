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

}  // namespace
}  // namespace dotproxy::dns
