#include "dotproxy/config/config.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dotproxy/io/socket.h"
#include "src/config/text.h"

namespace dotproxy::config {
namespace {

// Asserts that `status` failed and its message mentions `text`.
::testing::AssertionResult FailsMentioning(const absl::Status& status, const std::string& text) {
  if (status.ok()) return ::testing::AssertionFailure() << "status is OK";
  if (std::string(status.message()).find(text) == std::string::npos) {
    return ::testing::AssertionFailure() << "'" << status.message() << "' does not mention '" << text << "'";
  }
  return ::testing::AssertionSuccess();
}

// Runs ParseCommandLine over `args` as if typed after the program name.
absl::StatusOr<CommandLine> Parse(const std::vector<std::string>& args) {
  std::vector<std::string> storage = {"dotproxy"};
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : storage) argv.push_back(arg.data());
  argv.push_back(nullptr);
  return ParseCommandLine(static_cast<int>(storage.size()), argv.data());
}

class CommandLineTest : public ::testing::Test {
 protected:
  // The environment layer would otherwise leak the runner's settings in,
  // or one test's variables into the next.
  void SetUp() override { UnsetEnvironment(); }
  void TearDown() override {
    UnsetEnvironment();
    for (const std::string& path : files_) unlink(path.c_str());
    if (!dir_.empty()) rmdir(dir_.c_str());
  }

  static void UnsetEnvironment() {
    for (const Option& option : Options()) {
      if (!option.env.empty()) unsetenv(std::string(option.env).c_str());
    }
  }

  // A private directory for this test's files, removed in TearDown.
  const std::string& Dir() {
    if (dir_.empty()) {
      std::string pattern = ::testing::TempDir() + "config_test.XXXXXX";
      if (mkdtemp(pattern.data()) != nullptr) dir_ = pattern;
    }
    return dir_;
  }

  // Writes `text` to a file named `name` in Dir() and returns its path.
  std::string WriteFile(const std::string& name, const std::string& text) {
    const std::string path = Dir() + "/" + name;
    std::ofstream(path, std::ios::binary) << text;
    files_.push_back(path);
    return path;
  }

  // A path in Dir() that TearDown removes (for FIFOs and the like).
  std::string TempPath(const std::string& name) {
    files_.push_back(Dir() + "/" + name);
    return files_.back();
  }

 private:
  std::string dir_;
  std::vector<std::string> files_;
};

// --- ParseSocketAddress ----------------------------------------------------

TEST(ParseSocketAddressTest, Ipv4WithPort) {
  auto address = io::ParseSocketAddress("192.0.2.1:5353", -1);
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(address->family(), AF_INET);
  EXPECT_EQ(address->port(), 5353);
  EXPECT_EQ(address->length, sizeof(sockaddr_in));
  EXPECT_EQ(address->ToString(), "192.0.2.1:5353");
  EXPECT_EQ(address->HostString(), "192.0.2.1");
}

TEST(ParseSocketAddressTest, Ipv4TakesTheDefaultPort) {
  auto address = io::ParseSocketAddress("192.0.2.1", 853);
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(address->ToString(), "192.0.2.1:853");
}

TEST(ParseSocketAddressTest, BracketedIpv6WithPort) {
  auto address = io::ParseSocketAddress("[2001:db8::1]:53", -1);
  ASSERT_TRUE(address.ok()) << address.status();
  EXPECT_EQ(address->family(), AF_INET6);
  EXPECT_EQ(address->port(), 53);
  EXPECT_EQ(address->length, sizeof(sockaddr_in6));
  EXPECT_EQ(address->ToString(), "[2001:db8::1]:53");
  EXPECT_EQ(address->HostString(), "2001:db8::1");
}

TEST(ParseSocketAddressTest, Ipv6WithoutPortTakesTheDefault) {
  auto bracketed = io::ParseSocketAddress("[::1]", 853);
  ASSERT_TRUE(bracketed.ok()) << bracketed.status();
  EXPECT_EQ(bracketed->ToString(), "[::1]:853");
  auto bare = io::ParseSocketAddress("2001:db8::53", 853);
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->ToString(), "[2001:db8::53]:853");
}

TEST(ParseSocketAddressTest, RequiresAPortWhenThereIsNoDefault) {
  EXPECT_FALSE(io::ParseSocketAddress("192.0.2.1", -1).ok());
  EXPECT_FALSE(io::ParseSocketAddress("[::1]", -1).ok());
}

TEST(ParseSocketAddressTest, RejectsBadPorts) {
  EXPECT_FALSE(io::ParseSocketAddress("192.0.2.1:0", -1).ok());
  EXPECT_FALSE(io::ParseSocketAddress("192.0.2.1:65536", -1).ok());
  EXPECT_FALSE(io::ParseSocketAddress("192.0.2.1:", 53).ok());
  EXPECT_FALSE(io::ParseSocketAddress("192.0.2.1:53x", -1).ok());
  EXPECT_FALSE(io::ParseSocketAddress("[::1]53", -1).ok());
}

TEST(ParseSocketAddressTest, RejectsNamesAndMalformedAddresses) {
  EXPECT_FALSE(io::ParseSocketAddress("localhost:53", -1).ok());
  EXPECT_FALSE(io::ParseSocketAddress("300.1.1.1:53", -1).ok());
  EXPECT_FALSE(io::ParseSocketAddress("[::1:53", -1).ok());
  EXPECT_FALSE(io::ParseSocketAddress("", 53).ok());
}

// --- ParseUpstream ---------------------------------------------------------

TEST(ParseUpstreamTest, IpAloneUsesTheDotPortAndTheIpAsName) {
  auto upstream = ParseUpstream("9.9.9.9");
  ASSERT_TRUE(upstream.ok()) << upstream.status();
  EXPECT_EQ(upstream->address.ToString(), "9.9.9.9:853");
  EXPECT_EQ(upstream->peer.auth_name, "9.9.9.9");
  EXPECT_TRUE(upstream->peer.pins.empty());
  EXPECT_EQ(upstream->spec, "9.9.9.9");
}

TEST(ParseUpstreamTest, SchemesNameTheTransport) {
  auto tls = ParseUpstream("tls://9.9.9.9#dns.quad9.net");
  ASSERT_TRUE(tls.ok()) << tls.status();
  EXPECT_EQ(tls->transport, Transport::kTls);
  EXPECT_EQ(tls->address.ToString(), "9.9.9.9:853");
  auto udp = ParseUpstream("udp://10.96.0.10");
  ASSERT_TRUE(udp.ok()) << udp.status();
  EXPECT_EQ(udp->transport, Transport::kUdp);
  EXPECT_EQ(udp->address.ToString(), "10.96.0.10:53");
  EXPECT_EQ(udp->spec, "udp://10.96.0.10");
  auto tcp = ParseUpstream("tcp://[fd00::53]:5353");
  ASSERT_TRUE(tcp.ok()) << tcp.status();
  EXPECT_EQ(tcp->transport, Transport::kTcp);
  EXPECT_EQ(tcp->address.ToString(), "[fd00::53]:5353");
}

TEST(ParseUpstreamTest, HttpsDefaultsToPort443AndDnsQuery) {
  auto doh = ParseUpstream("https://9.9.9.9#dns.quad9.net");
  ASSERT_TRUE(doh.ok()) << doh.status();
  EXPECT_EQ(doh->transport, Transport::kHttps);
  EXPECT_EQ(doh->address.ToString(), "9.9.9.9:443");
  EXPECT_EQ(doh->doh_path, "/dns-query");
  EXPECT_EQ(doh->peer.auth_name, "dns.quad9.net");
  EXPECT_TRUE(IsEncrypted(doh->transport));
  auto bare = ParseUpstream("https://127.0.0.1");
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->peer.auth_name, "127.0.0.1");  // an IP SAN, as for DoT
}

TEST(ParseUpstreamTest, HttpsTakesPortPathNameAndPins) {
  const std::string pin(43, 'A');
  auto doh = ParseUpstream("https://[::1]:8443/resolve/v1#doh.test^" + pin + "=");
  ASSERT_TRUE(doh.ok()) << doh.status();
  EXPECT_EQ(doh->address.ToString(), "[::1]:8443");
  EXPECT_EQ(doh->doh_path, "/resolve/v1");
  EXPECT_EQ(doh->peer.auth_name, "doh.test");
  EXPECT_EQ(doh->peer.pins.size(), 1u);
  EXPECT_EQ(doh->spec, "https://[::1]:8443/resolve/v1#doh.test");
  auto v4 = ParseUpstream("https://127.0.0.1:8443/dns-query");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->address.port(), 8443);
}

TEST(ParseUpstreamTest, HttpsRefusesQueriesTemplatesAndBadAddresses) {
  auto templated = ParseUpstream("https://1.1.1.1/dns-query{?dns}");
  ASSERT_FALSE(templated.ok());
  EXPECT_NE(templated.status().message().find("without a query or URI template"),
            std::string::npos) << templated.status();
  EXPECT_FALSE(ParseUpstream("https://1.1.1.1/dns-query?dns=x").ok());
  EXPECT_FALSE(ParseUpstream("https://1.1.1.1/a b").ok());
  EXPECT_FALSE(ParseUpstream("https://dns.google/dns-query").ok());  // not an IP
  EXPECT_FALSE(ParseUpstream("https:///dns-query").ok());
  EXPECT_FALSE(ParseUpstream("https://1.1.1.1/" + std::string(300, 'a')).ok());
  EXPECT_FALSE(ParseUpstream("https://1.1.1.1#").ok());
}

TEST(ParseUpstreamTest, PlainUpstreamsTakeNoNameOrPin) {
  auto named = ParseUpstream("udp://10.0.0.1#internal");
  ASSERT_FALSE(named.ok());
  EXPECT_NE(named.status().message().find("not authenticated"), std::string::npos)
      << named.status();
  EXPECT_FALSE(ParseUpstream("tcp://10.0.0.1^AAAA").ok());
  EXPECT_FALSE(ParseUpstream("udp://").ok());
}

TEST(ParseUpstreamTest, IpWithPort) {
  auto upstream = ParseUpstream("192.0.2.7:8853");
  ASSERT_TRUE(upstream.ok()) << upstream.status();
  EXPECT_EQ(upstream->address.ToString(), "192.0.2.7:8853");
  EXPECT_EQ(upstream->peer.auth_name, "192.0.2.7");
}

TEST(ParseUpstreamTest, IpWithName) {
  auto upstream = ParseUpstream("1.1.1.1#cloudflare-dns.com");
  ASSERT_TRUE(upstream.ok()) << upstream.status();
  EXPECT_EQ(upstream->address.ToString(), "1.1.1.1:853");
  EXPECT_EQ(upstream->peer.auth_name, "cloudflare-dns.com");
}

TEST(ParseUpstreamTest, BracketedIpv6WithPortAndName) {
  auto upstream = ParseUpstream("[2620:fe::fe]:8853#dns.quad9.net");
  ASSERT_TRUE(upstream.ok()) << upstream.status();
  EXPECT_EQ(upstream->address.family(), AF_INET6);
  EXPECT_EQ(upstream->address.ToString(), "[2620:fe::fe]:8853");
  EXPECT_EQ(upstream->peer.auth_name, "dns.quad9.net");
}

TEST(ParseUpstreamTest, Ipv6WithoutNameUsesTheBareAddressAsName) {
  // The name is matched against an IP SAN, so no brackets and no port.
  auto upstream = ParseUpstream("[2606:4700:4700::1111]:853");
  ASSERT_TRUE(upstream.ok()) << upstream.status();
  EXPECT_EQ(upstream->peer.auth_name, "2606:4700:4700::1111");
}

TEST(ParseUpstreamTest, RejectsEmptyName) {
  auto upstream = ParseUpstream("1.1.1.1#");
  EXPECT_FALSE(upstream.ok());
}

TEST(ParseUpstreamTest, RejectsNonIpHost) {
  EXPECT_FALSE(ParseUpstream("dns.example#dns.example").ok());
  EXPECT_FALSE(ParseUpstream("300.1.1.1").ok());
}

// --- ParseCommandLine ------------------------------------------------------

TEST_F(CommandLineTest, Defaults) {
  auto parsed = Parse({});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const Config& config = parsed->config;
  ASSERT_EQ(config.listen.size(), 2u);
  EXPECT_EQ(config.listen[0].ToString(), "127.0.0.1:53");
  EXPECT_EQ(config.listen[1].ToString(), "[::1]:53");
  ASSERT_EQ(config.upstreams.size(), 2u);
  EXPECT_EQ(config.upstreams[0].address.ToString(), "1.1.1.1:853");
  EXPECT_EQ(config.upstreams[0].peer.auth_name, "cloudflare-dns.com");
  EXPECT_EQ(config.upstreams[1].address.ToString(), "1.0.0.1:853");
  EXPECT_EQ(config.upstreams[1].peer.auth_name, "cloudflare-dns.com");
  EXPECT_EQ(config.upstreams[0].address.port(), kDotPort);
  EXPECT_EQ(config.threads, 0);
  EXPECT_TRUE(config.ca_file.empty());
  EXPECT_FALSE(parsed->show_help);
  EXPECT_FALSE(parsed->show_version);
}

TEST_F(CommandLineTest, ListenIsRepeatableAndReplacesTheDefaults) {
  auto parsed = Parse({"--listen", "127.0.0.2:5300", "--listen", "[::1]:5301"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const auto& listen = parsed->config.listen;
  ASSERT_EQ(listen.size(), 2u);
  EXPECT_EQ(listen[0].ToString(), "127.0.0.2:5300");
  EXPECT_EQ(listen[1].ToString(), "[::1]:5301");
}

TEST_F(CommandLineTest, UpstreamIsRepeatableAndReplacesTheDefaults) {
  auto parsed = Parse({"--upstream", "9.9.9.9#dns.quad9.net", "--upstream",
                       "[2620:fe::9]:8853#dns.quad9.net", "--upstream", "192.0.2.1"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const auto& upstreams = parsed->config.upstreams;
  ASSERT_EQ(upstreams.size(), 3u);
  EXPECT_EQ(upstreams[0].address.ToString(), "9.9.9.9:853");
  EXPECT_EQ(upstreams[0].peer.auth_name, "dns.quad9.net");
  EXPECT_EQ(upstreams[1].address.ToString(), "[2620:fe::9]:8853");
  EXPECT_EQ(upstreams[1].peer.auth_name, "dns.quad9.net");
  EXPECT_EQ(upstreams[2].address.ToString(), "192.0.2.1:853");
  EXPECT_EQ(upstreams[2].peer.auth_name, "192.0.2.1");
  // Listen was not given: still the defaults.
  EXPECT_EQ(parsed->config.listen.size(), 2u);
}

TEST_F(CommandLineTest, EqualsSyntax) {
  auto parsed = Parse({"--threads=3", "--listen=127.0.0.1:5353"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.threads, 3);
  ASSERT_EQ(parsed->config.listen.size(), 1u);
  EXPECT_EQ(parsed->config.listen[0].ToString(), "127.0.0.1:5353");
}

TEST_F(CommandLineTest, NumericAndBooleanFlags) {
  auto parsed = Parse({"--threads", "4", "--query-timeout", "1500", "--ca-file", "/etc/ca.pem",
                       "--no-padding", "--keep-client-subnet", "--check-config"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const Config& config = parsed->config;
  EXPECT_EQ(config.threads, 4);
  EXPECT_EQ(config.query_timeout, std::chrono::milliseconds(1500));
  EXPECT_EQ(config.ca_file, "/etc/ca.pem");
  EXPECT_FALSE(config.pad_queries);
  EXPECT_FALSE(config.strip_client_subnet);
  EXPECT_TRUE(config.check_config);
}

TEST_F(CommandLineTest, HelpAndVersion) {
  auto parsed = Parse({"--help", "--version"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->show_help);
  EXPECT_TRUE(parsed->show_version);
}

TEST_F(CommandLineTest, ParsesTwiceInOneProcess) {
  // getopt keeps global state; a second parse must start from scratch.
  ASSERT_TRUE(Parse({"--threads", "2"}).ok());
  auto parsed = Parse({"--threads", "5"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.threads, 5);
}

// Every error names the flag so the operator knows what to fix.
struct BadFlagCase {
  std::vector<std::string> args;
  std::string flag;
};

class CommandLineErrorTest : public CommandLineTest,
                             public ::testing::WithParamInterface<BadFlagCase> {};

TEST_P(CommandLineErrorTest, FailsNamingTheFlag) {
  auto parsed = Parse(GetParam().args);
  EXPECT_TRUE(FailsMentioning(parsed.status(), GetParam().flag));
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(
    BadFlags, CommandLineErrorTest,
    ::testing::Values(BadFlagCase{{"--threads", "abc"}, "--threads"},
                      BadFlagCase{{"--threads", "-1"}, "--threads"},
                      BadFlagCase{{"--threads", "257"}, "--threads"},
                      BadFlagCase{{"--cache-size", "16777217"}, "--cache-size"},
                      BadFlagCase{{"--listen", "1.2.3.4"}, "--listen"},
                      BadFlagCase{{"--listen", "localhost:53"}, "--listen"},
                      BadFlagCase{{"--upstream", "300.1.1.1"}, "--upstream"},
                      BadFlagCase{{"--upstream", "1.1.1.1#"}, "--upstream"},
                      BadFlagCase{{"--query-timeout", "0"}, "--query-timeout"},
                      BadFlagCase{{"--no-such-flag"}, "--no-such-flag"},
                      BadFlagCase{{"--threads"}, "--threads"},
                      BadFlagCase{{"--listen"}, "--listen"},
                      BadFlagCase{{"--upstream", "9.9.9.9", "--upstream"}, "--upstream"}));

TEST_F(CommandLineTest, UnknownFlagSaysSo) {
  auto parsed = Parse({"--bogus"});
  EXPECT_TRUE(FailsMentioning(parsed.status(), "unknown"));
}

TEST_F(CommandLineTest, MissingValueSaysSo) {
  auto parsed = Parse({"--threads"});
  EXPECT_TRUE(FailsMentioning(parsed.status(), "missing value"));
}

TEST_F(CommandLineTest, RejectsPositionalArguments) {
  EXPECT_FALSE(Parse({"127.0.0.1:53"}).ok());
}


// --- Defaults and bounds ----------------------------------------------------

TEST_F(CommandLineTest, CacheIsOnByDefault) {
  auto parsed = Parse({});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.cache_size, 8192u);
  auto off = Parse({"--cache-size", "0"});
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(off->config.cache_size, 0u);
}

TEST_F(CommandLineTest, ThreadsAreBounded) {
  auto automatic = Parse({"--threads", "0"});
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  EXPECT_EQ(automatic->config.threads, 0);
  EXPECT_TRUE(Parse({"--threads", "256"}).ok());
  EXPECT_TRUE(FailsMentioning(Parse({"--threads", "257"}).status(), "--threads: 257 is out of range [0, 256]"));
  const std::string path = WriteFile("threads.toml", "threads = 1024\n");
  EXPECT_TRUE(FailsMentioning(Parse({"--config", path, "--check-config"}).status(), path + ":1: 'threads'"));
}

TEST_F(CommandLineTest, CacheSizeIsBounded) {
  EXPECT_TRUE(Parse({"--cache-size", "16777216"}).ok());
  EXPECT_TRUE(FailsMentioning(Parse({"--cache-size", "16777217"}).status(), "--cache-size: "));
  EXPECT_TRUE(FailsMentioning(Parse({"--cache-size", "4294967296"}).status(), "--cache-size: "));
  const std::string path = WriteFile("cache.toml", "cache_size = 4294967296\n");
  EXPECT_TRUE(FailsMentioning(Parse({"--config", path}).status(), path + ":1: 'cache_size'"));
}

// --- The option table ------------------------------------------------------

// The value a row's field type can hold at most, to check the table's bounds.
int64_t FieldMax(const OptionField& field) {
  if (std::holds_alternative<int Config::*>(field)) return std::numeric_limits<int>::max();
  if (std::holds_alternative<uint32_t Config::*>(field) ||
      std::holds_alternative<uint32_t cache::CacheConfig::*>(field)) {
    return std::numeric_limits<uint32_t>::max();
  }
  return std::numeric_limits<int64_t>::max();  // size_t, milliseconds
}

TEST(OptionTableTest, RowsAreConsistent) {
  std::set<std::string_view> flags, keys, variables;
  const Config defaults;
  for (const Option& option : Options()) {
    SCOPED_TRACE(std::string(option.flag));
    ASSERT_FALSE(option.flag.empty());
    EXPECT_TRUE(flags.insert(option.flag).second) << "flag listed twice";
    if (!option.toml_key.empty()) {
      EXPECT_TRUE(keys.insert(option.toml_key).second) << "key listed twice";
    }
    if (!option.env.empty()) {
      EXPECT_TRUE(variables.insert(option.env).second) << "variable listed twice";
    }
    EXPECT_FALSE(option.help.empty());
    switch (option.kind) {
      case OptionKind::kInteger:
        EXPECT_TRUE(std::holds_alternative<int Config::*>(option.field) ||
                    std::holds_alternative<size_t Config::*>(option.field) ||
                    std::holds_alternative<uint32_t Config::*>(option.field) ||
                    std::holds_alternative<uint32_t cache::CacheConfig::*>(option.field));
        break;
      case OptionKind::kMilliseconds:
        EXPECT_TRUE(std::holds_alternative<std::chrono::milliseconds Config::*>(option.field));
        break;
      case OptionKind::kSwitch:
        EXPECT_TRUE(std::holds_alternative<bool Config::*>(option.field));
        EXPECT_TRUE(option.env.empty()) << "switches have no variable syntax";
        break;
      case OptionKind::kChoice:
      case OptionKind::kWordSet:
        EXPECT_FALSE(option.choices.empty());
        [[fallthrough]];
      case OptionKind::kPrefixLengths:
      case OptionKind::kPath:
        EXPECT_TRUE(std::holds_alternative<std::string Config::*>(option.field));
        break;
      case OptionKind::kAddress:
        EXPECT_TRUE(std::holds_alternative<std::optional<io::SocketAddress> Config::*>(option.field));
        break;
      case OptionKind::kAddressList:
        EXPECT_TRUE(std::holds_alternative<std::vector<io::SocketAddress> Config::*>(option.field));
        break;
      case OptionKind::kUpstreamList:
        EXPECT_TRUE(std::holds_alternative<std::vector<UpstreamConfig> Config::*>(option.field));
        break;
      case OptionKind::kCidrList:
        EXPECT_TRUE(std::holds_alternative<std::vector<frontend::Cidr> Config::*>(option.field));
        break;
      case OptionKind::kConfigFile:
      case OptionKind::kHelp:
      case OptionKind::kVersion:
        EXPECT_TRUE(std::holds_alternative<std::monostate>(option.field));
        EXPECT_TRUE(option.toml_key.empty()) << "flag-only row has a file key";
        EXPECT_TRUE(option.env.empty()) << "flag-only row has a variable";
        break;
    }
    if (option.IsNumeric()) {
      EXPECT_LE(option.min, option.max);
      EXPECT_LE(option.max, FieldMax(option.field)) << "the bound does not fit the field";
      EXPECT_GE(option.GetInteger(defaults), option.min) << "the default is below the range";
      EXPECT_LE(option.GetInteger(defaults), option.max) << "the default is above the range";
    }
  }
  // The variables the README and the container images document.
  EXPECT_TRUE(variables.count("DOTPROXY_LISTEN"));
  EXPECT_TRUE(variables.count("DOTPROXY_UPSTREAMS"));
}

TEST(OptionTableTest, SettersStoreTheBoundsAndRefuseBeyond) {
  for (const Option& option : Options()) {
    if (!option.IsNumeric()) continue;
    SCOPED_TRACE(std::string(option.flag));
    Config config;
    ASSERT_TRUE(option.SetInteger(config, option.min).ok());
    EXPECT_EQ(option.GetInteger(config), option.min);
    ASSERT_TRUE(option.SetInteger(config, option.max).ok());
    EXPECT_EQ(option.GetInteger(config), option.max);
    EXPECT_TRUE(FailsMentioning(option.SetInteger(config, option.max + 1), "out of range"));
    EXPECT_TRUE(FailsMentioning(option.SetInteger(config, option.min - 1), "out of range"));
    EXPECT_EQ(option.GetInteger(config), option.max) << "a refused value was stored";
  }
}

TEST(OptionTableTest, FindsRowsByFlagAndKey) {
  ASSERT_NE(FindOptionByFlag("threads"), nullptr);
  EXPECT_EQ(FindOptionByFlag("threads")->toml_key, "threads");
  ASSERT_NE(FindOptionByTomlKey("query_timeout_ms"), nullptr);
  EXPECT_EQ(FindOptionByTomlKey("query_timeout_ms")->flag, "query-timeout");
  EXPECT_EQ(FindOptionByFlag("no-such-flag"), nullptr);
  EXPECT_EQ(FindOptionByTomlKey(""), nullptr) << "flag-only rows must not match an empty key";
  EXPECT_EQ(FindOptionByTomlKey("check_config"), nullptr);
}

TEST(OptionTableTest, UsageListsEveryFlagWithItsDefault) {
  const std::string usage = UsageText();
  const Config defaults;
  for (const Option& option : Options()) {
    SCOPED_TRACE(std::string(option.flag));
    std::string head = absl::StrCat("  --", Sv(option.flag));
    if (!option.value_name.empty()) absl::StrAppend(&head, " ", Sv(option.value_name));
    EXPECT_NE(usage.find(head), std::string::npos);
    if (!option.env.empty()) {
      EXPECT_NE(usage.find(std::string(option.env)), std::string::npos);
    }
    if (option.IsNumeric()) {
      // The default closes the row's help: the row's own text, then "(N)".
      const std::string_view help = option.help.substr(option.help.rfind('\n') + 1);
      EXPECT_NE(usage.find(absl::StrCat(Sv(help), " (", option.GetInteger(defaults), ")")),
                std::string::npos);
    }
  }
}

// --metrics: one address (not a list), off by default, the same row for the
// flag, DOTPROXY_METRICS and metrics_listen.
TEST_F(CommandLineTest, MetricsIsOffByDefault) {
  auto parsed = Parse({});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->config.metrics_listen.has_value());
}

TEST_F(CommandLineTest, MetricsTakesOneAddressAndTheLastWins) {
  auto parsed = Parse({"--metrics", "127.0.0.1:9153", "--metrics", "[::1]:9154"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_TRUE(parsed->config.metrics_listen.has_value());
  EXPECT_EQ(parsed->config.metrics_listen->ToString(), "[::1]:9154");
}

TEST_F(CommandLineTest, MetricsNeedsAPortAndAnIp) {
  EXPECT_TRUE(FailsMentioning(Parse({"--metrics", "127.0.0.1"}).status(), "--metrics: "));
  EXPECT_TRUE(FailsMentioning(Parse({"--metrics", "localhost:9153"}).status(), "--metrics: "));
  EXPECT_TRUE(FailsMentioning(Parse({"--metrics", ""}).status(), "--metrics: "));
}

TEST_F(CommandLineTest, MetricsFromFileEnvironmentAndFlagsInLayers) {
  const std::string path = WriteFile("metrics.toml", "metrics_listen = \"127.0.0.1:9001\"\n");
  auto from_file = Parse({"--config", path});
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(from_file->config.metrics_listen->ToString(), "127.0.0.1:9001");
  setenv("DOTPROXY_METRICS", "127.0.0.1:9002", 1);
  auto from_env = Parse({"--config", path});
  ASSERT_TRUE(from_env.ok()) << from_env.status();
  EXPECT_EQ(from_env->config.metrics_listen->ToString(), "127.0.0.1:9002");
  auto from_flag = Parse({"--config", path, "--metrics", "127.0.0.1:9003"});
  ASSERT_TRUE(from_flag.ok()) << from_flag.status();
  EXPECT_EQ(from_flag->config.metrics_listen->ToString(), "127.0.0.1:9003");
  setenv("DOTPROXY_METRICS", "127.0.0.1", 1);
  EXPECT_TRUE(FailsMentioning(Parse({}).status(), "DOTPROXY_METRICS: "));
  unsetenv("DOTPROXY_METRICS");
  const std::string list = WriteFile("metrics-list.toml", "metrics_listen = [\"127.0.0.1:9001\"]\n");
  EXPECT_TRUE(FailsMentioning(Parse({"--config", list}).status(), list + ":1: 'metrics_listen'"));
  const std::string bad = WriteFile("metrics-bad.toml", "metrics_listen = \"127.0.0.1\"\n");
  EXPECT_TRUE(FailsMentioning(Parse({"--config", bad}).status(), bad + ":1: 'metrics_listen'"));
}

class OptionLayersTest : public CommandLineTest {};

// The same value written as a flag and as a file key lands in the same field
// with the same range: the parsers share the row.
TEST_F(OptionLayersTest, FlagAndFileAgreeOnEveryNumericRow) {
  for (const Option& option : Options()) {
    if (!option.IsNumeric() || option.toml_key.empty()) continue;
    SCOPED_TRACE(std::string(option.flag));
    const std::string flag = absl::StrCat("--", Sv(option.flag));
    const std::string key(option.toml_key);
    const int64_t middle = option.min + (option.max - option.min) / 2;

    auto from_flag = Parse({flag, absl::StrCat(middle)});
    ASSERT_TRUE(from_flag.ok()) << from_flag.status();
    const std::string path = WriteFile(key + ".toml", absl::StrCat("# comment\n", key, " = ", middle, "\n"));
    auto from_file = Parse({"--config", path});
    ASSERT_TRUE(from_file.ok()) << from_file.status();
    EXPECT_EQ(option.GetInteger(from_flag->config), middle);
    EXPECT_EQ(option.GetInteger(from_file->config), middle);

    for (const int64_t bad : {option.max + 1, option.min - 1}) {
      EXPECT_TRUE(FailsMentioning(Parse({flag, absl::StrCat(bad)}).status(), flag + ": "));
      const std::string bad_path =
          WriteFile(key + "-bad.toml", absl::StrCat("# comment\n", key, " = ", bad, "\n"));
      const absl::Status status = Parse({"--config", bad_path}).status();
      EXPECT_TRUE(FailsMentioning(status, bad_path + ":2: '" + key + "'"));
      EXPECT_TRUE(FailsMentioning(status, absl::StrCat("[", option.min, ", ", option.max, "]")));
    }
  }
}

TEST_F(OptionLayersTest, FlagAndFileAgreeOnEverySwitch) {
  for (const Option& option : Options()) {
    if (option.kind != OptionKind::kSwitch || option.toml_key.empty()) continue;
    SCOPED_TRACE(std::string(option.flag));
    auto from_flag = Parse({absl::StrCat("--", Sv(option.flag))});
    ASSERT_TRUE(from_flag.ok()) << from_flag.status();
    const std::string path = WriteFile(
        "switch.toml", absl::StrCat(Sv(option.toml_key), " = ", option.switch_value ? "true" : "false", "\n"));
    auto from_file = Parse({"--config", path});
    ASSERT_TRUE(from_file.ok()) << from_file.status();
    const bool Config::*field = std::get<bool Config::*>(option.field);
    EXPECT_EQ(from_flag->config.*field, option.switch_value);
    EXPECT_EQ(from_file->config.*field, option.switch_value);
    EXPECT_NE(Config{}.*field, option.switch_value) << "the flag would change nothing";
  }
}

TEST_F(OptionLayersTest, FileThenEnvironmentThenFlags) {
  const std::string path = WriteFile("layers.toml",
                                     "listen = [\"127.0.0.1:5301\"]\n"
                                     "allow = [\"10.0.0.0/8\"]\n"
                                     "threads = 3\n"
                                     "[[upstream]]\n"
                                     "address = \"127.0.0.1:8531\"\n"
                                     "name = \"file.test\"\n");
  auto file_only = Parse({"--config", path});
  ASSERT_TRUE(file_only.ok()) << file_only.status();
  EXPECT_EQ(file_only->config.listen.at(0).ToString(), "127.0.0.1:5301");
  EXPECT_EQ(file_only->config.upstreams.at(0).peer.auth_name, "file.test");
  EXPECT_EQ(file_only->config.threads, 3);
  EXPECT_EQ(file_only->config.config_file, path);

  setenv("DOTPROXY_LISTEN", "127.0.0.1:5302, 127.0.0.1:5303", 1);
  setenv("DOTPROXY_UPSTREAMS", "127.0.0.1:8532#env.test", 1);
  auto with_env = Parse({"--config", path});
  ASSERT_TRUE(with_env.ok()) << with_env.status();
  ASSERT_EQ(with_env->config.listen.size(), 2u);
  EXPECT_EQ(with_env->config.listen[1].ToString(), "127.0.0.1:5303");
  ASSERT_EQ(with_env->config.upstreams.size(), 1u);
  EXPECT_EQ(with_env->config.upstreams[0].peer.auth_name, "env.test");
  EXPECT_EQ(with_env->config.allow.size(), 1u) << "the file's allow list has no variable";

  auto with_flags = Parse({"--config", path, "--listen", "127.0.0.1:5304", "--threads", "2"});
  ASSERT_TRUE(with_flags.ok()) << with_flags.status();
  ASSERT_EQ(with_flags->config.listen.size(), 1u);
  EXPECT_EQ(with_flags->config.listen[0].ToString(), "127.0.0.1:5304");
  EXPECT_EQ(with_flags->config.upstreams[0].peer.auth_name, "env.test");
  EXPECT_EQ(with_flags->config.threads, 2);
}

TEST_F(OptionLayersTest, EnvironmentErrorsNameTheVariable) {
  setenv("DOTPROXY_LISTEN", "127.0.0.1:53,,127.0.0.1:54", 1);
  EXPECT_TRUE(FailsMentioning(Parse({}).status(), "DOTPROXY_LISTEN: empty item"));
  setenv("DOTPROXY_LISTEN", "127.0.0.1", 1);
  EXPECT_TRUE(FailsMentioning(Parse({}).status(), "DOTPROXY_LISTEN: "));
  unsetenv("DOTPROXY_LISTEN");
  setenv("DOTPROXY_UPSTREAMS", "127.0.0.1:99999#x", 1);
  EXPECT_TRUE(FailsMentioning(Parse({}).status(), "DOTPROXY_UPSTREAMS: "));
}

// --- The configuration file: what it must be -------------------------------

class ConfigFileTest : public CommandLineTest {};

TEST_F(ConfigFileTest, RefusesADirectory) {
  Config config;
  const absl::Status status = LoadConfigFile(Dir(), config);
  EXPECT_TRUE(FailsMentioning(status, "a directory"));
  EXPECT_TRUE(FailsMentioning(status, "regular"));
  EXPECT_TRUE(FailsMentioning(Parse({"--config", Dir(), "--check-config"}).status(), "a directory"));
}

TEST_F(ConfigFileTest, ReadsPlainUpstreamsAndAllowPlaintext) {
  const std::string path = WriteFile("plain.toml",
                                     "allow_plaintext = true\nlisten = [\"127.0.0.1:53\"]\n"
                                     "[[upstream]]\naddress = \"udp://10.96.0.10\"\npriority = 1\n"
                                     "[[upstream]]\naddress = \"tcp://10.0.0.53:5353\"\n"
                                     "[[upstream]]\naddress = \"tls://127.0.0.1\"\nname = \"a.test\"\n");
  Config config;
  ASSERT_TRUE(LoadConfigFile(path, config).ok());
  EXPECT_TRUE(config.allow_plaintext);
  ASSERT_EQ(config.upstreams.size(), 3u);
  EXPECT_EQ(config.upstreams[0].transport, Transport::kUdp);
  EXPECT_EQ(config.upstreams[0].address.port(), 53);
  EXPECT_EQ(config.upstreams[0].priority, 1);
  EXPECT_EQ(config.upstreams[0].spec, "udp://10.96.0.10");
  EXPECT_EQ(config.upstreams[1].transport, Transport::kTcp);
  EXPECT_EQ(config.upstreams[1].address.port(), 5353);
  EXPECT_EQ(config.upstreams[2].transport, Transport::kTls);
  EXPECT_EQ(config.upstreams[2].address.port(), 853);
  EXPECT_TRUE(ValidateConfig(config).ok()) << ValidateConfig(config);
  const std::string named = WriteFile("named.toml",
                                      "[[upstream]]\naddress = \"udp://10.96.0.10\"\nname = \"x\"\n");
  Config refused;
  EXPECT_TRUE(FailsMentioning(LoadConfigFile(named, refused), "named.toml:1"));
}

TEST_F(ConfigFileTest, ReadsHttpsUpstreams) {
  const std::string path = WriteFile("doh.toml", "listen = [\"127.0.0.1:53\"]\n"
                                     "[[upstream]]\naddress = \"https://127.0.0.1:8443/q\"\n"
                                     "name = \"doh.test\"\n"
                                     "[[upstream]]\naddress = \"https://[::1]\"\n");
  Config config;
  ASSERT_TRUE(LoadConfigFile(path, config).ok());
  ASSERT_EQ(config.upstreams.size(), 2u);
  EXPECT_EQ(config.upstreams[0].transport, Transport::kHttps);
  EXPECT_EQ(config.upstreams[0].address.port(), 8443);
  EXPECT_EQ(config.upstreams[0].doh_path, "/q");
  EXPECT_EQ(config.upstreams[0].peer.auth_name, "doh.test");
  EXPECT_EQ(config.upstreams[0].spec, "https://127.0.0.1:8443/q#doh.test");
  EXPECT_EQ(config.upstreams[1].address.port(), 443);
  EXPECT_EQ(config.upstreams[1].doh_path, "/dns-query");
  EXPECT_EQ(config.upstreams[1].peer.auth_name, "::1");
  // Encrypted: no allow_plaintext needed.
  EXPECT_TRUE(ValidateConfig(config).ok()) << ValidateConfig(config);
  const std::string bad = WriteFile("bad_doh.toml",
                                    "[[upstream]]\naddress = \"https://127.0.0.1/x?y\"\n");
  Config refused;
  const absl::Status status = LoadConfigFile(bad, refused);
  EXPECT_TRUE(FailsMentioning(status, "bad_doh.toml:2")) << status;
  EXPECT_TRUE(FailsMentioning(status, "without a query"));
}

TEST_F(ConfigFileTest, RefusesDevZero) {
  Config config;
  EXPECT_TRUE(FailsMentioning(LoadConfigFile("/dev/zero", config), "/dev/zero: a character device"));
}

TEST_F(ConfigFileTest, RefusesAFifoWithoutWaitingForAWriter) {
  const std::string path = TempPath("fifo.toml");
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
  // A blocking open would wait forever for a writer: fail loudly instead.
  alarm(10);
  Config config;
  const absl::Status status = LoadConfigFile(path, config);
  alarm(0);
  EXPECT_TRUE(FailsMentioning(status, "a FIFO"));
}

TEST_F(ConfigFileTest, RefusesAFileOverTheSizeLimit) {
  const std::string path = WriteFile("big.toml", "");
  ASSERT_EQ(truncate(path.c_str(), static_cast<off_t>(kMaxConfigFileBytes) + 1), 0);
  Config config;
  EXPECT_TRUE(FailsMentioning(LoadConfigFile(path, config), "larger than"));
}

TEST_F(ConfigFileTest, MissingFileNamesIt) {
  Config config;
  EXPECT_TRUE(FailsMentioning(LoadConfigFile(Dir() + "/missing.toml", config), "missing.toml: cannot open"));
}

TEST_F(ConfigFileTest, ReadsAValidFile) {
  const std::string path = WriteFile("ok.toml",
                                     "listen = [\"127.0.0.1:5300\", \"[::1]:5300\"]\n"
                                     "query_timeout_ms = 1500\n"
                                     "padding = false\n"
                                     "[[upstream]]\n"
                                     "address = \"[2620:fe::fe]:853\"\n"
                                     "name = \"dns.quad9.net\"\n"
                                     "priority = 1\n");
  Config config;
  ASSERT_TRUE(LoadConfigFile(path, config).ok());
  EXPECT_EQ(config.listen.size(), 2u);
  EXPECT_EQ(config.query_timeout, std::chrono::milliseconds(1500));
  EXPECT_FALSE(config.pad_queries);
  ASSERT_EQ(config.upstreams.size(), 1u);
  EXPECT_EQ(config.upstreams[0].priority, 1);
  EXPECT_EQ(config.upstreams[0].spec, "[2620:fe::fe]:853#dns.quad9.net");
}

// --- The configuration file: values ----------------------------------------

TEST_F(ConfigFileTest, EmptyListsAreErrorsNamingTheLine) {
  for (const std::string key : {"listen", "allow", "upstream"}) {
    SCOPED_TRACE(key);
    const std::string path = WriteFile(key + ".toml", "threads = 1\n" + key + " = []\n");
    const absl::Status status = Parse({"--config", path}).status();
    EXPECT_TRUE(FailsMentioning(status, path + ":2: '" + key + "' is an empty list"));
  }
}

TEST_F(ConfigFileTest, UpstreamNameIsBoundedLikeTheFlags) {
  const std::string upstream = "[[upstream]]\naddress = \"127.0.0.1\"\nname = \"";
  const std::string longest(kMaxAuthNameBytes, 'a');
  const std::string ok = WriteFile("253.toml", upstream + longest + "\"\n");
  EXPECT_TRUE(Parse({"--config", ok}).ok());
  const std::string bad = WriteFile("254.toml", upstream + longest + "a\"\n");
  const absl::Status status = Parse({"--config", bad}).status();
  EXPECT_TRUE(FailsMentioning(status, bad + ":3: 'name'"));
  EXPECT_TRUE(FailsMentioning(status, "longer than 253 bytes"));
  // And the flag says the same about the same name.
  EXPECT_TRUE(FailsMentioning(Parse({"--upstream", "127.0.0.1#" + longest + "a"}).status(),
                              "longer than 253 bytes"));
}

TEST_F(ConfigFileTest, UpstreamNameWithNulIsRefusedNotCut) {
  const std::string path =
      WriteFile("nul.toml", "[[upstream]]\naddress = \"127.0.0.1\"\nname = \"dns\\u0000.evil\"\n");
  const absl::Status status = Parse({"--config", path}).status();
  EXPECT_TRUE(FailsMentioning(status, path + ":3: 'name'"));
  EXPECT_TRUE(FailsMentioning(status, "control character 0x00 at byte 3"));
  EXPECT_EQ(std::string(status.message()).find('\0'), std::string::npos);
}

TEST_F(CommandLineTest, UpstreamNameWithControlCharacterIsRefused) {
  EXPECT_TRUE(FailsMentioning(Parse({"--upstream", "127.0.0.1#a\x01" "b"}).status(),
                              "--upstream: "));
  EXPECT_TRUE(FailsMentioning(Parse({"--upstream", "127.0.0.1#a\x01" "b"}).status(),
                              "control character 0x01"));
  setenv("DOTPROXY_UPSTREAMS", "127.0.0.1#a\tb", 1);
  EXPECT_TRUE(FailsMentioning(Parse({}).status(), "DOTPROXY_UPSTREAMS: "));
}

TEST_F(ConfigFileTest, PinOnlyNeedsAPin) {
  const std::string path =
      WriteFile("pin.toml", "[[upstream]]\naddress = \"127.0.0.1\"\npin_only = true\n");
  EXPECT_TRUE(FailsMentioning(Parse({"--config", path}).status(), path + ":1: 'pin_only = true'"));
}

// --- Errors quote excerpts -------------------------------------------------

TEST(ExcerptTest, ShortTextIsEscapedWhole) {
  EXPECT_EQ(Excerpt("dns.example"), "dns.example");
  EXPECT_EQ(Excerpt(std::string_view("a\0b\n\x9b'", 6)), "a\\x00b\\n\\x9b\\'");
}

TEST(ExcerptTest, LongTextIsCutAndCounted) {
  const std::string text(1000, 'x');
  EXPECT_EQ(Excerpt(text), std::string(kExcerptBytes, 'x') + "…(1000 bytes)");
}

// Short enough for one terminal line plus the prefix.
constexpr size_t kShortMessage = 240;

TEST_F(CommandLineTest, HugeFlagValuesGiveShortErrors) {
  const std::string huge(10 << 20, 'x');
  for (const std::string flag : {"--ca-file", "--listen", "--upstream", "--allow", "--threads"}) {
    SCOPED_TRACE(flag);
    const absl::Status status = Parse({flag, huge}).status();
    EXPECT_TRUE(FailsMentioning(status, flag + ": "));
    EXPECT_TRUE(FailsMentioning(status, "(10485760 bytes)"));
    EXPECT_LT(status.message().size(), kShortMessage) << status.message().substr(0, 500);
  }
}

TEST_F(CommandLineTest, HugeEnvironmentValuesGiveShortErrors) {
  const std::string huge(1 << 20, '1');
  setenv("DOTPROXY_UPSTREAMS", huge.c_str(), 1);
  const absl::Status status = Parse({}).status();
  EXPECT_TRUE(FailsMentioning(status, "DOTPROXY_UPSTREAMS: "));
  EXPECT_LT(status.message().size(), kShortMessage) << status.message().substr(0, 500);
}

TEST_F(ConfigFileTest, HugeFileValuesGiveShortErrorsNamingTheLine) {
  const std::string huge(10 << 20, 'x');
  const std::string ca_file = WriteFile("ca.toml", "threads = 1\nca_file = \"" + huge + "\"\n");
  const std::string listen = WriteFile("listen.toml", "listen = [\"" + huge + "\"]\n");
  const std::string key = WriteFile("key.toml", "\n\n" + huge + " = 1\n");
  const std::string name =
      WriteFile("name.toml", "[[upstream]]\naddress = \"127.0.0.1\"\nname = \"" + huge + "\"\n");
  for (const auto& [path, line] : std::vector<std::pair<std::string, int>>{
           {ca_file, 2}, {listen, 1}, {key, 3}, {name, 3}}) {
    SCOPED_TRACE(path);
    const absl::Status status = Parse({"--config", path}).status();
    EXPECT_TRUE(FailsMentioning(status, absl::StrCat(path, ":", line, ": ")));
    EXPECT_LT(status.message().size(), kShortMessage + path.size()) << status.message().substr(0, 500);
  }
}

TEST_F(CommandLineTest, ControlCharactersAreEscapedInErrors) {
  for (const std::string flag : {"--listen", "--allow", "--upstream", "--threads"}) {
    SCOPED_TRACE(flag);
    const absl::Status status = Parse({flag, "127.0.0.1\n:53\x1b[2J"}).status();
    EXPECT_TRUE(FailsMentioning(status, "127.0.0.1\\n:53\\x1b[2J"));
    const std::string message(status.message());
    EXPECT_EQ(message.find('\n'), std::string::npos);
    EXPECT_EQ(message.find('\x1b'), std::string::npos);
  }
}

TEST_F(ConfigFileTest, ControlCharactersInTheFileAreEscapedInErrors) {
  const std::string path = WriteFile("esc.toml", "listen = [\"127.0.0.1\\n\\u001b[2J\"]\n");
  const std::string message(Parse({"--config", path}).status().message());
  EXPECT_NE(message.find(path + ":1: 'listen': "), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_EQ(message.find('\x1b'), std::string::npos) << message;
}

// --- ValidateConfig --------------------------------------------------------

Config ValidConfig() {
  Config config;
  config.listen.push_back(*io::ParseSocketAddress("127.0.0.1:53", -1));
  config.upstreams.push_back(*ParseUpstream("127.0.0.1#a.test"));
  return config;
}

TEST(ValidateConfigTest, AcceptsAValidConfig) { EXPECT_TRUE(ValidateConfig(ValidConfig()).ok()); }

TEST(ValidateConfigTest, RefusesTheSameUpstreamTwice) {
  Config config = ValidConfig();
  config.upstreams.push_back(*ParseUpstream("127.0.0.1:853#a.test"));
  EXPECT_TRUE(FailsMentioning(ValidateConfig(config), "upstream 127.0.0.1:853#a.test is configured twice"));
}

TEST(ValidateConfigTest, RefusesPlainUpstreamsForTheDefaultZoneWithoutTheOptIn) {
  for (const char* spec : {"udp://127.0.0.1", "tcp://127.0.0.1:5353"}) {
    Config config = ValidConfig();
    config.upstreams.push_back(*ParseUpstream(spec));
    const absl::Status status = ValidateConfig(config);
    EXPECT_TRUE(FailsMentioning(status, "allow_plaintext = true")) << spec;
    EXPECT_TRUE(FailsMentioning(status, "--allow-plaintext")) << spec;
    config.allow_plaintext = true;
    EXPECT_TRUE(ValidateConfig(config).ok()) << spec;
  }
}

TEST_F(CommandLineTest, AllowPlaintextIsASwitch) {
  auto parsed = Parse({"--upstream", "udp://127.0.0.1", "--allow-plaintext"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->config.allow_plaintext);
  EXPECT_FALSE(Parse({"--upstream", "udp://127.0.0.1"}).ok());
}

TEST(ValidateConfigTest, AcceptsOneAddressUnderTwoNames) {
  Config config = ValidConfig();
  config.upstreams.push_back(*ParseUpstream("127.0.0.1#b.test"));
  config.upstreams.push_back(*ParseUpstream("127.0.0.1:8853#a.test"));
  EXPECT_TRUE(ValidateConfig(config).ok());
}

TEST(ValidateConfigTest, ChecksTheTableRanges) {
  Config config = ValidConfig();
  config.max_inflight = 1;
  EXPECT_TRUE(FailsMentioning(ValidateConfig(config), "--max-inflight: 1 is out of range"));
  config = ValidConfig();
  config.cache_size = std::numeric_limits<size_t>::max();
  EXPECT_TRUE(FailsMentioning(ValidateConfig(config), "--cache-size: "));
}

TEST(ValidateConfigTest, ChecksUpstreamsBuiltByCode) {
  Config config = ValidConfig();
  config.upstreams[0].peer.auth_name = std::string("a\0b", 3);
  EXPECT_TRUE(FailsMentioning(ValidateConfig(config), "control character"));
  config = ValidConfig();
  config.upstreams[0].peer.pin_only = true;
  EXPECT_TRUE(FailsMentioning(ValidateConfig(config), "at least one pin"));
  config = ValidConfig();
  config.upstreams.clear();
  EXPECT_TRUE(FailsMentioning(ValidateConfig(config), "no upstream"));
}

TEST_F(CommandLineTest, DuplicateUpstreamsFailAtParseTime) {
  // So --check-config reports them, whichever layer they came from.
  EXPECT_TRUE(FailsMentioning(
      Parse({"--upstream", "127.0.0.1#a.test", "--upstream", "127.0.0.1:853#a.test", "--check-config"})
          .status(),
      "configured twice"));
  setenv("DOTPROXY_UPSTREAMS", "127.0.0.1#a.test,127.0.0.1#a.test", 1);
  EXPECT_TRUE(FailsMentioning(Parse({"--check-config"}).status(), "configured twice"));
  const std::string path = WriteFile("dup.toml",
                                     "[[upstream]]\naddress = \"127.0.0.1\"\nname = \"a.test\"\n"
                                     "[[upstream]]\naddress = \"127.0.0.1:853\"\nname = \"a.test\"\n");
  unsetenv("DOTPROXY_UPSTREAMS");
  EXPECT_TRUE(FailsMentioning(Parse({"--config", path, "--check-config"}).status(), "configured twice"));
}


// --- dnstap ---------------------------------------------------------------

TEST_F(CommandLineTest, DnstapFlagsAndTheirErrors) {
  auto parsed = Parse({"--dnstap", "unix:/run/tap.sock", "--dnstap-messages",
                       "client-query,forwarder-response"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->config.dnstap, "unix:/run/tap.sock");
  EXPECT_EQ(parsed->config.dnstap_messages, "client-query,forwarder-response");
  EXPECT_TRUE(FailsMentioning(Parse({"--dnstap", "tcp:127.0.0.1:6000"}).status(),
                              "expected unix:PATH"));
  EXPECT_TRUE(FailsMentioning(Parse({"--dnstap", "file:"}).status(), "expected unix:PATH"));
  EXPECT_TRUE(FailsMentioning(Parse({"--dnstap-messages", "client-query,auth-query"}).status(),
                              "'auth-query' is not one of"));
}

TEST_F(ConfigFileTest, DnstapMessagesIsAnArrayAndErrorsNameTheLine) {
  Config config;
  ASSERT_TRUE(LoadConfigText("dnstap = \"file:/tmp/x.tap\"\n"
                             "dnstap_messages = [\"client-query\", \"client-response\"]\n",
                             "d.toml", config)
                  .ok());
  EXPECT_EQ(config.dnstap, "file:/tmp/x.tap");
  EXPECT_EQ(config.dnstap_messages, "client-query,client-response");
  EXPECT_TRUE(FailsMentioning(
      LoadConfigText("\ndnstap_messages = [\"client-query\", \"nope\"]\n", "d.toml", config),
      "d.toml:2: "));
  EXPECT_TRUE(FailsMentioning(LoadConfigText("dnstap_messages = \"client-query\"\n", "d.toml", config),
                              "d.toml:1: "));
}

// --- listen_https (the DoH listener) -----------------------------------------

TEST(ListenHttpsTest, FlagIsRepeatableAndNeedsTheCertificate) {
  EXPECT_TRUE(FailsMentioning(Parse({"--listen-https", "127.0.0.1:8443"}).status(),
                              "--listen-https needs --tls-cert and --tls-key"));
  auto parsed = Parse({"--listen-https", "127.0.0.1:8443", "--listen-https", "[::1]:8443",
                       "--tls-cert", "/c.pem", "--tls-key", "/k.pem"});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->config.listen_https.size(), 2u);
  EXPECT_EQ(parsed->config.listen_https[1].ToString(), "[::1]:8443");
  EXPECT_TRUE(parsed->config.listen_tls.empty());
}

TEST_F(ConfigFileTest, ReadsListenHttps) {
  const std::string path = WriteFile("doh.toml", "listen_https = [\"127.0.0.1:8443\"]\n"
                                                 "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n");
  Config config;
  ASSERT_TRUE(LoadConfigFile(path, config).ok());
  ASSERT_EQ(config.listen_https.size(), 1u);
  EXPECT_EQ(config.listen_https[0].ToString(), "127.0.0.1:8443");
}

}  // namespace
}  // namespace dotproxy::config
