#pragma once
// (Not "strings.h": meson puts this folder on the include path, where that
// name would shadow the C library's <strings.h>.)
// Text helpers shared by the flag, environment and file parsers (private to
// src/config). Control plane only: these allocate freely.
//
// Every value quoted in an error goes through Excerpt(), so an operator's
// 10 MB value or a stray control character cannot turn a one-line error into
// a flood or a terminal escape.

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace dotproxy::config {

// abseil still has its own string_view type in Debian 12's version.
inline absl::string_view Sv(std::string_view text) { return {text.data(), text.size()}; }

// Limits on text values, checked before a value reaches a parser that would
// quote it whole (io::ParseSocketAddress, frontend::ParseCidr) or a C API.
inline constexpr size_t kMaxAddressBytes = 64;  // "[v6]:port" is at most 53
inline constexpr size_t kMaxPathBytes = 4095;   // PATH_MAX less the NUL
inline constexpr size_t kMaxUpstreamSpecBytes = 4096;  // address, name, pins

// Longest quoted excerpt of a value in an error message.
inline constexpr size_t kExcerptBytes = 64;

// `text` with control characters, DEL, quotes, backslashes and non-ASCII
// bytes escaped (\n, \t, \xNN). Non-ASCII is escaped too: a C1 control is a
// valid UTF-8 sequence.
inline std::string EscapeForMessage(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    switch (c) {
      case '\n': out += "\\n"; continue;
      case '\t': out += "\\t"; continue;
      case '\r': out += "\\r"; continue;
      case '\\': out += "\\\\"; continue;
      case '\'': out += "\\'"; continue;
      default: break;
    }
    if (byte < 0x20 || byte >= 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    } else {
      out += c;
    }
  }
  return out;
}

// The first `max_bytes` of `text`, escaped, then "…(N bytes)" when cut.
// Callers put it in quotes.
inline std::string Excerpt(std::string_view text, size_t max_bytes = kExcerptBytes) {
  if (text.size() <= max_bytes) return EscapeForMessage(text);
  return absl::StrCat(EscapeForMessage(text.substr(0, max_bytes)), "…(", text.size(), " bytes)");
}

// Refuses text the later stages would mangle: more than `max_bytes`, or a
// control character (a NUL would cut the value short in any C API it reaches,
// e.g. SNI). The message quotes an excerpt; callers prefix what it was.
inline absl::Status CheckText(std::string_view text, size_t max_bytes) {
  if (text.size() > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", Excerpt(text), "' is longer than ", max_bytes, " bytes"));
  }
  for (size_t i = 0; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte < 0x20 || byte == 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat("'", Excerpt(text), "' contains control character ",
                                                     "0x", absl::Hex(byte, absl::kZeroPad2), " at byte ", i));
    }
  }
  return absl::OkStatus();
}

}  // namespace dotproxy::config
