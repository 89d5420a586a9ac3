// The TOML keys of local answers and blocklists (src/config/policy_file.cc):
// what lands in Config::policy, and errors that name FILE:LINE.

#include <gtest/gtest.h>

#include <string>

#include "dotproxy/config/config.h"

namespace dotproxy::config {
namespace {

absl::Status Load(const std::string& text, Config& config) {
  return LoadConfigText(text, "site.toml", config);
}

TEST(PolicyFileTest, ReadsLocalBlocklistAndAllowlist) {
  Config config;
  ASSERT_TRUE(Load(R"(hosts_file = "/etc/hosts"
allowlist = ["/a", "/b"]

[[local]]
name = "nas.lan"
type = "A"
ttl = 60
data = "192.0.2.5"

[[blocklist]]
name = "ads"
file = "/lists/ads.txt"
action = "0.0.0.0"
ttl = 10

[[blocklist]]
file = "/lists/malware.txt"
)", config).ok());
  EXPECT_EQ(config.hosts_file, "/etc/hosts");
  ASSERT_EQ(config.policy.local.size(), 1u);
  EXPECT_EQ(config.policy.local[0].name, "nas.lan");
  EXPECT_EQ(config.policy.local[0].ttl, 60u);
  EXPECT_EQ(config.policy.local[0].where, "site.toml:4");
  ASSERT_EQ(config.policy.blocklists.size(), 2u);
  EXPECT_EQ(config.policy.blocklists[0].action, "0.0.0.0");
  EXPECT_EQ(config.policy.blocklists[0].ttl, 10u);
  EXPECT_EQ(config.policy.blocklists[1].action, "nxdomain");  // the default
  EXPECT_EQ(config.policy.allowlist, (std::vector<std::string>{"/a", "/b"}));
}

TEST(PolicyFileTest, ErrorsNameFileAndLine) {
  struct Bad {
    std::string text;
    std::string want;
  };
  for (const Bad& bad : std::vector<Bad>{
           {"[[local]]\nname = \"x\"\ntype = \"A\"\n", "site.toml:1: [[local]] needs"},
           {"[[local]]\nname = \"x\"\ntype = \"A\"\ndata = \"1.2.3.4\"\ncolour = 1\n",
            "site.toml:5: unknown key 'colour'"},
           {"[[local]]\nname = \"x\"\ntype = \"A\"\nttl = -1\ndata = \"1.2.3.4\"\n", "site.toml:4:"},
           {"[[blocklist]]\naction = \"refused\"\n", "site.toml:1: [[blocklist]] needs a 'file'"},
           {"\n[[blocklist]]\nfile = 3\n", "site.toml:3: 'file' must be"},
           {"allowlist = \"/one\"\n", "site.toml:1: 'allowlist' must be an array"},
           {"local = 1\n", "site.toml:1: 'local' must be written as [[local]]"},
       }) {
    Config config;
    const absl::Status status = Load(bad.text, config);
    EXPECT_FALSE(status.ok()) << bad.text;
    EXPECT_NE(status.message().find(bad.want), std::string::npos)
        << status << "\nwanted: " << bad.want;
  }
}

}  // namespace
}  // namespace dotproxy::config
