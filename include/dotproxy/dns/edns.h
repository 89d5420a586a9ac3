#pragma once
// EDNS(0) rewriting between clients and upstreams (RFC 6891).
//
// Queries going upstream over TLS get: the client's OPT (or a new one) minus
// client-subnet (RFC 7871, privacy) and any keepalive/padding option the
// client sent, plus an empty edns-tcp-keepalive option (RFC 7828: ask the
// upstream for its idle timeout) and block padding to 128 bytes (RFC 8467
// §4.1, recommended block size for queries). Answers coming back lose those
// transport options again, and their OPT entirely when the client sent none.
// Pure functions on caller buffers; no allocation.

#include <cstddef>
#include <cstdint>
#include <span>

#include "dotproxy/dns/message.h"

namespace dotproxy::dns {

inline constexpr uint16_t kOptionClientSubnet = 8;
inline constexpr uint16_t kOptionTcpKeepalive = 11;
inline constexpr uint16_t kOptionPadding = 12;
inline constexpr size_t kQueryPaddingBlock = 128;
// Growth of a query through BuildUpstreamQuery at most: a new OPT RR (11),
// keepalive (4) and padding (4 + up to 127).
inline constexpr size_t kUpstreamQueryGrowth = 11 + 4 + 4 + kQueryPaddingBlock;

struct UpstreamQueryOptions {
  bool pad = true;
  bool strip_client_subnet = true;
  bool request_keepalive = true;
  uint16_t udp_size_without_edns = 1232;  // OPT size field when we add the OPT
};

// Writes the upstream form of the valid query `query` (described by `info`)
// into `out`. Returns its length, or 0 when `out` is too small, the
// client's OPT options or any record are malformed, or
// `info.question_length` does not fit in `query` (answer FORMERR). Also 0
// for an OPT VERSION above 0, which ParseQuery reports as kBadVers first:
// such a query is answered locally and never forwarded. The question bytes
// and the ID are copied unchanged.
size_t BuildUpstreamQuery(std::span<const uint8_t> query, const QueryInfo& info,
                          const UpstreamQueryOptions& options, std::span<uint8_t> out);

// Rewrites the OPT RR of the answer in `msg[0, length)` in place for a
// client: removes keepalive and padding options, or the whole OPT when the
// client sent no EDNS. Reports the upstream's keepalive timeout (units of
// 100 ms) in `keepalive` when present, else leaves it alone. Returns the new
// length. REQUIRES: the message passed ParseResponse.
size_t RewriteAnswerOpt(std::span<uint8_t> msg, size_t length, bool client_has_edns,
                        int* keepalive);

}  // namespace dotproxy::dns
