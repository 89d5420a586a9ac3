#include "dotproxy/shard/query_table.h"

namespace dotproxy::shard {

QueryTable::QueryTable(size_t capacity)
    : slots_(capacity), deadlines_(&slots_), attempts_(&slots_), waiting_(&slots_) {
  free_.reserve(capacity);
  for (uint32_t i = static_cast<uint32_t>(capacity); i-- > 0;) free_.push_back(i);
}

uint32_t QueryTable::Allocate(SlotKind kind, io::Clock::time_point deadline) {
  if (free_.empty()) return kNoSlot;
  const uint32_t index = free_.back();
  free_.pop_back();
  QuerySlot& slot = slots_[index];
  static_cast<QueryFields&>(slot) = QueryFields{};
  slot.in_use = true;
  slot.kind = kind;
  slot.deadline = deadline;
  deadlines_.PushBack(index);
  return index;
}

void QueryTable::Release(uint32_t index) {
  QuerySlot& slot = slots_[index];
  if (!slot.in_use) return;
  deadlines_.Remove(index);
  attempts_.Remove(index);
  waiting_.Remove(index);
  slot.in_use = false;
  free_.push_back(index);
}

}  // namespace dotproxy::shard
