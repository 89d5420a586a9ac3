// Tables::Build: reads the hosts file, the [[local]] records, the blocklist
// and allowlist files into the read-only tables. Control thread only; this
// is where policy allocates.

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "dotproxy/policy/tables.h"

namespace dotproxy::policy {

namespace {

// This abseil has its own string_view type: convert at its calls.
absl::string_view Sv(std::string_view text) { return {text.data(), text.size()}; }
std::string_view Std(absl::string_view text) { return {text.data(), text.size()}; }

constexpr uint16_t kNoList = 0xffff;
// Files larger than this are refused rather than read into memory (a
// million-entry list is about 30 MB).
constexpr size_t kMaxListFileBytes = size_t{1} << 30;

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  if (static_cast<size_t>(st.st_size) > kMaxListFileBytes) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": larger than 1 GiB"));
  }
  std::string text;
  text.resize(static_cast<size_t>(st.st_size));
  size_t have = 0;
  while (have < text.size()) {
    const ssize_t n = ::read(fd, text.data() + have, text.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += static_cast<size_t>(n);
  }
  ::close(fd);
  text.resize(have);
  return text;
}

// Calls `line(number, text)` for each line, comments ('#' to the end) and
// surrounding blanks removed; stops at the first error.
template <typename Fn>
absl::Status ForEachLine(std::string_view text, Fn&& line) {
  size_t number = 0;
  while (!text.empty()) {
    ++number;
    const size_t end = text.find('\n');
    std::string_view current = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    if (const size_t hash = current.find('#'); hash != std::string_view::npos) {
      current = current.substr(0, hash);
    }
    current = Std(absl::StripAsciiWhitespace(Sv(current)));
    if (current.empty()) continue;
    if (auto status = line(number, current); !status.ok()) return status;
  }
  return absl::OkStatus();
}

std::vector<std::string_view> Tokens(std::string_view line) {
  std::vector<std::string_view> tokens;
  for (const absl::string_view token : absl::StrSplit(Sv(line), absl::ByAnyChar(" \t"), absl::SkipEmpty())) {
    tokens.push_back(Std(token));
  }
  return tokens;
}

struct Address {
  uint16_t type = 0;  // kTypeA or kTypeAaaa; 0: not an address
  uint8_t bytes[16] = {};
};

Address ParseAddress(std::string_view text) {
  Address address;
  if (text.size() >= INET6_ADDRSTRLEN) return address;
  char buffer[INET6_ADDRSTRLEN];
  std::memcpy(buffer, text.data(), text.size());
  buffer[text.size()] = 0;
  if (inet_pton(AF_INET, buffer, address.bytes) == 1) {
    address.type = kTypeA;
  } else if (inet_pton(AF_INET6, buffer, address.bytes) == 1) {
    address.type = kTypeAaaa;
  }
  return address;
}

// The reverse name (in-addr.arpa / ip6.arpa) of an address, in wire form.
size_t ReverseName(const Address& address, uint8_t* out) {
  size_t at = 0;
  auto label = [&](std::string_view text) {
    out[at++] = static_cast<uint8_t>(text.size());
    std::memcpy(out + at, text.data(), text.size());
    at += text.size();
  };
  if (address.type == kTypeA) {
    for (int i = 3; i >= 0; --i) label(absl::StrCat(address.bytes[i]));
    label("in-addr");
  } else {
    constexpr char kHex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; --i) {
      label(std::string_view(&kHex[address.bytes[i] & 0xf], 1));
      label(std::string_view(&kHex[address.bytes[i] >> 4], 1));
    }
    label("ip6");
  }
  label("arpa");
  out[at++] = 0;
  return at;
}

// Names that hosts-format blocklists list for the machine itself
// (StevenBlack's header): never blocked.
bool IsHostsBoilerplate(std::string_view name) {
  static constexpr std::string_view kNames[] = {
      "localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost",
      "ip6-loopback", "ip6-localnet", "ip6-mcastprefix", "ip6-allnodes", "ip6-allrouters",
      "ip6-allhosts", "0.0.0.0"};
  for (const auto candidate : kNames) {
    if (absl::EqualsIgnoreCase(Sv(name), Sv(candidate))) return true;
  }
  return false;
}

bool IsSinkAddress(const Address& address) {
  static const uint8_t kZero[16] = {};
  if (address.type == kTypeA) {
    return std::memcmp(address.bytes, kZero, 4) == 0 ||
           (address.bytes[0] == 127 && address.bytes[1] == 0 && address.bytes[2] == 0 &&
            address.bytes[3] == 1);
  }
  if (address.type == kTypeAaaa) {
    return std::memcmp(address.bytes, kZero, 15) == 0 && address.bytes[15] <= 1;  // :: or ::1
  }
  return false;
}

}  // namespace

// Slots for per-list counters, by name, for the life of the process.
namespace {
std::mutex slots_mutex;
std::vector<std::string>& SlotNames() {
  static auto* names = new std::vector<std::string>();
  return *names;
}
}  // namespace

size_t ListSlot(const std::string& name) {
  std::lock_guard lock(slots_mutex);
  auto& names = SlotNames();
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return i;
  }
  if (names.size() == kMaxListSlots) return kMaxListSlots - 1;
  names.push_back(name);
  return names.size() - 1;
}

std::vector<std::string> ListSlotNames() {
  std::lock_guard lock(slots_mutex);
  return SlotNames();
}

class Builder {
 public:
  explicit Builder(Tables& tables) : tables_(tables) {}

  absl::Status AddHostsFile(const std::string& path);
  absl::Status AddLocal(const LocalRecordSpec& spec);
  absl::Status AddList(const std::string& path, bool allow, uint16_t list);
  absl::Status AddBlocklist(const BlocklistSpec& spec, uint16_t index);
  absl::Status Finish();

 private:
  struct Pending {
    uint16_t type;
    uint32_t ttl;
    std::string rdata;
    std::string where;
  };
  // Adds one record to the local name `name` (lower-case wire).
  void AddRecord(std::span<const uint8_t> name, Pending record) {
    uint32_t& index = tables_.local_index_.Insert(name);
    if (index == NameSet::kNoValue) {
      index = static_cast<uint32_t>(pending_.size());
      pending_.emplace_back();
      pending_names_.emplace_back(reinterpret_cast<const char*>(name.data()), name.size());
    }
    pending_[index].push_back(std::move(record));
  }
  bool HasType(std::span<const uint8_t> name, uint16_t type) const {
    const uint32_t* index = tables_.local_index_.Find(name, NameSet::Hash(name));
    if (index == nullptr) return false;
    for (const auto& record : pending_[*index]) {
      if (record.type == type) return true;
    }
    return false;
  }

  Tables& tables_;
  std::vector<std::vector<Pending>> pending_;
  std::vector<std::string> pending_names_;
};

absl::Status Builder::AddHostsFile(const std::string& path) {
  auto text = ReadWholeFile(path);
  if (!text.ok()) return text.status();
  return ForEachLine(*text, [&](size_t number, std::string_view line) -> absl::Status {
    const auto where = [&] { return absl::StrCat(path, ":", number, ": "); };
    const auto tokens = Tokens(line);
    const Address address = ParseAddress(tokens[0]);
    if (address.type == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          where(), "'", Sv(tokens[0].substr(0, 64)), "' is not an IPv4 or IPv6 address (hosts(5): IP name [aliases...])"));
    }
    if (tokens.size() < 2) return absl::InvalidArgumentError(absl::StrCat(where(), "an address without a name"));
    const std::string rdata(reinterpret_cast<const char*>(address.bytes), address.type == kTypeA ? 4 : 16);
    uint8_t wire[dns::kMaxNameLength];
    size_t length = 0;
    for (size_t t = 1; t < tokens.size(); ++t) {
      if (auto s = TextToWireName(tokens[t], wire, length); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(where(), "'", Sv(tokens[t].substr(0, 64)), "': ", s.message()));
      }
      AddRecord({wire, length}, {address.type, kDefaultLocalTtl, rdata, where()});
      if (t == 1) {
        // hosts(5): the first name is the canonical one, and the first line
        // of an address names it (as gethostbyaddr reads the file).
        uint8_t reverse[dns::kMaxNameLength];
        const size_t reverse_length = ReverseName(address, reverse);
        if (!HasType({reverse, reverse_length}, kTypePtr)) {
          AddRecord({reverse, reverse_length},
                    {kTypePtr, kDefaultLocalTtl, std::string(reinterpret_cast<const char*>(wire), length), where()});
        }
      }
    }
    return absl::OkStatus();
  });
}

namespace {

absl::StatusOr<std::string> NameRdata(std::string_view text) {
  uint8_t wire[dns::kMaxNameLength];
  size_t length = 0;
  if (auto s = TextToWireName(text, wire, length); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("'", Sv(text.substr(0, 64)), "': ", s.message()));
  }
  return std::string(reinterpret_cast<const char*>(wire), length);
}

std::string U16(uint16_t value) {
  return std::string{static_cast<char>(value >> 8), static_cast<char>(value & 0xff)};
}

absl::StatusOr<uint16_t> ParseU16(std::string_view text, std::string_view what) {
  uint32_t value = 0;
  if (!absl::SimpleAtoi(Sv(text), &value) || value > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), " must be a number 0..65535"));
  }
  return static_cast<uint16_t>(value);
}

// TXT: one or more "quoted strings" (\" and \\ escapes), or bare text taken
// whole; each string of at most 255 bytes (longer bare text is split).
absl::StatusOr<std::string> TxtRdata(std::string_view text) {
  std::string out;
  auto append = [&](std::string_view piece) {
    do {
      const std::string_view chunk = piece.substr(0, 255);
      out.push_back(static_cast<char>(chunk.size()));
      out.append(chunk);
      piece.remove_prefix(chunk.size());
    } while (!piece.empty());
  };
  if (text.empty() || text[0] != '"') {
    append(text);
    return out;
  }
  while (!text.empty()) {
    if (text[0] != '"') return absl::InvalidArgumentError("TXT data: text between quoted strings");
    std::string piece;
    size_t i = 1;
    for (; i < text.size() && text[i] != '"'; ++i) {
      if (text[i] == '\\' && i + 1 < text.size()) ++i;
      piece.push_back(text[i]);
    }
    if (i >= text.size()) return absl::InvalidArgumentError("TXT data: unterminated quoted string");
    if (piece.size() > 255) return absl::InvalidArgumentError("TXT data: a string longer than 255 bytes");
    out.push_back(static_cast<char>(piece.size()));
    out.append(piece);
    text = Std(absl::StripLeadingAsciiWhitespace(Sv(text.substr(i + 1))));
  }
  return out;
}

}  // namespace

absl::Status Builder::AddLocal(const LocalRecordSpec& spec) {
  const auto fail = [&](absl::string_view problem) {
    return absl::InvalidArgumentError(absl::StrCat(spec.where, ": [[local]] '", spec.name.substr(0, 64), "' ",
                                                   spec.type, ": ", problem));
  };
  uint8_t wire[dns::kMaxNameLength];
  size_t length = 0;
  if (auto s = TextToWireName(spec.name, wire, length); !s.ok()) return fail(s.message());
  const std::string type = absl::AsciiStrToUpper(spec.type);
  const std::string_view data = Std(absl::StripAsciiWhitespace(spec.data));
  const auto fields = Tokens(data);
  Pending record{0, spec.ttl, {}, spec.where};
  absl::StatusOr<std::string> rdata;
  if (type == "A" || type == "AAAA") {
    const Address address = ParseAddress(data);
    record.type = type == "A" ? kTypeA : kTypeAaaa;
    if (address.type != record.type) return fail(absl::StrCat("'", Sv(data.substr(0, 64)), "' is not an IPv", type == "A" ? "4" : "6", " address"));
    rdata = std::string(reinterpret_cast<const char*>(address.bytes), type == "A" ? 4 : 16);
  } else if (type == "CNAME" || type == "PTR") {
    record.type = type == "CNAME" ? kTypeCname : kTypePtr;
    rdata = NameRdata(data);
  } else if (type == "MX") {
    record.type = kTypeMx;
    if (fields.size() != 2) return fail("data must be \"PREFERENCE NAME\"");
    auto preference = ParseU16(fields[0], "PREFERENCE");
    if (!preference.ok()) return fail(preference.status().message());
    rdata = NameRdata(fields[1]);
    if (rdata.ok()) rdata = U16(*preference) + *rdata;
  } else if (type == "SRV") {
    record.type = kTypeSrv;
    if (fields.size() != 4) return fail("data must be \"PRIORITY WEIGHT PORT TARGET\"");
    std::string prefix;
    for (int i = 0; i < 3; ++i) {
      auto value = ParseU16(fields[i], i == 0 ? "PRIORITY" : i == 1 ? "WEIGHT" : "PORT");
      if (!value.ok()) return fail(value.status().message());
      prefix += U16(*value);
    }
    rdata = NameRdata(fields[3]);
    if (rdata.ok()) rdata = prefix + *rdata;
  } else if (type == "TXT") {
    record.type = kTypeTxt;
    rdata = TxtRdata(data);
  } else {
    return fail("unsupported type (A, AAAA, CNAME, TXT, PTR, MX, SRV)");
  }
  if (!rdata.ok()) return fail(rdata.status().message());
  if (rdata->size() > kMaxLocalAnswerBytes) return fail("data too large");
  record.rdata = *std::move(rdata);
  AddRecord({wire, length}, std::move(record));
  return absl::OkStatus();
}

absl::Status Builder::AddList(const std::string& path, bool allow, uint16_t list) {
  auto text = ReadWholeFile(path);
  if (!text.ok()) return text.status();
  NameSet& set = allow ? tables_.allowed_ : tables_.blocked_;
  uint8_t wire[dns::kMaxNameLength];
  size_t length = 0;
  auto add = [&](std::string_view name, bool subtree) -> absl::Status {
    if (auto s = TextToWireName(name, wire, length); !s.ok()) return s;
    uint32_t& value = set.Insert({wire, length});
    if (allow) {
      if (value == NameSet::kNoValue) value = 0;
      value |= subtree ? 2u : 1u;
    } else {
      const uint32_t shift = subtree ? 16 : 0;
      // The first list naming it keeps it.
      if (((value >> shift) & 0xffff) == kNoList) {
        value = (value & ~(uint32_t{0xffff} << shift)) | (uint32_t{list} << shift);
      }
    }
    return absl::OkStatus();
  };
  return ForEachLine(*text, [&](size_t number, std::string_view line) -> absl::Status {
    const auto fail = [&](std::string_view token, absl::string_view problem) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": '", Sv(token.substr(0, 64)), "': ", problem));
    };
    if (line[0] == '!') return absl::OkStatus();  // adblock-style comment
    if (line.size() > 3 && line.substr(0, 2) == "||" && line.back() == '^') {
      const std::string_view name = line.substr(2, line.size() - 3);
      if (auto s = add(name, true); !s.ok()) return fail(name, s.message());
      return absl::OkStatus();
    }
    auto tokens = Tokens(line);
    size_t first = 0;
    if (const Address address = ParseAddress(tokens[0]); address.type != 0) {
      if (!IsSinkAddress(address)) {
        return fail(tokens[0], "a hosts-format list line must start with 0.0.0.0, 127.0.0.1, :: or ::1");
      }
      first = 1;
    } else if (tokens.size() > 1) {
      return fail(line, "one domain per line (or hosts format: 0.0.0.0 name...)");
    }
    for (size_t t = first; t < tokens.size(); ++t) {
      std::string_view name = tokens[t];
      if (first == 1 && IsHostsBoilerplate(name)) continue;
      bool subtree = false;
      if (name.substr(0, 2) == "*.") {
        name.remove_prefix(2);
        subtree = true;
      } else if (name.size() > 1 && name[0] == '.') {
        name.remove_prefix(1);
        subtree = true;
      }
      if (auto s = add(name, subtree); !s.ok()) return fail(tokens[t], s.message());
    }
    return absl::OkStatus();
  });
}

absl::Status Builder::AddBlocklist(const BlocklistSpec& spec, uint16_t index) {
  Tables::List list;
  list.name = spec.name.empty() ? spec.file : spec.name;
  list.ttl = spec.ttl;
  const std::string action = absl::AsciiStrToLower(spec.action);
  if (action == "nxdomain") {
    list.action = Action::kNxDomain;
  } else if (action == "nodata") {
    list.action = Action::kNoData;
  } else if (action == "refused") {
    list.action = Action::kRefused;
  } else if (const Address address = ParseAddress(spec.action); address.type != 0) {
    list.action = Action::kAddress;
    list.address_type = address.type;
    std::memcpy(list.address, address.bytes, sizeof(list.address));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        spec.where, ": [[blocklist]] 'action': '", spec.action.substr(0, 64),
        "' is none of nxdomain, nodata, refused or an IP address"));
  }
  for (const auto& other : tables_.lists_) {
    if (other.name == list.name) {
      return absl::InvalidArgumentError(
          absl::StrCat(spec.where, ": [[blocklist]] name '", list.name, "' is used twice"));
    }
  }
  list.slot = ListSlot(list.name);
  tables_.lists_.push_back(std::move(list));
  return AddList(spec.file, /*allow=*/false, index);
}

absl::Status Builder::Finish() {
  tables_.local_names_.resize(pending_.size());
  for (size_t n = 0; n < pending_.size(); ++n) {
    auto& records = pending_[n];
    std::stable_sort(records.begin(), records.end(),
                     [](const Pending& a, const Pending& b) { return a.type < b.type; });
    // The same record twice (a name on two hosts lines) is one record.
    records.erase(std::unique(records.begin(), records.end(),
                              [](const Pending& a, const Pending& b) {
                                return a.type == b.type && a.rdata == b.rdata;
                              }),
                  records.end());
    size_t bytes = 0;
    uint32_t min_ttl = UINT32_MAX;
    size_t cnames = 0;
    for (const auto& record : records) {
      bytes += 12 + record.rdata.size();
      min_ttl = std::min(min_ttl, record.ttl);
      if (record.type == kTypeCname) ++cnames;
    }
    const std::string name_text = WireNameToText(
        {reinterpret_cast<const uint8_t*>(pending_names_[n].data()), pending_names_[n].size()});
    // RFC 1034 §3.6.2 / RFC 2181 §10.1: a CNAME is the only data of its name.
    if (cnames > 0 && records.size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          records.back().where, (records.back().where.back() == ' ' ? "" : ": "), "'", name_text,
          "' has a CNAME and other data; a CNAME must be alone (RFC 2181 §10.1)"));
    }
    if (bytes > kMaxLocalAnswerBytes) {
      return absl::InvalidArgumentError(absl::StrCat(records.back().where, ": local data of '", name_text,
                                                     "' exceeds ", kMaxLocalAnswerBytes, " bytes"));
    }
    Tables::LocalName& local = tables_.local_names_[n];
    local.first_record = static_cast<uint32_t>(tables_.records_.size());
    local.count = static_cast<uint16_t>(records.size());
    local.min_ttl = min_ttl;
    local.name = static_cast<uint32_t>(tables_.rdata_.size());
    local.name_length = static_cast<uint16_t>(pending_names_[n].size());
    tables_.rdata_.insert(tables_.rdata_.end(), pending_names_[n].begin(), pending_names_[n].end());
    for (const auto& record : records) {
      tables_.records_.push_back({record.type, static_cast<uint16_t>(record.rdata.size()), record.ttl,
                                  static_cast<uint32_t>(tables_.rdata_.size())});
      tables_.rdata_.insert(tables_.rdata_.end(), record.rdata.begin(), record.rdata.end());
    }
  }
  tables_.blocked_.Seal();
  tables_.allowed_.Seal();
  tables_.local_index_.Seal();
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Tables>> Tables::Build(const Sources& sources) {
  const auto start = std::chrono::steady_clock::now();
  std::shared_ptr<Tables> tables(new Tables());
  Builder builder(*tables);
  if (sources.blocklists.size() >= kNoList) return absl::InvalidArgumentError("too many blocklists");
  if (!sources.hosts_file.empty()) {
    if (auto s = builder.AddHostsFile(sources.hosts_file); !s.ok()) return s;
  }
  for (const auto& spec : sources.local) {
    if (auto s = builder.AddLocal(spec); !s.ok()) return s;
  }
  for (size_t i = 0; i < sources.blocklists.size(); ++i) {
    if (auto s = builder.AddBlocklist(sources.blocklists[i], static_cast<uint16_t>(i)); !s.ok()) return s;
  }
  for (const auto& file : sources.allowlist) {
    if (auto s = builder.AddList(file, /*allow=*/true, 0); !s.ok()) return s;
  }
  if (auto s = builder.Finish(); !s.ok()) return s;
  tables->build_seconds_ =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return std::shared_ptr<const Tables>(std::move(tables));
}

size_t Tables::MemoryBytes() const {
  return blocked_.MemoryBytes() + allowed_.MemoryBytes() + local_index_.MemoryBytes() +
         local_names_.capacity() * sizeof(LocalName) + records_.capacity() * sizeof(Record) +
         rdata_.capacity() + lists_.capacity() * sizeof(List);
}

}  // namespace dotproxy::policy
