#include "dotproxy/control/log.h"

#include <time.h>

namespace dotproxy::control {

void WriteLogLine(Severity severity, const std::string& text) {
  const char* level = severity == Severity::kInfo      ? "info"
                      : severity == Severity::kWarning ? "warning"
                                                       : "error";
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  tm parts;
  gmtime_r(&now.tv_sec, &parts);
  absl::FPrintF(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ dotproxy %s: %s\n",
                parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday, parts.tm_hour,
                parts.tm_min, parts.tm_sec, static_cast<int>(now.tv_nsec / 1000000), level, text);
}

}  // namespace dotproxy::control
