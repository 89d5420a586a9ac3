#pragma once
// Client access control: which source networks may query the proxy.
//
// A stub or edge resolver that answers anyone is an open amplifier; the
// default admits loopback and private ranges only (RFC 1918, RFC 4193
// unique-local, link-local). Checked once per UDP datagram and once per TCP
// accept: a few mask-and-compare operations, no allocation. Immutable after
// construction; safe to share between shards.

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace dotproxy::frontend {

struct Cidr {
  int family = AF_INET;
  uint8_t address[16] = {};  // network byte order; first 4 bytes for IPv4
  int prefix_length = 0;
  std::string text;
};

// Parses "192.0.2.0/24", "2001:db8::/32" or a bare address (host route).
absl::StatusOr<Cidr> ParseCidr(std::string_view text);

// The default allow list: 127.0.0.0/8, ::1/128, 10.0.0.0/8, 172.16.0.0/12,
// 192.168.0.0/16, 169.254.0.0/16, fc00::/7, fe80::/10.
std::vector<Cidr> DefaultAllowList();

class Acl {
 public:
  explicit Acl(std::vector<Cidr> allowed) : allowed_(std::move(allowed)) {}
  // IPv4-mapped IPv6 sources are matched as IPv4.
  bool Allows(const sockaddr* source) const;

 private:
  std::vector<Cidr> allowed_;
};

}  // namespace dotproxy::frontend
