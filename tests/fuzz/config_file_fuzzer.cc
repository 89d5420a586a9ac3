// Fuzz target "config_file": the TOML configuration file parser
// (config::LoadConfigText, what LoadConfigFile runs on a file's content),
// then ValidateConfig on whatever it accepted. Any input must give a Status,
// never a crash, an uncaught exception or a sanitizer report.

#include <string>
#include <string_view>

#include "dotproxy/config/config.h"
#include "tests/fuzz/fuzz_check.h"

namespace config = dotproxy::config;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  config::Config parsed;
  const absl::Status status = config::LoadConfigText(text, "fuzz.toml", parsed);
  if (!status.ok()) {
    // Errors name the file: "FILE:LINE: problem".
    FUZZ_CHECK(status.message().substr(0, 10) == "fuzz.toml:");
    return 0;
  }
  (void)config::ValidateConfig(parsed);
  return 0;
}
