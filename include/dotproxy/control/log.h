#pragma once
// A thin stderr logger (abseil 20220623 has no absl/log). Off the hot path:
// only state changes and errors are logged, never per query. Thread-safe:
// each line is one fprintf, which stdio locks.

#include <cstdio>

#include "absl/strings/str_format.h"

namespace dotproxy::control {

enum class Severity { kInfo, kWarning, kError };

void WriteLogLine(Severity severity, const std::string& text);

template <typename... Args>
void Log(Severity severity, const absl::FormatSpec<Args...>& format, const Args&... args) {
  WriteLogLine(severity, absl::StrFormat(format, args...));
}

}  // namespace dotproxy::control
