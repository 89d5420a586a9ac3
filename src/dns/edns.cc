#include "dotproxy/dns/edns.h"

#include <cstring>

namespace dotproxy::dns {
namespace {

constexpr size_t kOptFixedSize = 11;  // root name + TYPE CLASS TTL RDLENGTH

bool IsTransportOption(uint16_t code) {
  return code == kOptionTcpKeepalive || code == kOptionPadding;
}

}  // namespace

size_t BuildUpstreamQuery(std::span<const uint8_t> query, const QueryInfo& info,
                          const UpstreamQueryOptions& options, std::span<uint8_t> out) {
  // `info` may be stale or describe another message: never read past `query`.
  if (info.question_length == 0 || kHeaderSize + info.question_length > query.size()) return 0;
  const uint8_t* h = query.data();
  // Everything before the additional section is copied as is. SkipRecord
  // returns 0 on a malformed record; going on from offset 0 would re-read the
  // header as a record, so the first failure ends the query.
  size_t pos = kHeaderSize + info.question_length;
  const unsigned before_additional = header::AnCount(h) + header::NsCount(h);
  for (unsigned i = 0; i < before_additional; ++i) {
    pos = SkipRecord(query, pos);
    if (pos == 0) return 0;
  }
  if (pos > out.size()) return 0;
  std::memcpy(out.data(), h, pos);
  size_t length = pos;
  uint16_t additional = 0;

  // Non-OPT additional records (e.g. TSIG) are copied; the OPT is rebuilt.
  const uint8_t* client_opt = nullptr;
  for (unsigned i = 0, n = header::ArCount(h); i < n; ++i) {
    const size_t start = pos;
    pos = SkipRecord(query, pos);
    if (pos == 0) return 0;
    if (query[start] == 0 && ReadU16(&query[start + 1]) == kTypeOpt) {
      // VERSION > 0 is answered BADVERS locally (ParseQuery), never forwarded.
      if (query[start + 6] != 0) return 0;
      client_opt = &query[start];
      continue;
    }
    if (length + (pos - start) > out.size()) return 0;
    std::memcpy(out.data() + length, &query[start], pos - start);
    length += pos - start;
    ++additional;
  }

  const bool add_opt = client_opt != nullptr || options.pad || options.request_keepalive;
  if (add_opt) {
    if (length + kOptFixedSize > out.size()) return 0;
    uint8_t* opt = out.data() + length;
    opt[0] = 0;
    WriteU16(opt + 1, kTypeOpt);
    if (client_opt != nullptr) {
      std::memcpy(opt + 3, client_opt + 3, 6);  // size, ext-rcode, version, flags (DO)
    } else {
      WriteU16(opt + 3, options.udp_size_without_edns);
      WriteU32(opt + 5, 0);
    }
    size_t rdata = length + kOptFixedSize;
    if (client_opt != nullptr) {
      const size_t rdlength = ReadU16(client_opt + 9);
      const uint8_t* option = client_opt + kOptFixedSize;
      const uint8_t* end = option + rdlength;
      while (option < end) {
        if (end - option < 4) return 0;
        const uint16_t code = ReadU16(option);
        const size_t option_length = ReadU16(option + 2);
        if (static_cast<size_t>(end - option) < 4 + option_length) return 0;
        const bool drop = IsTransportOption(code) ||
                          (code == kOptionClientSubnet && options.strip_client_subnet);
        if (!drop) {
          if (rdata + 4 + option_length > out.size()) return 0;
          std::memcpy(out.data() + rdata, option, 4 + option_length);
          rdata += 4 + option_length;
        }
        option += 4 + option_length;
      }
    }
    if (options.request_keepalive) {
      if (rdata + 4 > out.size()) return 0;
      WriteU16(out.data() + rdata, kOptionTcpKeepalive);
      WriteU16(out.data() + rdata + 2, 0);  // empty in queries (RFC 7828 §3.2.1)
      rdata += 4;
    }
    if (options.pad) {
      const size_t unpadded = rdata + 4;
      const size_t padding = (kQueryPaddingBlock - unpadded % kQueryPaddingBlock) % kQueryPaddingBlock;
      if (unpadded + padding > out.size()) return 0;
      WriteU16(out.data() + rdata, kOptionPadding);
      WriteU16(out.data() + rdata + 2, static_cast<uint16_t>(padding));
      std::memset(out.data() + unpadded, 0, padding);  // RFC 8467: zero octets
      rdata = unpadded + padding;
    }
    WriteU16(opt + 9, static_cast<uint16_t>(rdata - length - kOptFixedSize));
    length = rdata;
    ++additional;
  }
  WriteU16(out.data() + 10, additional);
  return length;
}

size_t RewriteAnswerOpt(std::span<uint8_t> msg, size_t length, bool client_has_edns,
                        int* keepalive) {
  std::span<const uint8_t> wire(msg.data(), length);
  uint8_t* h = msg.data();
  const size_t name_length = UncompressedNameLength(wire, kHeaderSize);
  if (name_length == 0) return length;  // not a message ParseResponse accepted
  size_t pos = kHeaderSize + name_length + 4;
  const unsigned before_additional = header::AnCount(h) + header::NsCount(h);
  for (unsigned i = 0; i < before_additional && pos != 0; ++i) pos = SkipRecord(wire, pos);
  if (pos == 0) return length;
  for (unsigned i = 0, n = header::ArCount(h); i < n; ++i) {
    const size_t start = pos;
    pos = SkipRecord(wire, pos);
    if (pos == 0) return length;
    if (!(wire[start] == 0 && ReadU16(&wire[start + 1]) == kTypeOpt)) continue;

    // Read, then filter the options in place.
    uint8_t* opt = h + start;
    const size_t rdlength = ReadU16(opt + 9);
    uint8_t* read = opt + kOptFixedSize;
    uint8_t* write = read;
    uint8_t* const end = read + rdlength;
    while (end - read >= 4) {
      const uint16_t code = ReadU16(read);
      const size_t option_length = ReadU16(read + 2);
      if (static_cast<size_t>(end - read) < 4 + option_length) break;
      if (code == kOptionTcpKeepalive && option_length == 2 && keepalive != nullptr) {
        *keepalive = ReadU16(read + 4);
      }
      if (!IsTransportOption(code)) {
        std::memmove(write, read, 4 + option_length);
        write += 4 + option_length;
      }
      read += 4 + option_length;
    }
    size_t removed;
    size_t cut_from;
    if (!client_has_edns) {
      removed = pos - start;  // the whole OPT RR
      cut_from = start;
      WriteU16(h + 10, static_cast<uint16_t>(n - 1));
    } else {
      removed = static_cast<size_t>(end - write);
      cut_from = static_cast<size_t>(write - h);
      WriteU16(opt + 9, static_cast<uint16_t>(rdlength - removed));
    }
    if (removed > 0) {
      std::memmove(h + cut_from, h + cut_from + removed, length - cut_from - removed);
    }
    return length - removed;
  }
  return length;
}

}  // namespace dotproxy::dns
