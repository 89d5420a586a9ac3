#pragma once
// Local answers and blocklists, built whole from policy::Sources on the
// control thread (at start and at each reload) and then shared read-only by
// every shard as a shared_ptr<const Tables>: Lookup and WriteReply only
// read, never allocate, and may run on many threads at once.
//
// Precedence for one query name: local data (hosts_file, [[local]]) first;
// then the allowlist, whose entries win over every blocklist; then the
// blocklists (the most specific matching entry wins; at one name the first
// list in the configuration). A plain list entry matches that name only;
// "*.example" and ".example" match example and every name below it.
//
//   auto tables = Tables::Build(sources);           // control thread
//   Decision d = tables->Lookup(qname);             // shard, per query
//   if (d.action != Action::kNone) length = tables->WriteReply(d, query, info, ...);

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "dotproxy/dns/message.h"
#include "dotproxy/policy/name_set.h"
#include "dotproxy/policy/sources.h"

namespace dotproxy::policy {

inline constexpr uint16_t kTypeA = 1;
inline constexpr uint16_t kTypeCname = 5;
inline constexpr uint16_t kTypePtr = 12;
inline constexpr uint16_t kTypeMx = 15;
inline constexpr uint16_t kTypeTxt = 16;
inline constexpr uint16_t kTypeAaaa = 28;
inline constexpr uint16_t kTypeSrv = 33;
// The local RRsets of one name (CNAME chain included) fit one reply of this
// size; Build refuses more.
inline constexpr size_t kMaxLocalAnswerBytes = 4000;
// Largest reply WriteReply builds (answer, question, SOA, OPT).
inline constexpr size_t kMaxPolicyReply = 4608;
// Per-list hit counters a shard holds (metrics::kMaxBlocklistSlots too).
inline constexpr size_t kMaxListSlots = 64;

enum class Action : uint8_t {
  kNone,      // not ours: on to the cache and the upstreams
  kLocal,     // local data (maybe NODATA for this type)
  kNxDomain,  // blocked
  kNoData,    // blocked
  kRefused,   // blocked
  kAddress,   // blocked, answered with the list's address (A or AAAA)
};

struct Decision {
  Action action = Action::kNone;
  uint16_t list = 0;          // blocklist index (blocked actions)
  uint16_t owner_offset = 0;  // offset in the qname of the matching entry's name
  uint32_t local = 0;         // local name index (kLocal)
  bool allowlisted = false;   // a blocklist matched, but the allowlist won
};

// Slot of a blocklist name for the per-shard hit counters, stable for the
// life of the process so counters survive reloads. Control thread (locks).
// Slots beyond kMaxListSlots share the last one.
size_t ListSlot(const std::string& name);
// Slot -> name for every slot assigned so far (the metrics labels).
std::vector<std::string> ListSlotNames();

class Tables {
 public:
  // Reads every file named by `sources`. Errors name FILE:LINE and the
  // problem (a [[local]] table's own FILE:LINE for its records).
  static absl::StatusOr<std::shared_ptr<const Tables>> Build(const Sources& sources);

  // REQUIRES: `qname` is the query's uncompressed wire name (any case).
  Decision Lookup(std::span<const uint8_t> qname) const;

  // Writes the reply for `decision` to `query` (which ParseQuery accepted
  // as `info`) into `out`: the client's ID and question bytes (0x20 case),
  // QR, AA (not for REFUSED), RA, RD and CD as asked; the RRset of the
  // asked type (or, for a CNAME, the chain through local names), or none
  // with a synthesized SOA in authority (NODATA, NXDOMAIN: owner the
  // matching name, "localhost. nobody.invalid. 1 3600 600 86400 TTL" with
  // TTL the smallest of the name's records, or the list's ttl); an OPT
  // (size `edns_udp_size`, DO echoed) when the query had one. Larger than
  // `limit`: header, question and OPT only, with TC=1 (RFC 2181 §9).
  // Returns the length, or 0 when `out` cannot hold even that.
  size_t WriteReply(const Decision& decision, std::span<const uint8_t> query,
                    const dns::QueryInfo& info, uint16_t edns_udp_size, size_t limit,
                    std::span<uint8_t> out) const;

  // For metrics and logs.
  size_t blocklist_count() const { return lists_.size(); }
  const std::string& blocklist_name(size_t list) const { return lists_[list].name; }
  size_t blocklist_slot(size_t list) const { return lists_[list].slot; }
  size_t blocked_names() const { return blocked_.size(); }
  size_t allowed_names() const { return allowed_.size(); }
  size_t local_names() const { return local_names_.size(); }
  size_t MemoryBytes() const;
  double build_seconds() const { return build_seconds_; }

  // Build-time pieces (also used by the tests).
  struct List {
    std::string name;
    Action action = Action::kNxDomain;
    uint32_t ttl = kDefaultBlockTtl;
    uint16_t address_type = 0;  // kTypeA or kTypeAaaa for kAddress
    uint8_t address[16] = {};
    size_t slot = 0;
  };
  struct Record {
    uint16_t type = 0;
    uint16_t rdata_length = 0;
    uint32_t ttl = 0;
    uint32_t rdata = 0;  // offset in rdata_
  };
  struct LocalName {
    uint32_t first_record = 0;  // records_[first, first + count), sorted by type
    uint16_t count = 0;
    uint32_t name = 0;  // offset of its wire name in rdata_ (for CNAME chains)
    uint16_t name_length = 0;
    uint32_t min_ttl = 0;
  };

 private:
  friend class Builder;
  Tables() = default;
  // The local name of a wire name (lower case), or -1.
  int64_t FindLocal(std::span<const uint8_t> lower_name) const;

  double build_seconds_ = 0;
  std::vector<List> lists_;
  // Value: exact-match list (low 16 bits) and subtree list (high 16), 0xffff none.
  NameSet blocked_;
  // Value: bit 0 exact, bit 1 subtree.
  NameSet allowed_;
  NameSet local_index_;  // value: index into local_names_
  std::vector<LocalName> local_names_;
  std::vector<Record> records_;
  std::vector<uint8_t> rdata_;
};

}  // namespace dotproxy::policy
