#include "dotproxy/dns/edns.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace dotproxy::dns {
namespace {

using Bytes = std::vector<uint8_t>;

void U16(Bytes& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v >> 8));
  b.push_back(static_cast<uint8_t>(v));
}

// Query for example.com A; with `options` in an OPT when `edns`.
Bytes Query(bool edns, const Bytes& options = {}, bool dnssec_ok = false) {
  Bytes q = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, static_cast<uint8_t>(edns ? 1 : 0)};
  const std::string labels = "\x07" "example" "\x03" "com";
  for (char c : labels) q.push_back(static_cast<uint8_t>(c));
  q.push_back(0);
  U16(q, 1);
  U16(q, 1);
  if (edns) {
    q.push_back(0);
    U16(q, kTypeOpt);
    U16(q, 4096);
    U16(q, 0);
    U16(q, dnssec_ok ? 0x8000 : 0);
    U16(q, static_cast<uint16_t>(options.size()));
    q.insert(q.end(), options.begin(), options.end());
  }
  return q;
}

// Returns the options of the OPT RR at the end of `m` as (code, length) pairs.
std::vector<std::pair<uint16_t, uint16_t>> OptOptions(const Bytes& m, size_t opt_offset) {
  std::vector<std::pair<uint16_t, uint16_t>> out;
  const size_t rdlength = ReadU16(&m[opt_offset + 9]);
  size_t p = opt_offset + 11;
  while (p + 4 <= opt_offset + 11 + rdlength) {
    out.emplace_back(ReadU16(&m[p]), ReadU16(&m[p + 2]));
    p += 4 + ReadU16(&m[p + 2]);
  }
  return out;
}

TEST(UpstreamQueryTest, AddsOptKeepaliveAndPadsTo128) {
  const Bytes q = Query(false);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  uint8_t out[1400];
  const size_t n = BuildUpstreamQuery(q, info, {}, out);
  ASSERT_GT(n, 0u);
  EXPECT_EQ(n % kQueryPaddingBlock, 0u);
  Bytes m(out, out + n);
  QueryInfo upstream;
  ASSERT_EQ(ParseQuery(m, upstream), QueryParse::kOk);
  EXPECT_TRUE(upstream.has_edns);
  EXPECT_FALSE(upstream.dnssec_ok);
  auto options = OptOptions(m, upstream.opt_offset);
  ASSERT_EQ(options.size(), 2u);
  EXPECT_EQ(options[0], std::make_pair(kOptionTcpKeepalive, uint16_t{0}));
  EXPECT_EQ(options[1].first, kOptionPadding);
}

TEST(UpstreamQueryTest, StripsClientSubnetKeepsOtherOptionsAndDoBit) {
  Bytes options;
  U16(options, kOptionClientSubnet);  // ECS 192.0.2.0/24
  U16(options, 7);
  options.insert(options.end(), {0, 1, 24, 0, 192, 0, 2});
  U16(options, 10);  // cookie
  U16(options, 8);
  options.insert(options.end(), {1, 2, 3, 4, 5, 6, 7, 8});
  const Bytes q = Query(true, options, true);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  uint8_t out[1400];
  const size_t n = BuildUpstreamQuery(q, info, {}, out);
  Bytes m(out, out + n);
  QueryInfo upstream;
  ASSERT_EQ(ParseQuery(m, upstream), QueryParse::kOk);
  EXPECT_TRUE(upstream.dnssec_ok);
  EXPECT_EQ(upstream.edns_udp_size, 4096);
  auto got = OptOptions(m, upstream.opt_offset);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], std::make_pair(uint16_t{10}, uint16_t{8}));
  EXPECT_EQ(got[1].first, kOptionTcpKeepalive);
  EXPECT_EQ(got[2].first, kOptionPadding);
  EXPECT_EQ(n % kQueryPaddingBlock, 0u);
}

TEST(UpstreamQueryTest, KeepsClientSubnetWhenAsked) {
  Bytes options;
  U16(options, kOptionClientSubnet);
  U16(options, 4);
  options.insert(options.end(), {0, 1, 0, 0});
  const Bytes q = Query(true, options);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  uint8_t out[1400];
  UpstreamQueryOptions keep;
  keep.strip_client_subnet = false;
  keep.pad = false;
  keep.request_keepalive = false;
  const size_t n = BuildUpstreamQuery(q, info, keep, out);
  EXPECT_EQ(Bytes(out, out + n), q);
}

TEST(UpstreamQueryTest, RejectsMalformedOptions) {
  Bytes options = {0, 10, 0, 50, 1};  // declares 50 bytes, has 1
  const Bytes q = Query(true, options);
  QueryInfo info;
  // ParseQuery catches it first; BuildUpstreamQuery still refuses on its own.
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  ASSERT_EQ(info.question_length, 17);
  uint8_t out[1400];
  EXPECT_EQ(BuildUpstreamQuery(q, info, {}, out), 0u);
}

// `a.example A` whose OPT holds one option header claiming 8 bytes of data
// inside a 4-byte RDLENGTH (the message ends where the RDATA ends).
Bytes OptionOverrunsRdataQuery() {
  Bytes q = {0xa1, 0x0e, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1};
  const std::string labels = "\x01" "a" "\x07" "example";
  for (char c : labels) q.push_back(static_cast<uint8_t>(c));
  q.push_back(0);
  U16(q, 1);  // A
  U16(q, 1);  // IN
  q.push_back(0);
  U16(q, kTypeOpt);
  U16(q, 1232);
  U16(q, 0);
  U16(q, 0x8000);  // DO
  U16(q, 4);       // RDLENGTH: just the option header
  U16(q, 10);      // COOKIE
  U16(q, 8);       // claims 8 bytes
  return q;
}

TEST(UpstreamQueryTest, OptionOverrunningRdataIsFormErrWithOpt) {
  const Bytes q = OptionOverrunsRdataQuery();
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  EXPECT_EQ(info.id, 0xa10e);
  EXPECT_EQ(info.question_length, 15);
  EXPECT_TRUE(info.has_edns);
  EXPECT_TRUE(info.dnssec_ok);
  EXPECT_EQ(info.opt_offset, kHeaderSize + 15);

  // Forwarding is refused too, whatever the caller did with the verdict.
  uint8_t upstream[1400];
  EXPECT_EQ(BuildUpstreamQuery(q, info, {}, upstream), 0u);

  uint8_t out[kMaxErrorReplyLength];
  const size_t n = BuildErrorReply(q, info, Rcode::kFormErr, 1232, out);
  ASSERT_EQ(n, kHeaderSize + 15 + 11);
  EXPECT_EQ(header::Id(out), 0xa10e);
  EXPECT_TRUE(header::IsResponse(out));
  EXPECT_EQ(header::GetRcode(out), Rcode::kFormErr);
  EXPECT_EQ(header::QdCount(out), 1);
  EXPECT_EQ(header::AnCount(out), 0);
  EXPECT_EQ(header::NsCount(out), 0);
  EXPECT_EQ(header::ArCount(out), 1);
  EXPECT_EQ(0, std::memcmp(out + kHeaderSize, q.data() + kHeaderSize, 15));
  const uint8_t* opt = out + kHeaderSize + 15;
  EXPECT_EQ(opt[0], 0);                  // root owner
  EXPECT_EQ(ReadU16(opt + 1), kTypeOpt);
  EXPECT_EQ(ReadU16(opt + 3), 1232);     // our UDP size
  EXPECT_EQ(ReadU32(opt + 5), 0x8000u);  // extended RCODE 0, version 0, DO echoed
  EXPECT_EQ(ReadU16(opt + 9), 0);        // no options
}

// A malformed answer or authority record must fail the whole query. Before
// the fix the skip loop went on from offset 0 after the first failure and
// re-read the header as a record: with ID 0x00xx the header "skips" as a
// root-owned record and a truncated message went upstream.
TEST(UpstreamQueryTest, RejectsMalformedAnswerSection) {
  Bytes q = Query(false);
  q[0] = 0x00;  // header byte 0 reads as a root owner name
  q[7] = 2;     // ANCOUNT 2; the header's RDLENGTH bytes (9, 10) read as 0
  q.push_back(0);  // answer: root owner, then only 3 of the 10 fixed bytes
  U16(q, 1);
  q.push_back(0);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  ASSERT_EQ(info.question_length, 17);  // the question is still described
  uint8_t out[1400];
  EXPECT_EQ(BuildUpstreamQuery(q, info, {}, out), 0u);
}

TEST(UpstreamQueryTest, RejectsMalformedAuthoritySection) {
  Bytes q = Query(false);
  q[0] = 0x00;
  q[9] = 2;  // NSCOUNT 2; the header's "RDLENGTH" (bytes 9, 10) reads as 512
  // Authority: a record whose RDLENGTH runs past the end of the message,
  // followed by enough bytes that the bogus header record would fit.
  q.push_back(0);
  U16(q, 1);
  U16(q, 1);
  U16(q, 0);
  U16(q, 300);
  U16(q, 0xffff);
  q.insert(q.end(), 520, 0);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kFormErr);
  uint8_t out[1400];
  EXPECT_EQ(BuildUpstreamQuery(q, info, {}, out), 0u);
}

TEST(UpstreamQueryTest, RejectsQuestionBeyondMessage) {
  const Bytes q = Query(false);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  info.question_length = static_cast<uint16_t>(q.size());  // stale or foreign info
  uint8_t out[1400];
  EXPECT_EQ(BuildUpstreamQuery(q, info, {}, out), 0u);
}

// BADVERS is answered locally: even a caller that ignores kBadVers cannot
// forward a query of an EDNS version we do not speak.
TEST(UpstreamQueryTest, RefusesEdnsVersionAboveZero) {
  Bytes q = Query(true, {}, true);
  q[q.size() - 5] = 1;  // OPT VERSION
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kBadVers);
  uint8_t out[1400];
  EXPECT_EQ(BuildUpstreamQuery(q, info, {}, out), 0u);
}

TEST(UpstreamQueryTest, QuestionAndIdUnchanged) {
  const Bytes q = Query(false);
  QueryInfo info;
  ASSERT_EQ(ParseQuery(q, info), QueryParse::kOk);
  uint8_t out[1400];
  const size_t n = BuildUpstreamQuery(q, info, {}, out);
  ASSERT_GT(n, q.size());
  EXPECT_EQ(0, std::memcmp(out, q.data(), 2));
  EXPECT_EQ(0, std::memcmp(out + kHeaderSize, q.data() + kHeaderSize, info.question_length));
}

// An answer to Query(): header QR, question, one A record, then an OPT with
// keepalive (timeout 250 = 25 s) and padding.
Bytes Answer() {
  Bytes a = Query(false);
  a[2] |= 0x80;
  a[7] = 1;   // ANCOUNT
  a[11] = 1;  // ARCOUNT
  a.insert(a.end(), {0xc0, 12});
  U16(a, 1);
  U16(a, 1);
  U16(a, 0);
  U16(a, 300);
  U16(a, 4);
  a.insert(a.end(), {192, 0, 2, 1});
  a.push_back(0);
  U16(a, kTypeOpt);
  U16(a, 1232);
  U16(a, 0);
  U16(a, 0);
  U16(a, 6 + 4 + 20);
  U16(a, kOptionTcpKeepalive);
  U16(a, 2);
  U16(a, 250);
  U16(a, kOptionPadding);
  U16(a, 20);
  a.insert(a.end(), 20, 0);
  return a;
}

TEST(AnswerOptTest, RemovesTransportOptionsAndReportsKeepalive) {
  Bytes a = Answer();
  int keepalive = -1;
  const size_t n = RewriteAnswerOpt(a, a.size(), true, &keepalive);
  EXPECT_EQ(keepalive, 250);
  EXPECT_EQ(n, a.size() - 30);
  a.resize(n);
  ResponseInfo info;
  ASSERT_TRUE(ParseResponse(a, info));
  EXPECT_EQ(header::ArCount(a.data()), 1);
  EXPECT_EQ(ReadU16(&a[a.size() - 2]), 0);  // empty RDATA now
}

TEST(AnswerOptTest, RemovesWholeOptForClientWithoutEdns) {
  Bytes a = Answer();
  int keepalive = -1;
  const size_t n = RewriteAnswerOpt(a, a.size(), false, &keepalive);
  EXPECT_EQ(keepalive, 250);
  EXPECT_EQ(n, a.size() - 41);
  EXPECT_EQ(header::ArCount(a.data()), 0);
}

TEST(AnswerOptTest, LeavesAnswersWithoutOptAlone) {
  Bytes a = Query(false);
  a[2] |= 0x80;
  int keepalive = -1;
  EXPECT_EQ(RewriteAnswerOpt(a, a.size(), false, &keepalive), a.size());
  EXPECT_EQ(keepalive, -1);
}

}  // namespace
}  // namespace dotproxy::dns
