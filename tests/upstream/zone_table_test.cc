// ZoneTable: longest label-wise suffix, case-insensitive, on wire names.

#include "dotproxy/upstream/zone_table.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "bench/common/wire.h"

namespace dotproxy::upstream {
namespace {

std::vector<uint8_t> Wire(std::string_view text) {
  std::vector<uint8_t> wire;
  bench::PutName(wire, text);
  return wire;
}

uint32_t Find(const ZoneTable& table, std::string_view name) { return table.Find(Wire(name)); }

TEST(ZoneTableTest, EmptyTableSendsEverythingToTheRoot) {
  ZoneTable table;
  EXPECT_EQ(Find(table, "www.example.com"), ZoneTable::kRootGroup);
  EXPECT_EQ(Find(table, ""), ZoneTable::kRootGroup);
}

TEST(ZoneTableTest, LongestMatchingSuffixWins) {
  ZoneTable table;
  table.Add("example", 1);
  table.Add("corp.example", 2);
  table.Add("db.corp.example", 3);
  EXPECT_EQ(Find(table, "example"), 1u);
  EXPECT_EQ(Find(table, "www.example"), 1u);
  EXPECT_EQ(Find(table, "corp.example"), 2u);
  EXPECT_EQ(Find(table, "a.b.corp.example"), 2u);
  EXPECT_EQ(Find(table, "db.corp.example"), 3u);
  EXPECT_EQ(Find(table, "x.db.corp.example"), 3u);
  EXPECT_EQ(Find(table, "com"), ZoneTable::kRootGroup);
  EXPECT_EQ(Find(table, ""), ZoneTable::kRootGroup);  // the root itself
  EXPECT_EQ(table.size(), 3u);
}

TEST(ZoneTableTest, MatchesWholeLabelsOnly) {
  ZoneTable table;
  table.Add("example.com", 1);
  EXPECT_EQ(Find(table, "badexample.com"), ZoneTable::kRootGroup);
  EXPECT_EQ(Find(table, "www.badexample.com"), ZoneTable::kRootGroup);
  EXPECT_EQ(Find(table, "example.com.evil"), ZoneTable::kRootGroup);
  EXPECT_EQ(Find(table, "xample.com"), ZoneTable::kRootGroup);
  EXPECT_EQ(Find(table, "a.example.com"), 1u);
}

TEST(ZoneTableTest, IgnoresLetterCase) {
  ZoneTable table;
  table.Add("Corp.EXAMPLE", 4);
  EXPECT_EQ(Find(table, "corp.example"), 4u);
  EXPECT_EQ(Find(table, "WwW.CoRp.ExAmPlE"), 4u);
  // Only ASCII letters fold: '[' (0x5b) is not '{' (0x7b).
  table.Add("a[b.test", 5);
  EXPECT_EQ(Find(table, "A[B.test"), 5u);
  EXPECT_EQ(Find(table, "a{b.test"), ZoneTable::kRootGroup);
}

TEST(ZoneTableTest, NamesWithManyLabels) {
  ZoneTable table;
  std::string deep;
  for (int i = 0; i < 100; ++i) deep += "a.";
  deep += "deep";
  table.Add("deep", 1);
  table.Add(deep, 2);
  EXPECT_EQ(Find(table, deep), 2u);
  EXPECT_EQ(Find(table, "b." + deep), 2u);
  EXPECT_EQ(Find(table, deep.substr(2)), 1u);
  // 125 labels in 254 bytes: about the most a name holds (255).
  std::string most;
  for (int i = 0; i < 124; ++i) most += "a.";
  most += "deep";
  EXPECT_EQ(Find(table, most), 2u);
  // Past 255 bytes it is no name: the root group.
  EXPECT_EQ(Find(table, "a.a." + most), ZoneTable::kRootGroup);
}

TEST(ZoneTableTest, MalformedOrTruncatedNamesGoToTheRoot) {
  ZoneTable table;
  table.Add("example", 1);
  std::vector<uint8_t> wire = Wire("www.example");
  wire.pop_back();  // no root label
  EXPECT_EQ(table.Find(wire), ZoneTable::kRootGroup);
  const uint8_t pointer[] = {3, 'w', 'w', 'w', 0xc0, 12};
  EXPECT_EQ(table.Find(pointer), ZoneTable::kRootGroup);
  EXPECT_EQ(table.Find({}), ZoneTable::kRootGroup);
  // A name followed by the rest of a question is fine.
  wire = Wire("www.example");
  wire.insert(wire.end(), {0, 1, 0, 1});
  EXPECT_EQ(table.Find(wire), 1u);
}

TEST(ZoneTableTest, ManyZonesAndAFirstGroupThatStays) {
  ZoneTable table;
  for (int i = 0; i < 5000; ++i) table.Add("zone" + std::to_string(i) + ".internal", 1 + i % 7);
  table.Add("zone0.internal", 99);  // added twice: the first group stays
  EXPECT_EQ(table.size(), 5000u);
  for (int i = 0; i < 5000; i += 97) {
    EXPECT_EQ(Find(table, "host.zone" + std::to_string(i) + ".internal"), 1u + i % 7);
  }
  EXPECT_EQ(Find(table, "host.zone5000.internal"), ZoneTable::kRootGroup);
  EXPECT_EQ(Find(table, "internal"), ZoneTable::kRootGroup);
}

}  // namespace
}  // namespace dotproxy::upstream
