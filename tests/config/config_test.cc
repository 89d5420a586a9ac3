#include "dotproxy/config/config.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "dotproxy/io/socket.h"

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
  // The environment layer would otherwise leak the runner's settings in.
  void SetUp() override {
    unsetenv("DOTPROXY_LISTEN");
    unsetenv("DOTPROXY_UPSTREAMS");
  }
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
  EXPECT_EQ(upstream->auth_name, "9.9.9.9");
  EXPECT_TRUE(upstream->pins.empty());
  EXPECT_EQ(upstream->spec, "9.9.9.9");
}

TEST(ParseUpstreamTest, IpWithPort) {
  auto upstream = ParseUpstream("192.0.2.7:8853");
  ASSERT_TRUE(upstream.ok()) << upstream.status();
  EXPECT_EQ(upstream->address.ToString(), "192.0.2.7:8853");
  EXPECT_EQ(upstream->auth_name, "192.0.2.7");
}

TEST(ParseUpstreamTest, IpWithName) {
  auto upstream = ParseUpstream("1.1.1.1#cloudflare-dns.com");
  ASSERT_TRUE(upstream.ok()) << upstream.status();
  EXPECT_EQ(upstream->address.ToString(), "1.1.1.1:853");
  EXPECT_EQ(upstream->auth_name, "cloudflare-dns.com");
}

TEST(ParseUpstreamTest, BracketedIpv6WithPortAndName) {
  auto upstream = ParseUpstream("[2620:fe::fe]:8853#dns.quad9.net");
  ASSERT_TRUE(upstream.ok()) << upstream.status();
  EXPECT_EQ(upstream->address.family(), AF_INET6);
  EXPECT_EQ(upstream->address.ToString(), "[2620:fe::fe]:8853");
  EXPECT_EQ(upstream->auth_name, "dns.quad9.net");
}

TEST(ParseUpstreamTest, Ipv6WithoutNameUsesTheBareAddressAsName) {
  // The name is matched against an IP SAN, so no brackets and no port.
  auto upstream = ParseUpstream("[2606:4700:4700::1111]:853");
  ASSERT_TRUE(upstream.ok()) << upstream.status();
  EXPECT_EQ(upstream->auth_name, "2606:4700:4700::1111");
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
  EXPECT_EQ(config.upstreams[0].auth_name, "cloudflare-dns.com");
  EXPECT_EQ(config.upstreams[1].address.ToString(), "1.0.0.1:853");
  EXPECT_EQ(config.upstreams[1].auth_name, "cloudflare-dns.com");
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
  EXPECT_EQ(upstreams[0].auth_name, "dns.quad9.net");
  EXPECT_EQ(upstreams[1].address.ToString(), "[2620:fe::9]:8853");
  EXPECT_EQ(upstreams[1].auth_name, "dns.quad9.net");
  EXPECT_EQ(upstreams[2].address.ToString(), "192.0.2.1:853");
  EXPECT_EQ(upstreams[2].auth_name, "192.0.2.1");
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
                      BadFlagCase{{"--threads", "0"}, "--threads"},
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

}  // namespace
}  // namespace dotproxy::config
