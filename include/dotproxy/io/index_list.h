#pragma once
// An intrusive doubly linked list of indices into a fixed table (query slots,
// TCP clients). The links live inside the elements, so putting an element on
// a list or taking it off allocates nothing and costs O(1); an element can be
// on several lists through several IndexLinks members. One owner thread.
//
//   struct Slot { io::IndexLinks deadline_links; ... };
//   io::IndexList<Slot, &Slot::deadline_links> deadlines(&slots);
//   deadlines.PushBack(i);  ...  deadlines.Remove(i);
//
// The table must not be resized while a list refers to it.

#include <cstdint>
#include <vector>

namespace dotproxy::io {

inline constexpr uint32_t kNoIndex = UINT32_MAX;

struct IndexLinks {
  uint32_t prev = kNoIndex;
  uint32_t next = kNoIndex;
  bool linked = false;
};

template <typename T, IndexLinks T::*Links>
class IndexList {
 public:
  explicit IndexList(std::vector<T>* table = nullptr) : table_(table) {}
  void Bind(std::vector<T>* table) { table_ = table; }

  bool empty() const { return head_ == kNoIndex; }
  uint32_t head() const { return head_; }
  uint32_t tail() const { return tail_; }
  uint32_t Next(uint32_t index) const { return links(index).next; }
  uint32_t Prev(uint32_t index) const { return links(index).prev; }
  bool Contains(uint32_t index) const { return links(index).linked; }

  // REQUIRES: !Contains(index).
  void PushBack(uint32_t index) {
    IndexLinks& l = links(index);
    l = {tail_, kNoIndex, true};
    if (tail_ != kNoIndex) {
      links(tail_).next = index;
    } else {
      head_ = index;
    }
    tail_ = index;
  }

  // REQUIRES: !Contains(index).
  void PushFront(uint32_t index) {
    IndexLinks& l = links(index);
    l = {kNoIndex, head_, true};
    if (head_ != kNoIndex) {
      links(head_).prev = index;
    } else {
      tail_ = index;
    }
    head_ = index;
  }

  // No-op when the element is not on this list.
  void Remove(uint32_t index) {
    IndexLinks& l = links(index);
    if (!l.linked) return;
    if (l.prev != kNoIndex) {
      links(l.prev).next = l.next;
    } else {
      head_ = l.next;
    }
    if (l.next != kNoIndex) {
      links(l.next).prev = l.prev;
    } else {
      tail_ = l.prev;
    }
    l = {};
  }

  // Removes and returns the head. REQUIRES: !empty().
  uint32_t PopFront() {
    const uint32_t index = head_;
    Remove(index);
    return index;
  }

 private:
  IndexLinks& links(uint32_t index) { return (*table_)[index].*Links; }
  const IndexLinks& links(uint32_t index) const { return (*table_)[index].*Links; }

  std::vector<T>* table_;
  uint32_t head_ = kNoIndex;
  uint32_t tail_ = kNoIndex;
};

}  // namespace dotproxy::io
