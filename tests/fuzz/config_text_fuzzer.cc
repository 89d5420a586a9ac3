// Fuzz target "config_text": the parsers of single values, fed the same
// text: the upstream spec (config::ParseUpstream, IP[:PORT][#NAME][^PIN...],
// https://IP[:PORT][/PATH]..., udp://, tcp://),
// a SPKI pin (ParsePin), a CIDR (frontend::ParseCidr), a socket address
// (io::ParseSocketAddress), and every option row's flag syntax
// (Option::SetFromText: numbers, choices, paths, lists). Accepted values
// must be what they claim: a pin is 32 bytes that print back to the same
// base64, an address prints to text that parses back to itself.

#include <cstring>
#include <string>
#include <string_view>

#include "absl/strings/escaping.h"
#include "dotproxy/config/config.h"
#include "dotproxy/frontend/acl.h"
#include "dotproxy/io/socket.h"
#include "tests/fuzz/fuzz_check.h"

namespace config = dotproxy::config;
namespace io = dotproxy::io;

namespace {

bool SameAddress(const io::SocketAddress& a, const io::SocketAddress& b) {
  return a.length == b.length && std::memcmp(&a.storage, &b.storage, a.length) == 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  if (auto upstream = config::ParseUpstream(text); upstream.ok()) {
    // DoT and DoH upstreams are authenticated by a name; plain ones
    // (udp://, tcp://) carry none, nor pins. A DoH path is a bounded path.
    if (config::IsEncrypted(upstream->transport)) {
      FUZZ_CHECK(!upstream->peer.auth_name.empty());
      if (upstream->transport == config::Transport::kHttps) {
        FUZZ_CHECK(!upstream->doh_path.empty() && upstream->doh_path[0] == '/');
        FUZZ_CHECK(upstream->doh_path.size() <= config::kMaxDohPathBytes);
        FUZZ_CHECK(upstream->doh_path.find_first_of("?#{} ") == std::string::npos);
      }
    } else {
      FUZZ_CHECK(upstream->peer.auth_name.empty() && upstream->peer.pins.empty());
    }
    FUZZ_CHECK(upstream->peer.auth_name.size() <= config::kMaxAuthNameBytes);
    FUZZ_CHECK(upstream->spec.find('^') == std::string::npos);  // logs carry no pins
    FUZZ_CHECK(upstream->address.family() == AF_INET || upstream->address.family() == AF_INET6);
  }

  if (auto pin = config::ParsePin(text); pin.ok()) {
    const std::string again = absl::Base64Escape(
        absl::string_view(reinterpret_cast<const char*>(pin->data()), pin->size()));
    auto reparsed = config::ParsePin(again);
    FUZZ_CHECK(reparsed.ok() && *reparsed == *pin);
  }

  if (auto cidr = dotproxy::frontend::ParseCidr(text); cidr.ok()) {
    FUZZ_CHECK(cidr->family == AF_INET || cidr->family == AF_INET6);
    FUZZ_CHECK(cidr->prefix_length >= 0 &&
               cidr->prefix_length <= (cidr->family == AF_INET ? 32 : 128));
  }

  for (const int default_port : {853, -1}) {
    if (auto address = io::ParseSocketAddress(text, default_port); address.ok()) {
      auto again = io::ParseSocketAddress(address->ToString(), -1);
      FUZZ_CHECK(again.ok() && SameAddress(*again, *address));
    }
  }

  // Flag and environment syntax of every row that takes a value.
  for (const config::Option& option : config::Options()) {
    switch (option.kind) {
      case config::OptionKind::kSwitch:
      case config::OptionKind::kConfigFile:
      case config::OptionKind::kHelp:
      case config::OptionKind::kVersion:
        continue;
      default:
        break;
    }
    config::Config parsed;
    (void)option.SetFromText(parsed, text);
  }
  return 0;
}
