#pragma once
// A thin stderr logger (abseil 20220623 has no absl/log). Off the hot path:
// only state changes and errors are logged, never per query. Thread-safe:
// each line is one fprintf, which stdio locks. Configured once by main
// before any thread starts (ConfigureLogging), read-only afterwards.
//
// Formats: text ("2026-12-01T09:00:00.000Z dotproxy info: ..."), json (one
// object per line: {"time":..., "level":..., "message":...}). Under systemd
// (JOURNAL_STREAM names our stderr) each line starts with the journal's
// priority ("<6>") and drops the timestamp, which the journal adds itself.

#include <cstdio>
#include <string>
#include <string_view>

#include "absl/strings/str_format.h"

namespace dotproxy::control {

enum class Severity { kDebug, kInfo, kWarning, kError };
enum class LogFormat { kText, kJson };

// `level`: "debug", "info", "warning" or "error"; `format`: "text" or
// "json". Unknown words keep the defaults (info, text): the config layer
// has validated them. Detects the journal from JOURNAL_STREAM.
void ConfigureLogging(std::string_view level, std::string_view format);

// One line as it would be written (without the newline). `journal` selects
// the priority prefix; `time` is the CLOCK_REALTIME text (ignored under the
// journal). Exposed for tests.
std::string FormatLogLine(Severity severity, std::string_view text, LogFormat format,
                          bool journal, std::string_view time);

void WriteLogLine(Severity severity, const std::string& text);

template <typename... Args>
void Log(Severity severity, const absl::FormatSpec<Args...>& format, const Args&... args) {
  WriteLogLine(severity, absl::StrFormat(format, args...));
}

}  // namespace dotproxy::control
