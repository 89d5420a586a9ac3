#!/usr/bin/env bash
# Installs dependencies, builds dotproxy and runs every test (unit and
# end-to-end), then again under AddressSanitizer and UndefinedBehaviorSanitizer
# (build-asan), then the fuzz targets (build-fuzz, clang + libFuzzer). Ends
# with the line "N passed, M failed" counting all of it; exits non-zero if
# any test failed. This is the README's test command and what CI runs.
set -uo pipefail
cd "$(dirname "$0")/.."

bash tools/install-deps.sh < /dev/null || { echo "dependency installation failed"; echo "0 passed, 1 failed"; exit 1; }

# setup_build DIR [MESON OPTIONS...]: configure DIR, or reconfigure it.
setup_build() {
  local dir="$1"
  shift
  if [ -d "$dir" ]; then
    meson setup --reconfigure "$dir" "$@"
  else
    meson setup "$dir" "$@"
  fi
}
phase_start=$SECONDS
phase_done() { echo "== $1 took $((SECONDS - phase_start)) s"; phase_start=$SECONDS; }

# 1. The normal build (GCC) and every test.
setup_build build || { echo "0 passed, 1 failed"; exit 1; }
meson compile -C build || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }

# Tests run one at a time: the end-to-end tests start real servers and the
# machine may have only two cores.
meson test -C build --print-errorlogs --num-processes 1
status=$?
phase_done "build and tests"

# 2. The sanitizer build (GCC, AddressSanitizer + UndefinedBehaviorSanitizer):
# the unit tests, the end-to-end suite and the fuzz corpus replay. UBSan
# only reports and goes on unless told to halt; the e2e harness passes this
# environment on to dotproxy. tests/lsan.supp names the known third-party
# leaks (none so far: see the file).
extra_failed=0
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"
if setup_build build-asan -Db_sanitize=address,undefined -Dbenchmarks=false &&
   meson compile -C build-asan; then
  meson test -C build-asan --print-errorlogs --num-processes 1 --timeout-multiplier 3 \
    --suite unit --suite e2e --suite fuzz_replay --no-suite no_asan || status=1
else
  echo "sanitizer build failed"
  extra_failed=$((extra_failed + 1))
  status=1
fi
unset ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS
phase_done "sanitizer build and tests"

# 3. The fuzz build (clang, libFuzzer + ASan + UBSan): each target fuzzed
# for FUZZ_SECONDS (30) after replaying its committed corpus and regressions.
fuzz_results=build-fuzz/fuzz-results.txt
rm -f "$fuzz_results"
if CXX=clang++-14 CC=clang-14 setup_build build-fuzz -Dfuzzing=true -Dtests=false \
     -Dbenchmarks=false -Db_sanitize=address,undefined -Db_lundef=false &&
   meson compile -C build-fuzz $(cd tests/fuzz && ls *_fuzzer.cc | sed 's/_fuzzer\.cc$//; s/^/fuzz_/'); then
  FUZZ_RESULTS="$fuzz_results" bash tests/fuzz/run.sh build-fuzz || status=1
else
  echo "fuzz build failed"
  extra_failed=$((extra_failed + 1))
  status=1
fi
phase_done "fuzz build and runs"

/usr/bin/python3 - "$extra_failed" "$fuzz_results" build/meson-logs/testlog.json build-asan/meson-logs/testlog.json <<'PY'
import json, os, sys
passed = failed = skipped = 0
failed += int(sys.argv[1])
fuzz_results = sys.argv[2]
if os.path.exists(fuzz_results):
    with open(fuzz_results) as results:
        for line in results:
            if line.split()[-1:] == ["OK"]:
                passed += 1
            elif line.strip():
                failed += 1
for testlog in sys.argv[3:]:
    if not os.path.exists(testlog):
        continue
    with open(testlog) as log:
        for line in log:
            line = line.strip()
            if not line:
                continue
            result = json.loads(line).get("result", "")
            if result in ("OK", "EXPECTEDFAIL"):
                passed += 1
            elif result == "SKIP":
                skipped += 1
            else:
                failed += 1
# The last line is exactly "N passed, M failed" (what CI reads); skips,
# which are neither, are said on the line before.
if skipped:
    print(f"{skipped} skipped (a tool or a build kind a case needs is missing)")
print(f"{passed} passed, {failed} failed")
PY
exit $status
