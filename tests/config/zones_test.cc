// [[zone]] tables: parsing, normalization, and the errors an operator sees
// (FILE:LINE and the problem).

#include <gtest/gtest.h>

#include <string>

#include "dotproxy/config/config.h"

namespace dotproxy::config {
namespace {

absl::Status Load(const std::string& text, Config& config) {
  config.listen.push_back(*io::ParseSocketAddress("127.0.0.1:53", -1));
  if (auto status = LoadConfigText(text, "zones.toml", config); !status.ok()) return status;
  return ValidateConfig(config);
}

void ExpectError(const std::string& text, const std::string& expected) {
  Config config;
  const absl::Status status = Load(text, config);
  EXPECT_FALSE(status.ok()) << text;
  EXPECT_NE(std::string(status.message()).find(expected), std::string::npos)
      << "got: " << status.message() << "\nwanted: " << expected;
}

TEST(ZoneConfigTest, ReadsZonesAndNormalizesTheirNames) {
  Config config;
  ASSERT_TRUE(Load(R"(
[[upstream]]
address = "127.0.0.1:853"
name = "dns.test"

[[zone]]
name = "Corp.Example."
upstreams = ["udp://10.0.0.53", "tcp://10.0.0.54:5353"]
cache = false

[[zone]]
name = "cluster.local"
upstreams = ["10.96.0.10#kube-dns.test"]
)", config).ok());
  ASSERT_EQ(config.zones.size(), 2u);
  EXPECT_EQ(config.zones[0].name, "corp.example");
  EXPECT_FALSE(config.zones[0].cache);
  EXPECT_EQ(config.zones[0].line, 6);
  ASSERT_EQ(config.zones[0].upstreams.size(), 2u);
  EXPECT_EQ(config.zones[0].upstreams[0].transport, Transport::kUdp);
  EXPECT_EQ(config.zones[0].upstreams[1].address.ToString(), "10.0.0.54:5353");
  EXPECT_EQ(config.zones[1].name, "cluster.local");
  EXPECT_TRUE(config.zones[1].cache);
  EXPECT_EQ(config.zones[1].upstreams[0].peer.auth_name, "kube-dns.test");
  EXPECT_EQ(config.upstreams.size(), 1u);
  EXPECT_EQ(AllUpstreams(config).size(), 4u);
}

TEST(ZoneConfigTest, TheRootZoneIsTheDefaultUpstreams) {
  Config config;
  ASSERT_TRUE(Load(R"(
[[zone]]
name = "."
upstreams = ["127.0.0.1:853#a.test", "127.0.0.2:853#b.test"]
)", config).ok());
  EXPECT_TRUE(config.zones.empty());
  ASSERT_EQ(config.upstreams.size(), 2u);
  EXPECT_EQ(config.upstreams[1].peer.auth_name, "b.test");
}

TEST(ZoneConfigTest, PlainUpstreamsInTheDefaultZoneNeedAllowPlaintext) {
  ExpectError("[[zone]]\nname = \".\"\nupstreams = [\"udp://127.0.0.1\"]\n",
              "not allowed for the default zone");
  Config config;
  EXPECT_TRUE(Load("[[zone]]\nname = \".\"\nupstreams = [\"udp://127.0.0.1\"]\n"
                   "allow_plaintext = true\n", config).ok());
  EXPECT_TRUE(config.allow_plaintext);
  Config top_level;
  EXPECT_TRUE(Load("allow_plaintext = true\n[[upstream]]\naddress = \"127.0.0.1:853\"\n",
                   top_level).ok());
  // A zone other than the root may always use them.
  Config zone;
  EXPECT_TRUE(Load("[[zone]]\nname = \"corp.example\"\nupstreams = [\"tcp://127.0.0.1\"]\n"
                   "[[upstream]]\naddress = \"127.0.0.1:853\"\n", zone).ok());
}

TEST(ZoneConfigTest, ErrorsNameTheLine) {
  ExpectError("[[upstream]]\naddress = \"127.0.0.1:853\"\n"
              "[[zone]]\nname = \".\"\nupstreams = [\"127.0.0.2:853\"]\n",
              "zones.toml:4: [[zone]] name = \".\" and the top-level [[upstream]] tables (line 1)");
  ExpectError("[[zone]]\nname = \"a.example\"\nupstreams = [\"127.0.0.2\"]\n"
              "[[zone]]\nname = \"A.Example.\"\nupstreams = [\"127.0.0.3\"]\n",
              "zones.toml:5: zone 'a.example' is already defined at line 1");
  ExpectError("[[zone]]\nname = \"a..example\"\nupstreams = [\"127.0.0.2\"]\n",
              "zones.toml:2: zone name 'a..example' has an empty label");
  ExpectError("[[zone]]\nname = \"a example\"\nupstreams = [\"127.0.0.2\"]\n",
              "zones.toml:2: zone name 'a example': ' ' is not a letter");
  ExpectError("[[zone]]\nname = \"\"\nupstreams = [\"127.0.0.2\"]\n", "zones.toml:2: empty zone name");
  ExpectError("[[zone]]\nname = \"a.example\"\nupstreams = []\n",
              "zones.toml:3: 'upstreams' is an empty list");
  ExpectError("[[zone]]\nname = \"a.example\"\n", "zones.toml:1: [[zone]] needs 'upstreams'");
  ExpectError("[[zone]]\nupstreams = [\"127.0.0.2\"]\n", "zones.toml:1: [[zone]] needs a 'name'");
  ExpectError("[[zone]]\nname = \"a.example\"\nupstreams = [\"udp://127.0.0.2#x\"]\n",
              "zones.toml:3: 'upstreams': ");
  ExpectError("[[zone]]\nname = \"a.example\"\nupstreams = [\"127.0.0.2\"]\ntimeout = 3\n",
              "zones.toml:4: unknown key 'timeout' in [[zone]]");
  ExpectError("[[zone]]\nname = \"a.example\"\nupstreams = [\"127.0.0.2\"]\ncache = 1\n",
              "zones.toml:4: 'cache' must be true or false");
  ExpectError("[[zone]]\nname = \".\"\nupstreams = [\"127.0.0.2\"]\ncache = false\n",
              "zones.toml:4: 'cache' is not a setting of the default zone");
  ExpectError("zone = 3\n", "zones.toml:1: 'zone' must be written as [[zone]] tables");
  ExpectError("[[upstream]]\naddress = \"127.0.0.1:853\"\n"
              "[[zone]]\nname = \"a.example\"\nupstreams = [\"127.0.0.2\", \"127.0.0.2\"]\n",
              "is configured twice in zone 'a.example'");
}

TEST(ZoneConfigTest, NormalizeZoneName) {
  EXPECT_EQ(*NormalizeZoneName("."), "");
  EXPECT_EQ(*NormalizeZoneName("EXAMPLE.com."), "example.com");
  EXPECT_EQ(*NormalizeZoneName("_tcp.10.in-addr.arpa"), "_tcp.10.in-addr.arpa");
  EXPECT_FALSE(NormalizeZoneName("a.").ok() == false);
  EXPECT_FALSE(NormalizeZoneName("..").ok());
  EXPECT_FALSE(NormalizeZoneName(".example").ok());
  EXPECT_FALSE(NormalizeZoneName(std::string(64, 'a') + ".example").ok());
  EXPECT_TRUE(NormalizeZoneName(std::string(63, 'a') + ".example").ok());
  EXPECT_FALSE(NormalizeZoneName(std::string(300, 'a')).ok());
  EXPECT_FALSE(NormalizeZoneName("*.example").ok());
}

TEST(ZoneConfigTest, ValidateCatchesZonesBuiltByCode) {
  Config config;
  config.listen.push_back(*io::ParseSocketAddress("127.0.0.1:53", -1));
  config.upstreams.push_back(*ParseUpstream("127.0.0.1#a.test"));
  config.zones.push_back({.name = "a.example", .upstreams = {*ParseUpstream("127.0.0.2")}});
  EXPECT_TRUE(ValidateConfig(config).ok());
  config.zones.push_back(config.zones.back());
  EXPECT_FALSE(ValidateConfig(config).ok());
  config.zones.pop_back();
  config.zones.push_back({.name = "b.example"});
  EXPECT_FALSE(ValidateConfig(config).ok());
  config.zones.back() = {.name = "B.example", .upstreams = {*ParseUpstream("127.0.0.2")}};
  EXPECT_FALSE(ValidateConfig(config).ok());
}

}  // namespace
}  // namespace dotproxy::config
