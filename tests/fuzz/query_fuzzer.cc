// Fuzz target "query": a client's datagram through what Forwarder::Accept
// does before anything goes upstream. ParseQuery; the error replies each
// verdict gets (FORMERR, NOTIMP, BADVERS, REFUSED, and the SERVFAIL built
// later from a slot's stored query); for a valid query the cache key and
// BuildUpstreamQuery (EDNS rewrite, client-subnet stripping, keepalive,
// padding) into a buffer the size of a query slot's. Checks the properties
// the forwarder relies on, not only memory safety.

#include <cstring>
#include <span>
#include <vector>

#include "dotproxy/cache/packet_cache.h"
#include "dotproxy/dns/edns.h"
#include "dotproxy/dns/message.h"
#include "dotproxy/frontend/client_ref.h"
#include "tests/fuzz/fuzz_check.h"

namespace dns = dotproxy::dns;
using dotproxy::fuzz::ForEachOption;
using dotproxy::fuzz::MessageShape;
using dotproxy::fuzz::WalkMessage;

namespace {

// An error reply as Forwarder::ReplyError writes it, into a buffer of
// exactly the size the forwarder asks the front end for.
void CheckErrorReply(std::span<const uint8_t> query, const dns::QueryInfo& info,
                     dns::Rcode rcode, std::span<const uint8_t> question) {
  std::vector<uint8_t> out(dns::kMaxErrorReplyLength);
  const size_t length = dns::BuildErrorReply(query, info, rcode, 1232, out);
  FUZZ_CHECK(length <= out.size());
  if (length == 0) {
    // Only an extended RCODE without an OPT to carry it, or no header.
    FUZZ_CHECK(query.size() < 4 || (static_cast<uint8_t>(rcode) > 15 && !info.has_edns));
    return;
  }
  const std::span<const uint8_t> reply(out.data(), length);
  MessageShape shape;
  FUZZ_CHECK(WalkMessage(reply, &shape));
  FUZZ_CHECK(dns::header::IsResponse(reply.data()));
  FUZZ_CHECK(std::memcmp(reply.data(), query.data(), 2) == 0);  // ID
  FUZZ_CHECK(shape.opt_records == (info.has_edns ? 1u : 0u));     // RFC 6891 §7
  if (!question.empty()) {
    // A valid question is echoed byte for byte (0x20 case included).
    FUZZ_CHECK(dns::header::QdCount(reply.data()) == 1);
    dns::ResponseInfo response;
    FUZZ_CHECK(dns::ParseResponse(reply, response));
    FUZZ_CHECK(response.question_length == question.size());
    FUZZ_CHECK(std::memcmp(reply.data() + dns::kHeaderSize, question.data(), question.size()) == 0);
  }
}

// The upstream form of the valid query `query` under `options`.
void CheckUpstreamQuery(std::span<const uint8_t> query, const dns::QueryInfo& info,
                        const dns::UpstreamQueryOptions& options) {
  // QuerySlot::query: frontend::kMaxQuerySize + dns::kUpstreamQueryGrowth.
  std::vector<uint8_t> out(dotproxy::frontend::kMaxQuerySize + dns::kUpstreamQueryGrowth);
  const size_t length = dns::BuildUpstreamQuery(query, info, options, out);
  // A query ParseQuery accepted always fits a slot: 0 would answer a valid
  // query FORMERR.
  FUZZ_CHECK(length != 0);
  FUZZ_CHECK(length <= query.size() + dns::kUpstreamQueryGrowth);
  const std::span<const uint8_t> upstream(out.data(), length);

  dns::QueryInfo sent;
  FUZZ_CHECK(dns::ParseQuery(upstream, sent) == dns::QueryParse::kOk);
  FUZZ_CHECK(sent.id == info.id);
  FUZZ_CHECK(sent.question_length == info.question_length);
  FUZZ_CHECK(std::memcmp(upstream.data() + dns::kHeaderSize, query.data() + dns::kHeaderSize,
                         info.question_length) == 0);
  FUZZ_CHECK(std::memcmp(upstream.data() + 2, query.data() + 2, 2) == 0);  // flags
  const bool want_opt = info.has_edns || options.pad || options.request_keepalive;
  FUZZ_CHECK(sent.has_edns == want_opt);
  if (info.has_edns) {
    FUZZ_CHECK(sent.edns_udp_size == info.edns_udp_size);
    FUZZ_CHECK(sent.dnssec_ok == info.dnssec_ok);
  }
  if (options.pad) FUZZ_CHECK(length % dns::kQueryPaddingBlock == 0);  // RFC 8467 §4.1
  if (sent.has_edns) {
    unsigned keepalive = 0, padding = 0, subnet = 0;
    FUZZ_CHECK(ForEachOption(upstream, sent.opt_offset,
                             [&](uint16_t code, const uint8_t* data, size_t option_length) {
                               if (code == dns::kOptionTcpKeepalive) {
                                 ++keepalive;
                                 FUZZ_CHECK(option_length == 0);  // RFC 7828 §3.2.1
                               }
                               if (code == dns::kOptionPadding) {
                                 ++padding;
                                 for (size_t i = 0; i < option_length; ++i) FUZZ_CHECK(data[i] == 0);
                               }
                               if (code == dns::kOptionClientSubnet) ++subnet;
                             }));
    FUZZ_CHECK(keepalive == (options.request_keepalive ? 1u : 0u));
    FUZZ_CHECK(padding <= 1 && (padding == 1) == options.pad);
    if (options.strip_client_subnet) FUZZ_CHECK(subnet == 0);  // RFC 7871 privacy
  }

  // The cache key of a slot is made from this stored query (MakeSlotKey):
  // it must equal the key of the client's query.
  dotproxy::cache::CacheKey from_client, from_slot;
  dotproxy::cache::MakeKey(query.data(), info.question_length, info.has_edns, info.dnssec_ok,
                           from_client);
  dotproxy::cache::MakeKey(upstream.data(), info.question_length, info.has_edns, info.dnssec_ok,
                           from_slot);
  FUZZ_CHECK(from_client.hash == from_slot.hash && from_client.flags == from_slot.flags);

  // Forwarder::Fail: SERVFAIL from the slot's query with a rebuilt info.
  dns::QueryInfo rebuilt;
  rebuilt.id = info.id;
  rebuilt.question_length = info.question_length;
  rebuilt.has_edns = info.has_edns;
  rebuilt.dnssec_ok = info.dnssec_ok;
  CheckErrorReply(upstream, rebuilt, dns::Rcode::kServFail,
                  query.subspan(dns::kHeaderSize, info.question_length));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The datagram in a heap block of exactly its size: ASan sees a read past it.
  const std::vector<uint8_t> wire(data, data + size);
  dns::QueryInfo info;
  const dns::QueryParse verdict = dns::ParseQuery(wire, info);
  if (verdict == dns::QueryParse::kDrop) {
    FUZZ_CHECK(size < dns::kHeaderSize || dns::header::IsResponse(wire.data()));
    return 0;
  }
  FUZZ_CHECK(size >= dns::kHeaderSize && !dns::header::IsResponse(wire.data()));
  FUZZ_CHECK(info.id == dns::header::Id(wire.data()));
  if (info.question_length != 0) {
    FUZZ_CHECK(info.question_length == info.qname_length + 4);
    FUZZ_CHECK(dns::kHeaderSize + info.question_length <= size);
  }
  if (info.has_edns) {
    FUZZ_CHECK(info.opt_offset >= dns::kHeaderSize && size_t{info.opt_offset} + 11 <= size);
    FUZZ_CHECK(info.udp_response_limit >= dns::kClassicUdpLimit);
  } else {
    FUZZ_CHECK(info.udp_response_limit == dns::kClassicUdpLimit);
  }
  // A question is echoed when there is exactly one and it parses.
  const bool echoable = dns::header::QdCount(wire.data()) == 1 && info.question_length != 0;
  const std::span<const uint8_t> question =
      echoable ? std::span<const uint8_t>(wire).subspan(dns::kHeaderSize, info.question_length)
               : std::span<const uint8_t>();

  switch (verdict) {
    case dns::QueryParse::kFormErr:
      CheckErrorReply(wire, info, dns::Rcode::kFormErr, question);
      break;
    case dns::QueryParse::kNotImp:
      FUZZ_CHECK(dns::header::Opcode(wire.data()) != 0);
      CheckErrorReply(wire, info, dns::Rcode::kNotImp, question);
      break;
    case dns::QueryParse::kBadVers:
      FUZZ_CHECK(info.has_edns && info.edns_version > 0);
      CheckErrorReply(wire, info, dns::Rcode::kBadVers, question);
      break;
    case dns::QueryParse::kOk: {
      FUZZ_CHECK(info.question_length != 0 && dns::header::QdCount(wire.data()) == 1);
      FUZZ_CHECK(dns::header::Opcode(wire.data()) == 0);
      FUZZ_CHECK(WalkMessage(wire));
      if (size > dotproxy::frontend::kMaxQuerySize) {
        CheckErrorReply(wire, info, dns::Rcode::kRefused, question);
        break;
      }
      for (int bits = 0; bits < 8; ++bits) {
        dns::UpstreamQueryOptions options;
        options.pad = bits & 1;
        options.strip_client_subnet = bits & 2;
        options.request_keepalive = bits & 4;
        CheckUpstreamQuery(wire, info, options);
      }
      CheckErrorReply(wire, info, dns::Rcode::kServFail, question);
      break;
    }
    case dns::QueryParse::kDrop:
      break;
  }
  if (verdict != dns::QueryParse::kOk && info.question_length != 0) {
    // BuildUpstreamQuery promises never to read past `query`, whatever `info`.
    std::vector<uint8_t> out(dotproxy::frontend::kMaxQuerySize + dns::kUpstreamQueryGrowth);
    (void)dns::BuildUpstreamQuery(wire, info, dns::UpstreamQueryOptions{}, out);
  }
  return 0;
}
