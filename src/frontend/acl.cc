#include "dotproxy/frontend/acl.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dotproxy::frontend {
namespace {

bool PrefixMatches(const uint8_t* address, const Cidr& cidr) {
  const int full_bytes = cidr.prefix_length / 8;
  if (std::memcmp(address, cidr.address, full_bytes) != 0) return false;
  const int rest = cidr.prefix_length % 8;
  if (rest == 0) return true;
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (address[full_bytes] & mask) == (cidr.address[full_bytes] & mask);
}

}  // namespace

absl::StatusOr<Cidr> ParseCidr(std::string_view text) {
  Cidr cidr;
  cidr.text = std::string(text);
  const size_t slash = text.find('/');
  const std::string address(text.substr(0, slash));
  if (inet_pton(AF_INET, address.c_str(), cidr.address) == 1) {
    cidr.family = AF_INET;
    cidr.prefix_length = 32;
  } else if (inet_pton(AF_INET6, address.c_str(), cidr.address) == 1) {
    cidr.family = AF_INET6;
    cidr.prefix_length = 128;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("'", cidr.text, "': not an IPv4 or IPv6 network (e.g. 10.0.0.0/8, fd00::/8)"));
  }
  if (slash != std::string_view::npos) {
    const std::string_view length = text.substr(slash + 1);
    int value = -1;
    auto [end, ec] = std::from_chars(length.data(), length.data() + length.size(), value);
    if (ec != std::errc() || end != length.data() + length.size() || value < 0 ||
        value > cidr.prefix_length) {
      return absl::InvalidArgumentError(absl::StrCat("'", cidr.text, "': bad prefix length"));
    }
    cidr.prefix_length = value;
  }
  return cidr;
}

std::vector<Cidr> DefaultAllowList() {
  std::vector<Cidr> list;
  for (const char* text : {"127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
                           "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10"}) {
    list.push_back(*ParseCidr(text));
  }
  return list;
}

bool Acl::Allows(const sockaddr* source) const {
  const uint8_t* address;
  int family = source->sa_family;
  if (family == AF_INET) {
    address = reinterpret_cast<const uint8_t*>(
        &reinterpret_cast<const sockaddr_in*>(source)->sin_addr);
  } else if (family == AF_INET6) {
    address = reinterpret_cast<const sockaddr_in6*>(source)->sin6_addr.s6_addr;
    static constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(address, kMappedPrefix, sizeof(kMappedPrefix)) == 0) {
      family = AF_INET;
      address += 12;
    }
  } else {
    return false;
  }
  for (const Cidr& cidr : allowed_) {
    if (cidr.family == family && PrefixMatches(address, cidr)) return true;
  }
  return false;
}

}  // namespace dotproxy::frontend
