// Fuzz target "answer_edns": the EDNS rewriting of upstream answers.
// RewriteAnswerOpt (transport options removed, or the whole OPT for a
// client without EDNS; the upstream's keepalive reported) and
// TruncateResponse at a client's UDP limit, on any message ParseResponse
// accepts (their precondition), well-formed or not past the question.
//
// Input: 3 control bytes, then the answer.
//   [0] bit 0: the client sent EDNS; [1,2] the UDP limit (big-endian,
//   raised to 512 as QueryInfo::udp_response_limit is).

#include <algorithm>
#include <cstring>
#include <span>
#include <vector>

#include "dotproxy/dns/edns.h"
#include "dotproxy/dns/message.h"
#include "tests/fuzz/fuzz_check.h"

namespace dns = dotproxy::dns;
using dotproxy::fuzz::ForEachOption;
using dotproxy::fuzz::MessageShape;
using dotproxy::fuzz::WalkMessage;

namespace {

constexpr size_t kControlBytes = 3;

struct Option {
  uint16_t code;
  std::vector<uint8_t> data;
  bool operator==(const Option&) const = default;
};

std::vector<Option> Options(std::span<const uint8_t> wire, size_t opt, bool* well_formed) {
  std::vector<Option> options;
  *well_formed = ForEachOption(wire, opt, [&](uint16_t code, const uint8_t* data, size_t length) {
    options.push_back({code, std::vector<uint8_t>(data, data + length)});
  });
  return options;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kControlBytes) return 0;
  const bool client_edns = data[0] & 1;
  const size_t limit = std::max<size_t>(dns::kClassicUdpLimit, dns::ReadU16(data + 1));
  std::vector<uint8_t> answer(data + kControlBytes, data + size);
  dns::ResponseInfo info;
  if (!dns::ParseResponse(answer, info)) return 0;
  const std::vector<uint8_t> original = answer;

  MessageShape before;
  const bool walkable = WalkMessage(original, &before);
  bool options_well_formed = false;
  std::vector<Option> options_before;
  if (walkable && before.opt_records > 0) {
    options_before = Options(original, before.first_opt, &options_well_formed);
  }

  int keepalive = -1;
  const size_t length = dns::RewriteAnswerOpt(answer, answer.size(), client_edns, &keepalive);
  FUZZ_CHECK(length <= answer.size());
  const std::span<const uint8_t> rewritten(answer.data(), length);
  dns::ResponseInfo after_info;
  FUZZ_CHECK(dns::ParseResponse(rewritten, after_info));
  FUZZ_CHECK(after_info.id == info.id && after_info.question_length == info.question_length);
  // Header (but ARCOUNT) and question untouched.
  FUZZ_CHECK(std::memcmp(rewritten.data(), original.data(), 10) == 0);
  FUZZ_CHECK(std::memcmp(rewritten.data() + dns::kHeaderSize, original.data() + dns::kHeaderSize,
                         info.question_length) == 0);

  if (walkable) {
    MessageShape after;
    FUZZ_CHECK(WalkMessage(rewritten, &after));  // still one whole message
    if (before.opt_records == 1) {
      if (!client_edns) {
        FUZZ_CHECK(after.opt_records == 0);
        FUZZ_CHECK(dns::header::ArCount(rewritten.data()) + 1 == dns::header::ArCount(original.data()));
      } else if (options_well_formed) {
        FUZZ_CHECK(after.opt_records == 1 && after.first_opt == before.first_opt);
        bool ok = false;
        const std::vector<Option> options_after = Options(rewritten, after.first_opt, &ok);
        FUZZ_CHECK(ok);
        // The upstream's options but the transport ones, in order.
        std::vector<Option> expected;
        int expected_keepalive = -1;
        for (const Option& option : options_before) {
          if (option.code == dns::kOptionTcpKeepalive && option.data.size() == 2) {
            expected_keepalive = dns::ReadU16(option.data.data());
          }
          if (option.code != dns::kOptionTcpKeepalive && option.code != dns::kOptionPadding) {
            expected.push_back(option);
          }
        }
        FUZZ_CHECK(options_after == expected);
        FUZZ_CHECK(keepalive == expected_keepalive);
      }
    } else if (before.opt_records == 0) {
      FUZZ_CHECK(length == original.size());
      FUZZ_CHECK(std::memcmp(rewritten.data(), original.data(), length) == 0);
    }
  }

  // Forwarder::OnAnswer cuts a UDP answer only when it is over the limit.
  if (length > limit) {
    const size_t cut = dns::TruncateResponse(answer, length, limit);
    const std::span<const uint8_t> reply(answer.data(), cut);
    FUZZ_CHECK(cut <= limit);
    FUZZ_CHECK(dns::header::IsTruncated(reply.data()));
    MessageShape shape;
    FUZZ_CHECK(WalkMessage(reply, &shape));
    FUZZ_CHECK(dns::header::ArCount(reply.data()) == shape.opt_records && shape.opt_records <= 1);
    dns::ResponseInfo cut_info;
    FUZZ_CHECK(dns::ParseResponse(reply, cut_info) && cut_info.id == info.id);
  }
  return 0;
}
