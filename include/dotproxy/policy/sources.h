#pragma once
// What the operator wrote about local answers and blocking, before any file
// is read: the [[local]] records, the [[blocklist]] tables and the
// allowlist files, each with the FILE:LINE it came from. Plain data: the
// config file parser fills it, policy::Tables::Build reads it.

#include <cstdint>
#include <string>
#include <vector>

namespace dotproxy::policy {

// Seconds: the TTL of hosts-file answers, and the default of [[local]]
// records and of blocked answers.
inline constexpr uint32_t kDefaultLocalTtl = 300;
inline constexpr uint32_t kDefaultBlockTtl = 60;

struct LocalRecordSpec {
  std::string name;  // presentation form
  std::string type;  // "A", "AAAA", "CNAME", "TXT", "PTR", "MX", "SRV"
  uint32_t ttl = kDefaultLocalTtl;
  std::string data;  // presentation form of the RDATA
  std::string where;  // "FILE:LINE" of its table, for errors
};

struct BlocklistSpec {
  std::string name;    // for metrics and logs; empty: the file name
  std::string file;
  // "nxdomain" (default), "nodata", "refused", or an IPv4/IPv6 address.
  std::string action = "nxdomain";
  uint32_t ttl = kDefaultBlockTtl;  // of the synthesized answer (and its SOA)
  std::string where;
};

struct Sources {
  std::string hosts_file;  // empty: none
  std::vector<LocalRecordSpec> local;
  std::vector<BlocklistSpec> blocklists;
  std::vector<std::string> allowlist;  // files
  bool empty() const {
    return hosts_file.empty() && local.empty() && blocklists.empty() && allowlist.empty();
  }
};

}  // namespace dotproxy::policy
