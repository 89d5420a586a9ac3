#include "dotproxy/frontend/acl.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>

namespace dotproxy::frontend {
namespace {

sockaddr_storage V4(const char* text) {
  sockaddr_storage storage{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
  v4->sin_family = AF_INET;
  inet_pton(AF_INET, text, &v4->sin_addr);
  return storage;
}

sockaddr_storage V6(const char* text) {
  sockaddr_storage storage{};
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
  v6->sin6_family = AF_INET6;
  inet_pton(AF_INET6, text, &v6->sin6_addr);
  return storage;
}

bool Allows(const Acl& acl, const sockaddr_storage& s) {
  return acl.Allows(reinterpret_cast<const sockaddr*>(&s));
}

TEST(AclTest, DefaultAdmitsLoopbackAndPrivateOnly) {
  const Acl acl(DefaultAllowList());
  EXPECT_TRUE(Allows(acl, V4("127.0.0.1")));
  EXPECT_TRUE(Allows(acl, V4("127.255.0.9")));
  EXPECT_TRUE(Allows(acl, V4("10.1.2.3")));
  EXPECT_TRUE(Allows(acl, V4("172.16.0.1")));
  EXPECT_TRUE(Allows(acl, V4("172.31.255.255")));
  EXPECT_FALSE(Allows(acl, V4("172.32.0.1")));
  EXPECT_TRUE(Allows(acl, V4("192.168.1.1")));
  EXPECT_FALSE(Allows(acl, V4("192.0.2.1")));
  EXPECT_FALSE(Allows(acl, V4("8.8.8.8")));
  EXPECT_TRUE(Allows(acl, V6("::1")));
  EXPECT_TRUE(Allows(acl, V6("fd00::1")));
  EXPECT_TRUE(Allows(acl, V6("fe80::1")));
  EXPECT_FALSE(Allows(acl, V6("2001:db8::1")));
}

TEST(AclTest, MatchesIpv4MappedAsIpv4) {
  const Acl acl(DefaultAllowList());
  EXPECT_TRUE(Allows(acl, V6("::ffff:127.0.0.1")));
  EXPECT_FALSE(Allows(acl, V6("::ffff:192.0.2.1")));
}

TEST(AclTest, PrefixLengthsNotOnByteBoundaries) {
  const Acl acl({*ParseCidr("192.0.2.64/26")});
  EXPECT_FALSE(Allows(acl, V4("192.0.2.63")));
  EXPECT_TRUE(Allows(acl, V4("192.0.2.64")));
  EXPECT_TRUE(Allows(acl, V4("192.0.2.127")));
  EXPECT_FALSE(Allows(acl, V4("192.0.2.128")));
}

TEST(AclTest, BareAddressIsHostRouteAndZeroLengthIsEverything) {
  const Acl host({*ParseCidr("192.0.2.7")});
  EXPECT_TRUE(Allows(host, V4("192.0.2.7")));
  EXPECT_FALSE(Allows(host, V4("192.0.2.8")));
  const Acl all({*ParseCidr("0.0.0.0/0"), *ParseCidr("::/0")});
  EXPECT_TRUE(Allows(all, V4("203.0.113.1")));
  EXPECT_TRUE(Allows(all, V6("2001:db8::1")));
}

TEST(AclTest, RejectsBadNetworks) {
  EXPECT_FALSE(ParseCidr("10.0.0.0/33").ok());
  EXPECT_FALSE(ParseCidr("10.0.0.0/").ok());
  EXPECT_FALSE(ParseCidr("::/129").ok());
  EXPECT_FALSE(ParseCidr("example.com/8").ok());
  EXPECT_FALSE(ParseCidr("10.0.0.0/8x").ok());
}

}  // namespace
}  // namespace dotproxy::frontend
