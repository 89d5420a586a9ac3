// Tables::Lookup and Tables::WriteReply: the per-query half of policy.
// Any thread; reads the tables only; no allocation (names are folded into
// a stack buffer, replies written into the caller's).

#include <algorithm>
#include <cstring>

#include "dotproxy/policy/tables.h"

namespace dotproxy::policy {
namespace {

constexpr uint16_t kNoList = 0xffff;
constexpr uint16_t kClassIn = 1;
constexpr size_t kMaxLabels = 128;
constexpr size_t kMaxCnameChain = 8;
constexpr size_t kOptSize = 11;

// Appends to `out` up to `cap` bytes; remembers an overflow instead of
// writing past it.
class Writer {
 public:
  Writer(uint8_t* out, size_t cap, size_t at) : out_(out), cap_(cap), at_(at) {}
  bool Fits(size_t n) {
    if (at_ + n > cap_) overflow_ = true;
    return !overflow_;
  }
  void Bytes(const void* data, size_t n) {
    if (!Fits(n)) return;
    std::memcpy(out_ + at_, data, n);
    at_ += n;
  }
  void U16(uint16_t v) {
    if (!Fits(2)) return;
    dns::WriteU16(out_ + at_, v);
    at_ += 2;
  }
  void U32(uint32_t v) {
    if (!Fits(4)) return;
    dns::WriteU32(out_ + at_, v);
    at_ += 4;
  }
  // A record whose owner is the compression pointer `owner` (an offset in
  // the message); returns the RDATA's offset.
  size_t Record(uint16_t owner, uint16_t type, uint32_t ttl, const uint8_t* rdata, uint16_t length) {
    U16(static_cast<uint16_t>(0xc000 | owner));
    U16(type);
    U16(kClassIn);
    U32(ttl);
    U16(length);
    const size_t at = at_;
    Bytes(rdata, length);
    return at;
  }
  size_t at() const { return at_; }
  void set_at(size_t at) { at_ = at; }
  bool overflow() const { return overflow_; }

 private:
  uint8_t* out_;
  size_t cap_;
  size_t at_;
  bool overflow_ = false;
};

void WriteSoa(Writer& w, uint16_t owner, uint32_t ttl) {
  static constexpr uint8_t kNames[] = {9, 'l', 'o', 'c', 'a', 'l', 'h', 'o', 's', 't', 0,
                                       6, 'n', 'o', 'b', 'o', 'd', 'y',
                                       7, 'i', 'n', 'v', 'a', 'l', 'i', 'd', 0};
  uint8_t rdata[sizeof(kNames) + 20];
  std::memcpy(rdata, kNames, sizeof(kNames));
  uint8_t* p = rdata + sizeof(kNames);
  dns::WriteU32(p, 1);        // serial
  dns::WriteU32(p + 4, 3600);  // refresh
  dns::WriteU32(p + 8, 600);   // retry
  dns::WriteU32(p + 12, 86400);  // expire
  dns::WriteU32(p + 16, ttl);  // minimum: the negative TTL (RFC 2308 §5)
  w.Record(owner, dns::kTypeSoa, ttl, rdata, sizeof(rdata));
}

// dns::AsciiLower over 8 bytes at a time (SWAR): a byte gets 0x20 when it
// is in 'A'..'Z'. Label lengths (at most 63) are below 'A' and stay.
// REQUIRES: `out` has name.size() + 8 bytes.
void LowerName(std::span<const uint8_t> name, uint8_t* out) {
  constexpr uint64_t kOnes = 0x0101010101010101ull;
  size_t i = 0;
  for (; i + 8 <= name.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, name.data() + i, 8);
    const uint64_t heptets = w & (0x7f * kOnes);
    const uint64_t above_a = heptets + (0x80 - 'A') * kOnes;     // high bit: >= 'A'
    const uint64_t above_z = heptets + (0x80 - 'Z' - 1) * kOnes;  // high bit: > 'Z'
    const uint64_t upper = above_a & ~above_z & ~w & (0x80 * kOnes);
    w |= upper >> 2;
    std::memcpy(out + i, &w, 8);
  }
  for (; i < name.size(); ++i) out[i] = dns::AsciiLower(name[i]);
}

}  // namespace

int64_t Tables::FindLocal(std::span<const uint8_t> lower_name) const {
  const uint32_t* index = local_index_.Find(lower_name, NameSet::Hash(lower_name));
  return index == nullptr ? -1 : static_cast<int64_t>(*index);
}

Decision Tables::Lookup(std::span<const uint8_t> qname) const {
  Decision decision;
  if (qname.empty() || qname.size() > dns::kMaxNameLength) return decision;
  uint8_t lower[dns::kMaxNameLength + 8];
  LowerName(qname, lower);
  const size_t length = qname.size();
  if (local_index_.size() > 0) {
    if (const int64_t local = FindLocal({lower, length}); local >= 0) {
      decision.action = Action::kLocal;
      decision.local = static_cast<uint32_t>(local);
      return decision;
    }
  }
  if (blocked_.size() == 0) return decision;
  // Label starts, longest suffix first; the root is never an entry.
  uint16_t starts[kMaxLabels];
  size_t labels = 0;
  for (size_t at = 0; at < length && lower[at] != 0 && labels < kMaxLabels; at += 1 + lower[at]) {
    starts[labels++] = static_cast<uint16_t>(at);
  }
  uint64_t hashes[kMaxLabels];
  for (size_t l = 0; l < labels; ++l) {
    hashes[l] = NameSet::Hash({lower + starts[l], length - starts[l]});
    blocked_.Prefetch(hashes[l]);
  }
  uint16_t list = kNoList;
  for (size_t l = 0; l < labels; ++l) {
    const std::span<const uint8_t> suffix(lower + starts[l], length - starts[l]);
    const uint32_t* value = blocked_.Find(suffix, hashes[l]);
    if (value == nullptr) continue;
    const uint16_t exact = static_cast<uint16_t>(*value & 0xffff);
    const uint16_t subtree = static_cast<uint16_t>(*value >> 16);
    list = (l == 0 && exact != kNoList) ? exact : subtree;
    if (list != kNoList) {
      decision.owner_offset = starts[l];
      break;
    }
  }
  if (list == kNoList) return decision;
  for (size_t l = 0; l < labels && allowed_.size() > 0; ++l) {
    const std::span<const uint8_t> suffix(lower + starts[l], length - starts[l]);
    const uint32_t* value = allowed_.Find(suffix, hashes[l]);
    if (value != nullptr && ((l == 0 && (*value & 1)) || (*value & 2))) {
      decision.allowlisted = true;
      decision.list = list;
      return decision;
    }
  }
  decision.action = lists_[list].action;
  decision.list = list;
  return decision;
}

size_t Tables::WriteReply(const Decision& decision, std::span<const uint8_t> query,
                          const dns::QueryInfo& info, uint16_t edns_udp_size, size_t limit,
                          std::span<uint8_t> out) const {
  const size_t question_end = dns::kHeaderSize + info.question_length;
  const size_t minimal = question_end + (info.has_edns ? kOptSize : 0);
  if (query.size() < question_end || out.size() < minimal) return 0;
  uint8_t* h = out.data();
  const uint16_t qtype = info.qtype;
  dns::Rcode rcode = dns::Rcode::kNoError;
  bool authoritative = true;
  uint16_t answers = 0;
  uint16_t authority = 0;
  std::memcpy(h + dns::kHeaderSize, query.data() + dns::kHeaderSize, info.question_length);
  Writer w(h, std::min(limit, out.size()), question_end);

  switch (decision.action) {
    case Action::kNone:
      return 0;
    case Action::kLocal: {
      const LocalName* name = &local_names_[decision.local];
      uint16_t owner = dns::kHeaderSize;
      bool data = false;
      for (size_t depth = 0; depth < kMaxCnameChain; ++depth) {
        const Record* first = &records_[name->first_record];
        const Record* last = first + name->count;
        if (name->count == 1 && first->type == kTypeCname && qtype != kTypeCname) {
          const size_t target = w.Record(owner, kTypeCname, first->ttl, &rdata_[first->rdata],
                                         first->rdata_length);
          ++answers;
          data = true;
          const int64_t next = FindLocal({&rdata_[first->rdata], first->rdata_length});
          // A target that is not local: the CNAME alone (the client's
          // resolver follows it).
          if (next < 0 || target > 0x3fff || w.overflow()) break;
          owner = static_cast<uint16_t>(target);
          name = &local_names_[static_cast<size_t>(next)];
          data = false;
          continue;
        }
        for (const Record* r = first; r != last; ++r) {
          if (r->type != qtype && qtype != dns::kTypeAny) continue;
          w.Record(owner, r->type, r->ttl, &rdata_[r->rdata], r->rdata_length);
          ++answers;
          data = true;
        }
        break;
      }
      if (!data) {  // NODATA (RFC 2308 §2.2): the name exists, not this type
        WriteSoa(w, owner, name->min_ttl);
        ++authority;
      }
      break;
    }
    case Action::kAddress: {
      const List& list = lists_[decision.list];
      if (qtype == list.address_type || qtype == dns::kTypeAny) {
        w.Record(dns::kHeaderSize, list.address_type, list.ttl, list.address,
                 list.address_type == kTypeA ? 4 : 16);
        ++answers;
      } else {
        WriteSoa(w, static_cast<uint16_t>(dns::kHeaderSize + decision.owner_offset), list.ttl);
        ++authority;
      }
      break;
    }
    case Action::kNxDomain:
    case Action::kNoData:
      rcode = decision.action == Action::kNxDomain ? dns::Rcode::kNxDomain : dns::Rcode::kNoError;
      WriteSoa(w, static_cast<uint16_t>(dns::kHeaderSize + decision.owner_offset),
               lists_[decision.list].ttl);
      ++authority;
      break;
    case Action::kRefused:
      rcode = dns::Rcode::kRefused;
      authoritative = false;
      break;
  }
  auto write_opt = [&] {
    if (!info.has_edns) return;
    const uint8_t opt[kOptSize] = {0, 0, dns::kTypeOpt,
                                   static_cast<uint8_t>(edns_udp_size >> 8),
                                   static_cast<uint8_t>(edns_udp_size), 0, 0,
                                   static_cast<uint8_t>(info.dnssec_ok ? 0x80 : 0), 0, 0, 0};
    w.Bytes(opt, sizeof(opt));
  };
  write_opt();
  bool truncated = false;
  if (w.overflow()) {
    // Whole RRsets or none: the client asks again over TCP.
    truncated = true;
    answers = authority = 0;
    w = Writer(h, out.size(), question_end);
    write_opt();
  }
  dns::header::SetId(h, info.id);
  h[2] = static_cast<uint8_t>(0x80 | (query[2] & 0x78) | (authoritative ? 0x04 : 0) |
                              (truncated ? 0x02 : 0) | (query[2] & 0x01));
  h[3] = static_cast<uint8_t>(0x80 | (query[3] & 0x10) | static_cast<uint8_t>(rcode));
  dns::WriteU16(h + 4, 1);
  dns::WriteU16(h + 6, answers);
  dns::WriteU16(h + 8, authority);
  dns::WriteU16(h + 10, info.has_edns ? 1 : 0);
  return w.at();
}

}  // namespace dotproxy::policy
