#include "dotproxy/io/index_list.h"

#include <gtest/gtest.h>

#include <vector>

namespace dotproxy::io {
namespace {

struct Item {
  IndexLinks a;
  IndexLinks b;
};
using ListA = IndexList<Item, &Item::a>;
using ListB = IndexList<Item, &Item::b>;

std::vector<uint32_t> Contents(const ListA& list) {
  std::vector<uint32_t> out;
  for (uint32_t i = list.head(); i != kNoIndex; i = list.Next(i)) out.push_back(i);
  return out;
}

TEST(IndexListTest, KeepsInsertionOrderAndRemovesAnywhere) {
  std::vector<Item> items(5);
  ListA list(&items);
  EXPECT_TRUE(list.empty());
  for (uint32_t i : {3u, 1u, 4u, 0u}) list.PushBack(i);
  EXPECT_EQ(Contents(list), (std::vector<uint32_t>{3, 1, 4, 0}));
  list.Remove(4);  // middle
  list.Remove(3);  // head
  list.Remove(0);  // tail
  EXPECT_EQ(Contents(list), (std::vector<uint32_t>{1}));
  EXPECT_EQ(list.head(), 1u);
  EXPECT_EQ(list.tail(), 1u);
  list.Remove(1);
  EXPECT_TRUE(list.empty());
  EXPECT_EQ(list.tail(), kNoIndex);
}

TEST(IndexListTest, RemoveOfAnElementNotOnTheListChangesNothing) {
  std::vector<Item> items(3);
  ListA list(&items);
  list.PushBack(0);
  list.Remove(2);
  list.Remove(2);
  EXPECT_EQ(Contents(list), (std::vector<uint32_t>{0}));
  EXPECT_FALSE(list.Contains(2));
  EXPECT_TRUE(list.Contains(0));
}

TEST(IndexListTest, PushFrontAndPopFront) {
  std::vector<Item> items(3);
  ListA list(&items);
  list.PushBack(1);
  list.PushFront(2);
  list.PushFront(0);
  EXPECT_EQ(Contents(list), (std::vector<uint32_t>{0, 2, 1}));
  EXPECT_EQ(list.PopFront(), 0u);
  EXPECT_FALSE(list.Contains(0));
  EXPECT_EQ(Contents(list), (std::vector<uint32_t>{2, 1}));
}

TEST(IndexListTest, AnElementCanBeOnTwoListsThroughTwoLinks) {
  std::vector<Item> items(3);
  ListA a(&items);
  ListB b(&items);
  a.PushBack(0);
  a.PushBack(1);
  b.PushBack(1);
  b.PushBack(2);
  a.Remove(1);
  EXPECT_EQ(Contents(a), (std::vector<uint32_t>{0}));
  EXPECT_TRUE(b.Contains(1));
  EXPECT_EQ(b.head(), 1u);
  EXPECT_EQ(b.Next(1), 2u);
}

}  // namespace
}  // namespace dotproxy::io
