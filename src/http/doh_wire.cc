// The wire pieces of RFC 8484 that need no HTTP/2 session: the dns=
// parameter's base64url and the freshness lifetime of an answer.
#include <algorithm>

#include "dotproxy/dns/message.h"
#include "dotproxy/http/doh_server.h"

namespace dotproxy::http {
namespace {

int Base64UrlValue(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

}  // namespace

int DecodeBase64Url(std::string_view text, std::span<uint8_t> out) {
  // Clients MUST NOT pad (RFC 8484 §4.1); one that does is still understood.
  for (int i = 0; i < 2 && !text.empty() && text.back() == '='; ++i) text.remove_suffix(1);
  if (text.size() % 4 == 1) return -1;
  const size_t length = text.size() / 4 * 3 + (text.size() % 4 == 0 ? 0 : text.size() % 4 - 1);
  if (length > out.size()) return -2;
  uint32_t bits = 0;
  int bit_count = 0;
  size_t written = 0;
  for (char c : text) {
    const int value = Base64UrlValue(c);
    if (value < 0) return -1;
    bits = bits << 6 | static_cast<uint32_t>(value);
    bit_count += 6;
    if (bit_count >= 8) {
      bit_count -= 8;
      out[written++] = static_cast<uint8_t>(bits >> bit_count);
    }
  }
  return static_cast<int>(written);
}

uint32_t DohMaxAge(std::span<const uint8_t> answer) {
  if (answer.size() < dns::kHeaderSize) return 0;
  const uint8_t* header = answer.data();
  size_t offset = dns::kHeaderSize;
  for (uint16_t i = 0; i < dns::header::QdCount(header); ++i) {
    offset = dns::SkipName(answer, offset);
    if (offset == 0 || offset + 4 > answer.size()) return 0;
    offset += 4;
  }
  // RFC 2181 §8: a TTL with the top bit set is read as 0.
  auto ttl_at = [&](size_t at) {
    const uint32_t ttl = dns::ReadU32(answer.data() + at);
    return (ttl & 0x80000000u) != 0 ? 0u : ttl;
  };
  const uint16_t answers = dns::header::AnCount(header);
  const uint16_t authority = dns::header::NsCount(header);
  uint32_t smallest = UINT32_MAX;
  for (uint32_t i = 0; i < uint32_t{answers} + authority; ++i) {
    const size_t name_end = dns::SkipName(answer, offset);
    if (name_end == 0 || name_end + 10 > answer.size()) return 0;
    const uint16_t type = dns::ReadU16(answer.data() + name_end);
    const size_t next = name_end + 10 + dns::ReadU16(answer.data() + name_end + 8);
    if (next > answer.size()) return 0;
    if (i < answers) {
      if (type != dns::kTypeOpt) smallest = std::min(smallest, ttl_at(name_end + 4));
    } else if (smallest != UINT32_MAX) {
      break;  // the answer section decided
    } else if (type == dns::kTypeSoa && next - name_end >= 10 + 22) {
      // Negative answer: the SOA's TTL and its MINIMUM (the last RDATA field).
      return std::min(ttl_at(name_end + 4), ttl_at(next - 4));
    }
    offset = next;
  }
  return smallest == UINT32_MAX ? 0 : smallest;
}

}  // namespace dotproxy::http
