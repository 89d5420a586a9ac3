#include "dotproxy/upstream/id_table.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <vector>

namespace dotproxy::upstream {
namespace {

TEST(FastRngTest, TwoGeneratorsDiffer) {
  // Each generator is seeded from the kernel, so two shards (or two
  // connections) do not walk the same ID sequence.
  FastRng a;
  FastRng b;
  int equal = 0;
  for (int i = 0; i < 64; ++i) equal += a.Next() == b.Next();
  EXPECT_LT(equal, 4);
}

TEST(IdTableTest, StartsEmpty) {
  IdTable table;
  EXPECT_EQ(table.size(), 0u);
  for (uint32_t id = 0; id < IdTable::kIds; id += 4099) {
    EXPECT_EQ(table.Lookup(static_cast<uint16_t>(id)), IdTable::kFree);
  }
}

TEST(IdTableTest, LookupReturnsTheBoundSlot) {
  IdTable table;
  FastRng rng;
  uint16_t id = 0;
  ASSERT_TRUE(table.Insert(42, rng, id));
  EXPECT_EQ(table.Lookup(id), 42u);
  EXPECT_EQ(table.size(), 1u);
}

TEST(IdTableTest, IdsAreUniqueWhileBound) {
  IdTable table;
  FastRng rng;
  std::set<uint16_t> seen;
  std::vector<uint16_t> ids;
  for (uint32_t slot = 0; slot < 5000; ++slot) {
    uint16_t id = 0;
    ASSERT_TRUE(table.Insert(slot, rng, id));
    EXPECT_TRUE(seen.insert(id).second) << "ID " << id << " handed out twice";
    ids.push_back(id);
  }
  EXPECT_EQ(table.size(), 5000u);
  for (uint32_t slot = 0; slot < ids.size(); ++slot) {
    EXPECT_EQ(table.Lookup(ids[slot]), slot);
  }
}

TEST(IdTableTest, EraseFreesTheId) {
  IdTable table;
  FastRng rng;
  uint16_t first = 0;
  uint16_t second = 0;
  ASSERT_TRUE(table.Insert(1, rng, first));
  ASSERT_TRUE(table.Insert(2, rng, second));
  table.Erase(first);
  EXPECT_EQ(table.Lookup(first), IdTable::kFree);
  EXPECT_EQ(table.Lookup(second), 2u);
  EXPECT_EQ(table.size(), 1u);
}

TEST(IdTableTest, EraseOfAFreeIdChangesNothing) {
  // A late or forged response may name an ID that is already free.
  IdTable table;
  FastRng rng;
  uint16_t id = 0;
  ASSERT_TRUE(table.Insert(7, rng, id));
  table.Erase(id);
  table.Erase(id);
  table.Erase(static_cast<uint16_t>(id + 1));
  EXPECT_EQ(table.size(), 0u);
}

TEST(IdTableTest, FillsAllIdsThenRefuses) {
  IdTable table;
  FastRng rng;
  std::vector<bool> used(IdTable::kIds, false);
  for (uint32_t slot = 0; slot < IdTable::kIds; ++slot) {
    uint16_t id = 0;
    ASSERT_TRUE(table.Insert(slot, rng, id)) << "insert " << slot;
    ASSERT_FALSE(used[id]) << "ID " << id << " handed out twice";
    used[id] = true;
  }
  EXPECT_EQ(table.size(), IdTable::kIds);

  uint16_t id = 0xabcd;
  EXPECT_FALSE(table.Insert(99, rng, id));
  EXPECT_EQ(table.size(), IdTable::kIds);

  // Freeing one makes exactly that one available again.
  table.Erase(0x1234);
  ASSERT_TRUE(table.Insert(99, rng, id));
  EXPECT_EQ(id, 0x1234);
  EXPECT_EQ(table.Lookup(0x1234), 99u);
}

TEST(IdTableTest, IdsAreSpreadOverTheWholeRange) {
  // Sequential or clustered IDs would let an observer (or a forger) guess
  // live ones; random ones cover both bytes.
  IdTable table;
  FastRng rng;
  std::set<uint8_t> high_bytes;
  std::set<uint8_t> low_bytes;
  for (uint32_t slot = 0; slot < 1000; ++slot) {
    uint16_t id = 0;
    ASSERT_TRUE(table.Insert(slot, rng, id));
    high_bytes.insert(static_cast<uint8_t>(id >> 8));
    low_bytes.insert(static_cast<uint8_t>(id));
  }
  // 1000 uniform draws over 256 values hit ~252 of them; 200 leaves a wide
  // margin while still failing for a counter or a narrow range.
  EXPECT_GT(high_bytes.size(), 200u);
  EXPECT_GT(low_bytes.size(), 200u);
}

TEST(IdTableTest, ClearFreesEverything) {
  IdTable table;
  FastRng rng;
  std::vector<uint16_t> ids;
  for (uint32_t slot = 0; slot < 100; ++slot) {
    uint16_t id = 0;
    ASSERT_TRUE(table.Insert(slot, rng, id));
    ids.push_back(id);
  }
  table.Clear();
  EXPECT_EQ(table.size(), 0u);
  for (uint16_t id : ids) EXPECT_EQ(table.Lookup(id), IdTable::kFree);
  uint16_t id = 0;
  EXPECT_TRUE(table.Insert(5, rng, id));
  EXPECT_EQ(table.size(), 1u);
}

}  // namespace
}  // namespace dotproxy::upstream
