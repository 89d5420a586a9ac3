#include "src/config/policy_file.h"

#include <functional>

#include "absl/strings/str_cat.h"
#include "src/config/text.h"

namespace dotproxy::config {
namespace {

// Seven days, as for the cache's TTL knobs.
constexpr int64_t kMaxTtl = 7 * 86400;

std::string Where(const std::string& path, const toml::source_region& region) {
  return absl::StrCat(EscapeForMessage(path), ":", region.begin.line);
}

absl::Status At(const std::string& path, const toml::node& node, std::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(Where(path, node.source()), ": ", Sv(problem)));
}

absl::Status ReadText(const std::string& path, const toml::node& node, std::string_view key,
                      std::string& out, bool may_be_empty = false) {
  const auto* value = node.as_string();
  if (value == nullptr || (!may_be_empty && value->get().empty())) {
    return At(path, node, absl::StrCat("'", Sv(key), "' must be a non-empty string"));
  }
  if (auto s = CheckText(value->get(), kMaxPathBytes); !s.ok()) {
    return At(path, node, absl::StrCat("'", Sv(key), "': ", s.message()));
  }
  out = value->get();
  return absl::OkStatus();
}

absl::Status ReadTtl(const std::string& path, const toml::node& node, uint32_t& out) {
  const auto* value = node.as_integer();
  if (value == nullptr || value->get() < 0 || value->get() > kMaxTtl) {
    return At(path, node, absl::StrCat("'ttl' must be an integer in [0, ", kMaxTtl, "]"));
  }
  out = static_cast<uint32_t>(value->get());
  return absl::OkStatus();
}

absl::Status ReadTables(const std::string& path, const toml::node& node, std::string_view key,
                        const std::function<absl::Status(const toml::table&)>& read) {
  const auto* list = node.as_array();
  if (list == nullptr || !list->is_array_of_tables()) {
    return At(path, node, absl::StrCat("'", Sv(key), "' must be written as [[", Sv(key), "]] tables"));
  }
  for (const auto& item : *list) {
    if (auto s = read(*item.as_table()); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

bool IsPolicyKey(std::string_view key) {
  return key == "local" || key == "blocklist" || key == "allowlist";
}

absl::Status ReadPolicyKey(std::string_view key, const toml::node& node, const std::string& path,
                           Config& config) {
  if (key == "allowlist") {
    const auto* list = node.as_array();
    if (list == nullptr) return At(path, node, "'allowlist' must be an array of file names");
    for (const auto& item : *list) {
      std::string file;
      if (auto s = ReadText(path, item, "allowlist", file); !s.ok()) return s;
      config.policy.allowlist.push_back(std::move(file));
    }
    return absl::OkStatus();
  }
  if (key == "local") {
    return ReadTables(path, node, key, [&](const toml::table& table) -> absl::Status {
      policy::LocalRecordSpec spec;
      spec.where = Where(path, table.source());
      bool have_name = false, have_type = false, have_data = false;
      for (const auto& [key_node, value] : table) {
        const std::string_view sub = key_node.str();
        if (sub == "name") {
          if (auto s = ReadText(path, value, sub, spec.name); !s.ok()) return s;
          have_name = true;
        } else if (sub == "type") {
          if (auto s = ReadText(path, value, sub, spec.type); !s.ok()) return s;
          have_type = true;
        } else if (sub == "data") {
          if (auto s = ReadText(path, value, sub, spec.data, /*may_be_empty=*/true); !s.ok()) return s;
          have_data = true;
        } else if (sub == "ttl") {
          if (auto s = ReadTtl(path, value, spec.ttl); !s.ok()) return s;
        } else {
          return At(path, value, absl::StrCat("unknown key '", Excerpt(sub),
                                              "' in [[local]] (name, type, ttl, data)"));
        }
      }
      if (!have_name || !have_type || !have_data) {
        return absl::InvalidArgumentError(
            absl::StrCat(spec.where, ": [[local]] needs 'name', 'type' and 'data'"));
      }
      config.policy.local.push_back(std::move(spec));
      return absl::OkStatus();
    });
  }
  return ReadTables(path, node, key, [&](const toml::table& table) -> absl::Status {
    policy::BlocklistSpec spec;
    spec.where = Where(path, table.source());
    for (const auto& [key_node, value] : table) {
      const std::string_view sub = key_node.str();
      if (sub == "file") {
        if (auto s = ReadText(path, value, sub, spec.file); !s.ok()) return s;
      } else if (sub == "action") {
        if (auto s = ReadText(path, value, sub, spec.action); !s.ok()) return s;
      } else if (sub == "name") {
        if (auto s = ReadText(path, value, sub, spec.name); !s.ok()) return s;
      } else if (sub == "ttl") {
        if (auto s = ReadTtl(path, value, spec.ttl); !s.ok()) return s;
      } else {
        return At(path, value, absl::StrCat("unknown key '", Excerpt(sub),
                                            "' in [[blocklist]] (file, action, name, ttl)"));
      }
    }
    if (spec.file.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(spec.where, ": [[blocklist]] needs a 'file'"));
    }
    config.policy.blocklists.push_back(std::move(spec));
    return absl::OkStatus();
  });
}

}  // namespace dotproxy::config
