#include "dotproxy/control/log.h"

#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace dotproxy::control {
namespace {

std::atomic<int> g_min_severity{static_cast<int>(Severity::kInfo)};
std::atomic<int> g_format{static_cast<int>(LogFormat::kText)};
std::atomic<bool> g_journal{false};

const char* LevelName(Severity severity) {
  switch (severity) {
    case Severity::kDebug: return "debug";
    case Severity::kInfo: return "info";
    case Severity::kWarning: return "warning";
    case Severity::kError: return "error";
  }
  return "info";
}

// syslog(3) priorities, as sd-daemon.h's SD_DEBUG .. SD_ERR.
int JournalPriority(Severity severity) {
  switch (severity) {
    case Severity::kDebug: return 7;
    case Severity::kInfo: return 6;
    case Severity::kWarning: return 4;
    case Severity::kError: return 3;
  }
  return 6;
}

// JSON string contents (RFC 8259 §7): quotes, backslashes and control
// characters escaped.
void AppendJsonEscaped(std::string& out, std::string_view text) {
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
}

// systemd sets JOURNAL_STREAM=DEV:INODE for the stream it connected to our
// stderr; it only counts if stderr still is that stream.
bool StderrIsJournal() {
  const char* value = std::getenv("JOURNAL_STREAM");
  if (value == nullptr) return false;
  unsigned long long device = 0, inode = 0;
  if (std::sscanf(value, "%llu:%llu", &device, &inode) != 2) return false;
  struct stat st {};
  if (fstat(STDERR_FILENO, &st) != 0) return false;
  return st.st_dev == device && st.st_ino == inode;
}

}  // namespace

void ConfigureLogging(std::string_view level, std::string_view format) {
  for (Severity s : {Severity::kDebug, Severity::kInfo, Severity::kWarning, Severity::kError}) {
    if (level == LevelName(s)) g_min_severity.store(static_cast<int>(s));
  }
  if (format == "json") g_format.store(static_cast<int>(LogFormat::kJson));
  if (format == "text") g_format.store(static_cast<int>(LogFormat::kText));
  g_journal.store(StderrIsJournal());
}

std::string FormatLogLine(Severity severity, std::string_view text, LogFormat format,
                          bool journal, std::string_view time) {
  std::string line;
  if (journal) absl::StrAppend(&line, "<", JournalPriority(severity), ">");
  const absl::string_view message(text.data(), text.size());
  if (format == LogFormat::kJson) {
    line += "{";
    if (!journal) absl::StrAppend(&line, "\"time\":\"", absl::string_view(time.data(), time.size()), "\",");
    absl::StrAppend(&line, "\"level\":\"", LevelName(severity), "\",\"message\":\"");
    AppendJsonEscaped(line, text);
    line += "\"}";
  } else if (journal) {
    absl::StrAppend(&line, LevelName(severity), ": ", message);
  } else {
    absl::StrAppend(&line, absl::string_view(time.data(), time.size()), " dotproxy ",
                    LevelName(severity), ": ", message);
  }
  return line;
}

void WriteLogLine(Severity severity, const std::string& text) {
  if (static_cast<int>(severity) < g_min_severity.load(std::memory_order_relaxed)) return;
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  tm parts;
  gmtime_r(&now.tv_sec, &parts);
  const std::string time = absl::StrFormat(
      "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", parts.tm_year + 1900, parts.tm_mon + 1,
      parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec,
      static_cast<int>(now.tv_nsec / 1000000));
  const std::string line = FormatLogLine(
      severity, text, static_cast<LogFormat>(g_format.load(std::memory_order_relaxed)),
      g_journal.load(std::memory_order_relaxed), time);
  absl::FPrintF(stderr, "%s\n", line);
}

}  // namespace dotproxy::control
