// policy::Tables: the list and hosts parsers (errors with FILE:LINE), the
// lookup rules (exact vs subtree, label boundaries, case, allowlist, local
// data first) and the replies (actions, PTR, NODATA with SOA, CNAME chains,
// EDNS, truncation).

#include "dotproxy/policy/tables.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "bench/common/wire.h"
#include "dotproxy/dns/message.h"

namespace dotproxy::policy {
namespace {

using Bytes = std::vector<uint8_t>;

class PolicyTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const auto& path : files_) std::remove(path.c_str());
  }
  std::string File(const std::string& text) {
    std::string path = ::testing::TempDir() + "policy_test_" + std::to_string(files_.size()) + "_" +
                       std::to_string(::getpid());
    std::ofstream(path) << text;
    files_.push_back(path);
    return path;
  }
  std::shared_ptr<const Tables> Build(const Sources& sources) {
    auto tables = Tables::Build(sources);
    EXPECT_TRUE(tables.ok()) << tables.status();
    return tables.ok() ? *tables : nullptr;
  }
  Sources Blocklist(const std::string& text, const std::string& action = "nxdomain") {
    Sources sources;
    sources.blocklists.push_back({"ads", File(text), action, 60, "test.toml:1"});
    return sources;
  }
  std::vector<std::string> files_;
};

Bytes Query(std::string_view name, uint16_t qtype, bool edns = false, uint16_t size = 1232) {
  Bytes q = bench::MakeQuery(name, 0x1234, false);
  dns::WriteU16(q.data() + q.size() - 4, qtype);
  if (edns) {
    dns::WriteU16(q.data() + 10, 1);
    bench::PutOpt(q, size, /*dnssec_ok=*/true);
  }
  return q;
}

struct Reply {
  dns::Rcode rcode = dns::Rcode::kNoError;
  bool aa = false, tc = false;
  uint16_t an = 0, ns = 0, ar = 0;
  std::vector<uint16_t> types;  // of every record, in order
  std::vector<Bytes> rdata;
  Bytes wire;
};

Reply Answer(const Tables& tables, const Bytes& query, size_t limit = 4096) {
  dns::QueryInfo info;
  EXPECT_EQ(dns::ParseQuery(query, info), dns::QueryParse::kOk);
  const Decision decision =
      tables.Lookup(std::span<const uint8_t>(query).subspan(dns::kHeaderSize, info.qname_length));
  Reply reply;
  if (decision.action == Action::kNone) return reply;
  uint8_t out[kMaxPolicyReply];
  const size_t length = tables.WriteReply(decision, query, info, 1232, limit, out);
  EXPECT_GT(length, 0u);
  EXPECT_LE(length, limit);
  reply.wire.assign(out, out + length);
  dns::ResponseInfo response;
  EXPECT_TRUE(dns::ParseResponse(reply.wire, response));
  EXPECT_EQ(dns::header::Id(out), 0x1234);
  reply.rcode = dns::header::GetRcode(out);
  reply.aa = (out[2] & 0x04) != 0;
  reply.tc = dns::header::IsTruncated(out);
  reply.an = dns::header::AnCount(out);
  reply.ns = dns::header::NsCount(out);
  reply.ar = dns::header::ArCount(out);
  size_t at = dns::kHeaderSize + response.question_length;
  for (int r = 0; r < reply.an + reply.ns + reply.ar; ++r) {
    const size_t type_at = dns::SkipName(reply.wire, at);
    EXPECT_NE(type_at, 0u);
    if (type_at == 0) break;
    reply.types.push_back(dns::ReadU16(out + type_at));
    const uint16_t rdlength = dns::ReadU16(out + type_at + 8);
    reply.rdata.emplace_back(out + type_at + 10, out + type_at + 10 + rdlength);
    at = dns::SkipRecord(reply.wire, at);
    EXPECT_NE(at, 0u);
  }
  EXPECT_EQ(at, length) << "records must fill the reply exactly";
  return reply;
}

bool Blocked(const Tables& tables, std::string_view name) {
  return Answer(tables, Query(name, kTypeA)).wire.size() > 0;
}

TEST(NameSetTest, FindsWhatWasInsertedAndNothingElse) {
  NameSet set;
  uint8_t wire[255];
  size_t length = 0;
  for (int i = 0; i < 5000; ++i) {
    ASSERT_TRUE(TextToWireName("n" + std::to_string(i) + ".example", wire, length).ok());
    set.Insert({wire, length}) = static_cast<uint32_t>(i);
  }
  EXPECT_EQ(set.size(), 5000u);
  for (const bool sealed : {false, true}) {
  if (sealed) set.Seal();  // with the filter in front
  for (int i = 0; i < 6000; ++i) {
    ASSERT_TRUE(TextToWireName("n" + std::to_string(i) + ".example", wire, length).ok());
    const uint32_t* value = set.Find({wire, length}, NameSet::Hash({wire, length}));
    if (i < 5000) {
      ASSERT_NE(value, nullptr) << i;
      EXPECT_EQ(*value, static_cast<uint32_t>(i));
    } else {
      EXPECT_EQ(value, nullptr) << i;
    }
  }
  }
}

TEST(NameSetTest, TextToWireNameFoldsCaseAndRefusesBadNames) {
  uint8_t wire[255];
  size_t length = 0;
  ASSERT_TRUE(TextToWireName("Ads.EXAMPLE.", wire, length).ok());
  EXPECT_EQ(WireNameToText({wire, length}), "ads.example");
  EXPECT_FALSE(TextToWireName("a..b", wire, length).ok());
  EXPECT_FALSE(TextToWireName("a b", wire, length).ok());
  EXPECT_FALSE(TextToWireName(std::string(64, 'a') + ".example", wire, length).ok());
  EXPECT_FALSE(TextToWireName("", wire, length).ok());
}

TEST_F(PolicyTest, PlainEntryBlocksTheNameOnlyAtLabelBoundaries) {
  auto tables = Build(Blocklist("ads.example\n"));
  EXPECT_TRUE(Blocked(*tables, "ads.example"));
  EXPECT_TRUE(Blocked(*tables, "ADS.Example"));
  EXPECT_FALSE(Blocked(*tables, "sub.ads.example"));  // plain: exact name only
  EXPECT_FALSE(Blocked(*tables, "badads.example"));
  EXPECT_FALSE(Blocked(*tables, "example"));
}

TEST_F(PolicyTest, WildcardAndLeadingDotBlockTheSubtreeAndItsApex) {
  auto tables = Build(Blocklist("*.tracker.example\n.evil.test\n||adblock.test^\n"));
  for (const char* name : {"tracker.example", "a.tracker.example", "x.y.tracker.example",
                           "evil.test", "deep.sub.EVIL.test", "adblock.test", "a.adblock.test"}) {
    EXPECT_TRUE(Blocked(*tables, name)) << name;
  }
  for (const char* name : {"nottracker.example", "example", "xevil.test", "test"}) {
    EXPECT_FALSE(Blocked(*tables, name)) << name;
  }
}

TEST_F(PolicyTest, HostsFormatListsSkipTheirBoilerplate) {
  auto tables = Build(Blocklist(
      "# StevenBlack style\n127.0.0.1 localhost\n::1 localhost\n0.0.0.0 0.0.0.0\n"
      "0.0.0.0 ads.one.test ads.two.test # trailing comment\n:: six.test\n! adblock comment\n"));
  EXPECT_TRUE(Blocked(*tables, "ads.one.test"));
  EXPECT_TRUE(Blocked(*tables, "ads.two.test"));
  EXPECT_TRUE(Blocked(*tables, "six.test"));
  EXPECT_FALSE(Blocked(*tables, "localhost"));
  EXPECT_EQ(tables->blocked_names(), 3u);
}

TEST_F(PolicyTest, MalformedListLinesNameFileAndLine) {
  const std::string path = File("ok.test\n\n# c\nbad name.test\n");
  Sources sources;
  sources.blocklists.push_back({"l", path, "nxdomain", 60, "x.toml:3"});
  auto tables = Tables::Build(sources);
  ASSERT_FALSE(tables.ok());
  EXPECT_EQ(tables.status().message().substr(0, path.size() + 3), path + ":4:")
      << tables.status();

  sources.blocklists[0].file = File("a.test\n192.0.2.1 b.test\n");
  tables = Tables::Build(sources);
  ASSERT_FALSE(tables.ok());
  EXPECT_NE(tables.status().message().find(":2: '192.0.2.1'"), std::string::npos) << tables.status();

  sources.blocklists[0].file = File("a.test\nwww.ex*mple.test\n");
  EXPECT_NE(Tables::Build(sources).status().message().find(":2:"), std::string::npos);

  sources.blocklists[0].file = "/nonexistent/list";
  EXPECT_NE(Tables::Build(sources).status().message().find("/nonexistent/list"), std::string::npos);

  sources.blocklists[0].file = File("a.test\n");
  sources.blocklists[0].action = "sinkhole";
  EXPECT_NE(Tables::Build(sources).status().message().find("x.toml:3"), std::string::npos);
}

TEST_F(PolicyTest, ActionsAnswerAsConfigured) {
  {
    auto tables = Build(Blocklist("ads.test\n"));
    const Reply r = Answer(*tables, Query("sub.x.ads.test", kTypeA));  // not blocked: exact
    EXPECT_TRUE(r.wire.empty());
    const Reply nx = Answer(*tables, Query("ads.test", kTypeA));
    EXPECT_EQ(nx.rcode, dns::Rcode::kNxDomain);
    EXPECT_TRUE(nx.aa);
    EXPECT_EQ(nx.an, 0);
    ASSERT_EQ(nx.ns, 1);
    EXPECT_EQ(nx.types[0], dns::kTypeSoa);
  }
  {
    auto tables = Build(Blocklist("ads.test\n", "nodata"));
    const Reply r = Answer(*tables, Query("ads.test", kTypeAaaa));
    EXPECT_EQ(r.rcode, dns::Rcode::kNoError);
    EXPECT_EQ(r.an, 0);
    EXPECT_EQ(r.ns, 1);
  }
  {
    auto tables = Build(Blocklist("ads.test\n", "refused"));
    const Reply r = Answer(*tables, Query("ads.test", kTypeA));
    EXPECT_EQ(r.rcode, dns::Rcode::kRefused);
    EXPECT_FALSE(r.aa);
    EXPECT_EQ(r.an + r.ns, 0);
  }
  {
    auto tables = Build(Blocklist("ads.test\n", "0.0.0.0"));
    const Reply a = Answer(*tables, Query("ads.test", kTypeA));
    ASSERT_EQ(a.an, 1);
    EXPECT_EQ(a.types[0], kTypeA);
    EXPECT_EQ(a.rdata[0], (Bytes{0, 0, 0, 0}));
    const Reply aaaa = Answer(*tables, Query("ads.test", kTypeAaaa));  // other family: NODATA
    EXPECT_EQ(aaaa.rcode, dns::Rcode::kNoError);
    EXPECT_EQ(aaaa.an, 0);
    EXPECT_EQ(aaaa.ns, 1);
  }
  {
    auto tables = Build(Blocklist("ads.test\n", "::1"));
    const Reply aaaa = Answer(*tables, Query("ads.test", kTypeAaaa));
    ASSERT_EQ(aaaa.an, 1);
    EXPECT_EQ(aaaa.rdata[0].size(), 16u);
    EXPECT_EQ(Answer(*tables, Query("ads.test", kTypeA)).an, 0);
  }
}

TEST_F(PolicyTest, AllowlistWinsOverEveryList) {
  Sources sources = Blocklist("*.example.test\n");
  sources.blocklists.push_back({"second", File("good.example.test\n"), "refused", 60, "t:2"});
  sources.allowlist.push_back(File("good.example.test\n*.cdn.example.test\n"));
  auto tables = Build(sources);
  EXPECT_TRUE(Blocked(*tables, "bad.example.test"));
  EXPECT_FALSE(Blocked(*tables, "good.example.test"));
  EXPECT_TRUE(Blocked(*tables, "sub.good.example.test"));  // exact allow: that name only
  EXPECT_FALSE(Blocked(*tables, "a.b.cdn.example.test"));
  const Bytes query = Query("good.example.test", kTypeA);
  const Decision d = tables->Lookup(std::span<const uint8_t>(query).subspan(12, 19));
  EXPECT_EQ(d.action, Action::kNone);
  EXPECT_TRUE(d.allowlisted);
}

TEST_F(PolicyTest, MostSpecificEntryAndFirstListWin) {
  Sources sources = Blocklist("*.example.test\n");  // nxdomain
  sources.blocklists.push_back({"second", File("www.example.test\n*.example.test\n"), "refused", 60, "t:2"});
  auto tables = Build(sources);
  EXPECT_EQ(Answer(*tables, Query("www.example.test", kTypeA)).rcode, dns::Rcode::kRefused);
  EXPECT_EQ(Answer(*tables, Query("other.example.test", kTypeA)).rcode, dns::Rcode::kNxDomain);
}

TEST_F(PolicyTest, HostsFileAnswersAddressesAndPtr) {
  Sources sources;
  sources.hosts_file = File(
      "127.0.0.1 localhost\n192.0.2.10 web.lan web  # web server\n2001:db8::10 web.lan\n"
      "192.0.2.10 again.lan\n");
  auto tables = Build(sources);
  const Reply a = Answer(*tables, Query("WEB.lan", kTypeA));
  ASSERT_EQ(a.an, 1);
  EXPECT_EQ(a.rdata[0], (Bytes{192, 0, 2, 10}));
  EXPECT_TRUE(a.aa);
  // The client's case is echoed in the question.
  EXPECT_EQ(std::string(a.wire.begin() + 13, a.wire.begin() + 16), "WEB");
  const Reply aaaa = Answer(*tables, Query("web.lan", kTypeAaaa));
  ASSERT_EQ(aaaa.an, 1);
  EXPECT_EQ(aaaa.rdata[0][0], 0x20);
  EXPECT_EQ(Answer(*tables, Query("web", kTypeA)).an, 1);  // alias
  const Reply ptr = Answer(*tables, Query("10.2.0.192.in-addr.arpa", kTypePtr));
  ASSERT_EQ(ptr.an, 1);
  Bytes expected;
  bench::PutName(expected, "web.lan");
  EXPECT_EQ(ptr.rdata[0], expected);  // the first line's first name
  const Reply ptr6 = Answer(
      *tables,
      Query("0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa", kTypePtr));
  EXPECT_EQ(ptr6.an, 1);
}

TEST_F(PolicyTest, HostsFileErrorsNameTheLine) {
  Sources sources;
  sources.hosts_file = File("127.0.0.1 localhost\nweb.lan 192.0.2.1\n");
  auto tables = Tables::Build(sources);
  ASSERT_FALSE(tables.ok());
  EXPECT_NE(tables.status().message().find(sources.hosts_file + ":2:"), std::string::npos)
      << tables.status();
  sources.hosts_file = File("192.0.2.1\n");
  EXPECT_NE(Tables::Build(sources).status().message().find(":1:"), std::string::npos);
}

TEST_F(PolicyTest, OtherTypeOfALocalNameIsNoDataWithSoa) {
  Sources sources;
  sources.local.push_back({"svc.lan", "A", 120, "192.0.2.1", "c:1"});
  sources.local.push_back({"svc.lan", "A", 30, "192.0.2.2", "c:2"});
  auto tables = Build(sources);
  const Reply a = Answer(*tables, Query("svc.lan", kTypeA));
  EXPECT_EQ(a.an, 2);  // one RRset
  const Reply mx = Answer(*tables, Query("svc.lan", kTypeMx));
  EXPECT_EQ(mx.rcode, dns::Rcode::kNoError);
  EXPECT_EQ(mx.an, 0);
  ASSERT_EQ(mx.ns, 1);
  EXPECT_EQ(mx.types[0], dns::kTypeSoa);
  // SOA MINIMUM (and TTL): the name's smallest TTL.
  EXPECT_EQ(dns::ReadU32(mx.rdata[0].data() + mx.rdata[0].size() - 4), 30u);
  // A name below it is not local data: forwarded.
  EXPECT_TRUE(Answer(*tables, Query("x.svc.lan", kTypeA)).wire.empty());
}

TEST_F(PolicyTest, LocalRecordsOfEveryType) {
  Sources sources;
  sources.local = {
      {"mail.lan", "MX", 300, "10 mx1.lan", "c:1"},
      {"mx1.lan", "A", 300, "192.0.2.25", "c:2"},
      {"txt.lan", "TXT", 300, "\"v=spf1 -all\" \"second\"", "c:3"},
      {"_sip._tcp.lan", "SRV", 300, "10 5 5060 sip.lan", "c:4"},
      {"alias.lan", "CNAME", 300, "mx1.lan", "c:5"},
      {"away.lan", "CNAME", 300, "elsewhere.example", "c:6"},
      {"1.2.0.192.in-addr.arpa", "PTR", 300, "one.lan", "c:7"},
      {"v6.lan", "AAAA", 300, "2001:db8::1", "c:8"},
  };
  auto tables = Build(sources);
  EXPECT_EQ(Answer(*tables, Query("mail.lan", kTypeMx)).types, (std::vector<uint16_t>{kTypeMx}));
  const Reply txt = Answer(*tables, Query("txt.lan", kTypeTxt));
  ASSERT_EQ(txt.an, 1);
  EXPECT_EQ(txt.rdata[0][0], 11);  // "v=spf1 -all"
  EXPECT_EQ(Answer(*tables, Query("_sip._tcp.lan", kTypeSrv)).an, 1);
  // A CNAME to a local name carries the target's RRset too.
  const Reply chain = Answer(*tables, Query("alias.lan", kTypeA));
  EXPECT_EQ(chain.types, (std::vector<uint16_t>{kTypeCname, kTypeA}));
  EXPECT_EQ(Answer(*tables, Query("alias.lan", kTypeCname)).types,
            (std::vector<uint16_t>{kTypeCname}));
  EXPECT_EQ(Answer(*tables, Query("away.lan", kTypeA)).types, (std::vector<uint16_t>{kTypeCname}));
  EXPECT_EQ(Answer(*tables, Query("1.2.0.192.in-addr.arpa", kTypePtr)).an, 1);
  EXPECT_EQ(Answer(*tables, Query("v6.lan", kTypeAaaa)).an, 1);
}

TEST_F(PolicyTest, LocalRecordErrorsNameTheirTable) {
  for (const auto& [type, data] : std::vector<std::pair<std::string, std::string>>{
           {"A", "2001:db8::1"}, {"AAAA", "192.0.2.1"}, {"MX", "mx.lan"}, {"NAPTR", "x"},
           {"TXT", "\"open"}, {"CNAME", "bad name"}, {"SRV", "1 2 70000 x.lan"}}) {
    Sources sources;
    sources.local.push_back({"x.lan", type, 300, data, "site.toml:7"});
    auto tables = Tables::Build(sources);
    ASSERT_FALSE(tables.ok()) << type;
    EXPECT_EQ(tables.status().message().substr(0, 12), "site.toml:7:") << tables.status();
  }
  Sources sources;
  sources.local.push_back({"x.lan", "CNAME", 300, "y.lan", "site.toml:1"});
  sources.local.push_back({"x.lan", "A", 300, "192.0.2.1", "site.toml:5"});
  EXPECT_NE(Tables::Build(sources).status().message().find("CNAME"), std::string::npos);
}

TEST_F(PolicyTest, LocalDataComesBeforeBlocklists) {
  Sources sources = Blocklist("*.lan\n");
  sources.local.push_back({"nas.lan", "A", 300, "192.0.2.5", "c:1"});
  auto tables = Build(sources);
  EXPECT_EQ(Answer(*tables, Query("nas.lan", kTypeA)).an, 1);
  EXPECT_EQ(Answer(*tables, Query("tv.lan", kTypeA)).rcode, dns::Rcode::kNxDomain);
}

TEST_F(PolicyTest, EdnsIsEchoedAndLargeAnswersTruncate) {
  Sources sources;
  for (int i = 0; i < 40; ++i) {
    sources.local.push_back({"big.lan", "TXT", 300, std::string(60, 'a' + i % 26) + std::to_string(i), "c:1"});
  }
  auto tables = Build(sources);
  const Reply with_edns = Answer(*tables, Query("big.lan", kTypeTxt, /*edns=*/true), 4096);
  EXPECT_FALSE(with_edns.tc);
  EXPECT_EQ(with_edns.an, 40);
  EXPECT_EQ(with_edns.ar, 1);
  EXPECT_EQ(with_edns.types.back(), dns::kTypeOpt);
  const Reply small = Answer(*tables, Query("big.lan", kTypeTxt, /*edns=*/false), 512);
  EXPECT_TRUE(small.tc);
  EXPECT_EQ(small.an, 0);
  EXPECT_EQ(small.ar, 0);
  const Reply small_edns = Answer(*tables, Query("big.lan", kTypeTxt, true), 1232);
  EXPECT_TRUE(small_edns.tc);
  EXPECT_EQ(small_edns.ar, 1);  // the OPT stays
  EXPECT_EQ(Answer(*tables, Query("big.lan", kTypeA, true)).ar, 1);
  EXPECT_EQ(Answer(*tables, Query("big.lan", kTypeA, false)).ar, 0);
}

TEST_F(PolicyTest, ListSlotsAreStableByName) {
  const size_t a = ListSlot("slot-test-a");
  const size_t b = ListSlot("slot-test-b");
  EXPECT_NE(a, b);
  EXPECT_EQ(ListSlot("slot-test-a"), a);
  EXPECT_EQ(ListSlotNames()[b], "slot-test-b");
}

}  // namespace
}  // namespace dotproxy::policy
