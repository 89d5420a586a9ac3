#include "dotproxy/control/log.h"

#include <gtest/gtest.h>

namespace dotproxy::control {
namespace {

constexpr char kTime[] = "2026-12-01T09:00:00.000Z";

TEST(FormatLogLineTest, TextCarriesTimeNameLevelAndMessage) {
  EXPECT_EQ(FormatLogLine(Severity::kWarning, "upstream down", LogFormat::kText, false, kTime),
            "2026-12-01T09:00:00.000Z dotproxy warning: upstream down");
}

TEST(FormatLogLineTest, JsonEscapesQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(FormatLogLine(Severity::kInfo, "a \"b\" \\ c\nd\x01", LogFormat::kJson, false, kTime),
            "{\"time\":\"2026-12-01T09:00:00.000Z\",\"level\":\"info\","
            "\"message\":\"a \\\"b\\\" \\\\ c\\nd\\u0001\"}");
}

TEST(FormatLogLineTest, JournalLinesStartWithThePriorityAndDropTheTime) {
  EXPECT_EQ(FormatLogLine(Severity::kInfo, "x", LogFormat::kText, true, kTime), "<6>info: x");
  EXPECT_EQ(FormatLogLine(Severity::kWarning, "x", LogFormat::kText, true, kTime), "<4>warning: x");
  EXPECT_EQ(FormatLogLine(Severity::kError, "x", LogFormat::kText, true, kTime), "<3>error: x");
  EXPECT_EQ(FormatLogLine(Severity::kDebug, "x", LogFormat::kJson, true, kTime),
            "<7>{\"level\":\"debug\",\"message\":\"x\"}");
}

}  // namespace
}  // namespace dotproxy::control
