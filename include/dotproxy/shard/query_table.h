#pragma once
// The shard's forwarded queries: a fixed table of slots, each holding one
// query as sent upstream, where its answer goes, and its deadlines, plus
// three lists through them:
//   - deadlines: every slot, in allocation order, which is final-deadline
//     order because every query gets the same timeout;
//   - attempts: first attempts that may still be retried elsewhere, in
//     attempt-deadline order for the same reason;
//   - waiting: queries waiting for connection capacity, oldest first.
// Allocation resets every per-query field (QueryFields), so nothing of a
// previous query can leak into the next one. Shard thread only; the table
// is sized at construction and never allocates.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "dotproxy/dns/edns.h"
#include "dotproxy/frontend/client_ref.h"
#include "dotproxy/io/clock.h"
#include "dotproxy/io/index_list.h"
#include "dotproxy/upstream/router.h"

namespace dotproxy::shard {

inline constexpr uint32_t kNoSlot = io::kNoIndex;

// kClient: a client waits for the answer. kPrefetch: a background cache
// refresh (no client).
enum class SlotKind : uint8_t { kClient, kPrefetch };

// Everything about one query but its bytes; reset to these values when a
// slot is allocated.
struct QueryFields {
  bool in_use = false;
  SlotKind kind = SlotKind::kClient;
  bool has_edns = false;
  bool dnssec_ok = false;
  uint8_t attempt = 1;           // 2 once retried: a query is retried at most once
  bool stale_candidate = false;  // the cache holds an expired answer (RFC 8767)
  uint16_t client_id = 0;
  uint16_t udp_limit = dns::kClassicUdpLimit;  // largest UDP answer the client takes
  uint16_t query_length = 0;
  uint16_t question_length = 0;
  frontend::ClientRef client;
  upstream::Binding binding;
  io::Clock::time_point sent_at{};
  // When the client's query was read (its deadline is that plus the query
  // timeout in force then; a reload may change the timeout, not this).
  io::Clock::time_point received_at{};
  // Its first attempt reached the attempt deadline with nowhere else to
  // go: not yet counted against its upstream (the final deadline does).
  bool attempt_timeout_pending = false;
  io::Clock::time_point attempt_deadline{};
  io::Clock::time_point deadline{};
};

struct QuerySlot : QueryFields {
  io::IndexLinks deadline_links;
  io::IndexLinks attempt_links;
  io::IndexLinks wait_links;
  // The query as sent upstream (EDNS rewritten, padded), with the current
  // upstream ID; the client's question bytes and letter case untouched.
  uint8_t query[frontend::kMaxQuerySize + dns::kUpstreamQueryGrowth];
};

class QueryTable {
 public:
  explicit QueryTable(size_t capacity);
  QueryTable(const QueryTable&) = delete;
  QueryTable& operator=(const QueryTable&) = delete;

  // A slot with every field reset, on the deadline list with `deadline`;
  // kNoSlot when the table is full.
  uint32_t Allocate(SlotKind kind, io::Clock::time_point deadline);
  // Takes the slot off every list and frees it. No-op for a free slot.
  void Release(uint32_t index);

  QuerySlot& operator[](uint32_t index) { return slots_[index]; }
  const QuerySlot& operator[](uint32_t index) const { return slots_[index]; }
  size_t in_use() const { return slots_.size() - free_.size(); }
  size_t capacity() const { return slots_.size(); }

  using DeadlineList = io::IndexList<QuerySlot, &QuerySlot::deadline_links>;
  using AttemptList = io::IndexList<QuerySlot, &QuerySlot::attempt_links>;
  using WaitList = io::IndexList<QuerySlot, &QuerySlot::wait_links>;
  DeadlineList& deadlines() { return deadlines_; }
  AttemptList& attempts() { return attempts_; }
  WaitList& waiting() { return waiting_; }
  const WaitList& waiting() const { return waiting_; }
  const DeadlineList& deadlines() const { return deadlines_; }
  const AttemptList& attempts() const { return attempts_; }

 private:
  std::vector<QuerySlot> slots_;
  std::vector<uint32_t> free_;
  DeadlineList deadlines_;
  AttemptList attempts_;
  WaitList waiting_;
};

}  // namespace dotproxy::shard
