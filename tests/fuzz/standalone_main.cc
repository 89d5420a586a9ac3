// Replays inputs through a fuzz target without libFuzzer (the standard
// StandaloneFuzzTargetMain pattern), so every build, GCC included, runs the
// committed corpus and regressions through the same entry points.
//
//   fuzz_replay_query tests/fuzz/corpus/query tests/fuzz/regressions/query
//
// Each argument is a file or a directory of files (not recursive; names
// starting with '.' are skipped). Fails when an argument cannot be read or
// when no input was found at all; a crashing input aborts the process.

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

bool RunFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    return false;
  }
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // A copy of exactly the input's size: reads past it are heap overflows
  // that AddressSanitizer reports, as under libFuzzer.
  std::vector<uint8_t> input(bytes.begin(), bytes.end());
  std::fprintf(stderr, "running %s (%zu bytes)\n", path.c_str(), input.size());
  LLVMFuzzerTestOneInput(input.data(), input.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  size_t inputs = 0;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    struct stat st {};
    if (stat(arg.c_str(), &st) != 0) {
      std::fprintf(stderr, "cannot stat %s\n", arg.c_str());
      ok = false;
      continue;
    }
    if (!S_ISDIR(st.st_mode)) {
      ok = RunFile(arg) && ok;
      inputs += 1;
      continue;
    }
    DIR* dir = opendir(arg.c_str());
    if (dir == nullptr) {
      std::fprintf(stderr, "cannot open %s\n", arg.c_str());
      ok = false;
      continue;
    }
    std::vector<std::string> names;
    while (const dirent* entry = readdir(dir)) {
      if (entry->d_name[0] != '.') names.emplace_back(entry->d_name);
    }
    closedir(dir);
    std::sort(names.begin(), names.end());  // a stable order for the logs
    for (const std::string& name : names) {
      ok = RunFile(arg + "/" + name) && ok;
      inputs += 1;
    }
  }
  std::printf("replayed %zu inputs\n", inputs);
  if (inputs == 0) {
    std::fprintf(stderr, "no inputs found\n");
    return 1;
  }
  return ok ? 0 : 1;
}
