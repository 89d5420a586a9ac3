// Fuzz target "answer": an upstream's answer through Forwarder::OnAnswer
// and the cache. ParseResponse (as UpstreamPool::OnMessage), the question
// check against the query the slot asked (QuestionsMatch, 0x20 case),
// RewriteAnswerOpt, PacketCache::Insert, a later hit (Find, then Serve with
// the client's ID, question bytes and aged or stale TTLs, cut to the UDP
// limit), and the uncached path (ID and question restored, TruncateResponse).
//
// Input: 5 control bytes, then the answer.
//   [0] flags: 1 client sent EDNS, 2 DO, 4 UDP (else TCP), 8 RD, 16 CD,
//       32 the reply buffer is exactly the limit, 64 age in kiloseconds
//   [1,2] the client's advertised UDP size (big-endian), [3] age, [4] 0x20
//   case pattern of the client's question.

#include <algorithm>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "dotproxy/cache/packet_cache.h"
#include "dotproxy/dns/edns.h"
#include "dotproxy/dns/message.h"
#include "dotproxy/frontend/client_ref.h"
#include "tests/fuzz/fuzz_check.h"

namespace cache = dotproxy::cache;
namespace dns = dotproxy::dns;
using dotproxy::fuzz::MessageShape;
using dotproxy::fuzz::WalkMessage;

namespace {

constexpr size_t kControlBytes = 5;
constexpr uint32_t kNow = 1000000;

// `question` with the letters whose bit in the repeating `pattern` is set
// flipped to the other case (how a client applies 0x20 randomisation).
std::vector<uint8_t> FlipCase(std::span<const uint8_t> question, uint8_t pattern) {
  std::vector<uint8_t> out(question.begin(), question.end());
  for (size_t i = 0; i + 4 < out.size(); ++i) {
    const uint8_t c = out[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (letter && (pattern >> (i % 8) & 1)) out[i] = c ^ 0x20;
  }
  return out;
}

// A query as the slot stores it: header (ID, RD, CD) and `question`.
std::vector<uint8_t> SlotQuery(uint16_t id, uint8_t flags, std::span<const uint8_t> question) {
  std::vector<uint8_t> query(dns::kHeaderSize + question.size());
  dns::header::SetId(query.data(), id);
  query[2] = (flags & 8) ? 0x01 : 0;  // RD
  query[3] = (flags & 16) ? 0x10 : 0;  // CD
  dns::WriteU16(query.data() + 4, 1);
  std::memcpy(query.data() + dns::kHeaderSize, question.data(), question.size());
  return query;
}

void CheckServedHeader(std::span<const uint8_t> reply, uint16_t id,
                       std::span<const uint8_t> question) {
  dns::ResponseInfo info;
  FUZZ_CHECK(dns::ParseResponse(reply, info));
  FUZZ_CHECK(info.id == id);
  FUZZ_CHECK(info.question_length == question.size());
  FUZZ_CHECK(std::memcmp(reply.data() + dns::kHeaderSize, question.data(), question.size()) == 0);
}

// A UDP answer cut to `limit`: header, question and at most the OPT.
void CheckTruncated(std::span<const uint8_t> reply, size_t limit) {
  FUZZ_CHECK(reply.size() <= limit);
  FUZZ_CHECK(dns::header::IsTruncated(reply.data()));
  MessageShape shape;
  FUZZ_CHECK(WalkMessage(reply, &shape));
  FUZZ_CHECK(dns::header::AnCount(reply.data()) == 0 && dns::header::NsCount(reply.data()) == 0);
  FUZZ_CHECK(dns::header::ArCount(reply.data()) == shape.opt_records && shape.opt_records <= 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kControlBytes) return 0;
  const uint8_t flags = data[0];
  const bool client_edns = flags & 1;
  const bool dnssec_ok = client_edns && (flags & 2);
  const bool udp = flags & 4;
  const bool exact_buffer = flags & 32;
  const uint16_t advertised = dns::ReadU16(data + 1);
  // QueryInfo::udp_response_limit, then the slot's udp_limit.
  const size_t udp_limit = std::min<size_t>(
      client_edns ? std::max<uint16_t>(dns::kClassicUdpLimit, advertised) : dns::kClassicUdpLimit,
      dotproxy::frontend::kMaxUdpReply);
  const uint32_t age = data[3] * ((flags & 64) ? 1000u : 1u);
  const uint8_t case_pattern = data[4];

  // The answer as the connection's framer holds it, in a block of its own size.
  std::vector<uint8_t> answer(data + kControlBytes, data + size);
  dns::ResponseInfo info;
  if (!dns::ParseResponse(answer, info)) return 0;
  FUZZ_CHECK(info.id == dns::header::Id(answer.data()));
  FUZZ_CHECK(dns::kHeaderSize + info.question_length <= answer.size());
  const std::span<const uint8_t> answered(answer.data() + dns::kHeaderSize, info.question_length);

  // What the slot asked: the same question in the client's letter case, with
  // the upstream ID the answer carries (IdTable lookup is tested elsewhere).
  const std::vector<uint8_t> asked = FlipCase(answered, case_pattern);
  const std::vector<uint8_t> slot_query = SlotQuery(info.id, flags, asked);
  FUZZ_CHECK(dns::QuestionsMatch(asked, answered));  // RFC 4343: case-insensitive
  {
    std::vector<uint8_t> other_type = asked;
    other_type[other_type.size() - 3] ^= 1;  // QTYPE low byte
    FUZZ_CHECK(!dns::QuestionsMatch(other_type, answered));
  }
  const uint16_t client_id = static_cast<uint16_t>(info.id ^ 0x5a5a);

  int keepalive = -1;
  const size_t length = dns::RewriteAnswerOpt(answer, answer.size(), client_edns, &keepalive);
  FUZZ_CHECK(length <= answer.size());
  {
    dns::ResponseInfo after;
    FUZZ_CHECK(dns::ParseResponse({answer.data(), length}, after));
    FUZZ_CHECK(after.question_length == info.question_length);
  }

  // Insert, then a hit.
  cache::CacheConfig config;
  config.entries = 2;
  auto created = cache::PacketCache::Create(config);
  FUZZ_CHECK(created.ok());
  cache::PacketCache& packet_cache = **created;
  cache::CacheKey key;
  cache::MakeKey(slot_query.data(), static_cast<uint16_t>(asked.size()), client_edns, dnssec_ok, key);
  uint16_t offsets[cache::kMaxTtlOffsets];
  uint16_t ttl_count = 0;
  const uint32_t ttl = packet_cache.CacheTtl({answer.data(), length}, offsets, ttl_count);
  const bool inserted = packet_cache.Insert(key, {answer.data(), length}, kNow);
  FUZZ_CHECK(!inserted || (ttl != 0 && length <= cache::kMaxCachedAnswer));
  if (inserted) {
    // Another client asks the same question in another letter case.
    const std::vector<uint8_t> client_question = FlipCase(answered, static_cast<uint8_t>(~case_pattern));
    const std::vector<uint8_t> client_query = SlotQuery(client_id, flags, client_question);
    cache::CacheKey client_key;
    cache::MakeKey(client_query.data(), static_cast<uint16_t>(client_question.size()), client_edns,
                   dnssec_ok, client_key);
    FUZZ_CHECK(client_key.hash == key.hash);  // hashing folds case as matching does
    const uint32_t now = kNow + age;
    const cache::Found found = packet_cache.Find(client_key, now);
    const cache::Freshness expected = age < ttl ? cache::Freshness::kFresh
                                      : age < ttl + config.stale_window ? cache::Freshness::kStale
                                                                        : cache::Freshness::kMiss;
    FUZZ_CHECK(found.freshness == expected);
    if (found.freshness != cache::Freshness::kMiss) {
      // Forwarder::ServeFromCache.
      const size_t limit = udp ? udp_limit : cache::kMaxCachedAnswer;
      std::vector<uint8_t> out(exact_buffer ? limit : dotproxy::frontend::kMaxUdpReply);
      const bool stale = found.freshness == cache::Freshness::kStale;
      const size_t served = packet_cache.Serve(found.entry, out, client_id, client_question, limit,
                                               now, stale);
      FUZZ_CHECK(served <= out.size());
      if (out.size() < length) FUZZ_CHECK(served == 0);
      if (served != 0) {
        const std::span<const uint8_t> reply(out.data(), served);
        CheckServedHeader(reply, client_id, client_question);
        if (served < length) {
          CheckTruncated(reply, limit);
        } else {
          FUZZ_CHECK(served == length);
          // Every TTL aged (or the stale TTL), never above the policy's cap.
          uint16_t served_offsets[cache::kMaxTtlOffsets];
          uint16_t served_count = 0;
          (void)packet_cache.CacheTtl(reply, served_offsets, served_count);
          FUZZ_CHECK(served_count == ttl_count);
          for (uint16_t i = 0; i < served_count; ++i) {
            FUZZ_CHECK(served_offsets[i] == offsets[i]);
            const uint32_t value = dns::ReadU32(&reply[served_offsets[i]]);
            FUZZ_CHECK(stale ? value == config.stale_ttl : value <= config.max_ttl);
          }
        }
      }
    }
  }

  // The uncached way back: client ID, client's question bytes, UDP limit.
  dns::header::SetId(answer.data(), client_id);
  std::memcpy(answer.data() + dns::kHeaderSize, asked.data(), asked.size());
  size_t reply_length = length;
  if (udp && reply_length > udp_limit) {
    reply_length = dns::TruncateResponse(answer, reply_length, udp_limit);
    CheckTruncated({answer.data(), reply_length}, udp_limit);
  }
  CheckServedHeader({answer.data(), reply_length}, client_id, asked);
  return 0;
}
