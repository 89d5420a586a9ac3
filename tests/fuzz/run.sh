#!/usr/bin/env bash
# Runs the libFuzzer targets of a -Dfuzzing=true build (see README, "Test"):
# for each target, first the committed corpus and regressions as they are
# (-runs=0), then FUZZ_SECONDS of fuzzing from them. Prints the executions
# per target; crashing inputs land in BUILD/fuzz-artifacts/<target>/ (keep
# them under tests/fuzz/regressions/<target>/ once fixed).
#
#   tests/fuzz/run.sh BUILD_DIR [TARGET...]     (default: every fuzz_* binary)
#
# Environment: FUZZ_SECONDS (default 30) per target; FUZZ_RESULTS, a file
# that gets one "NAME OK" or "NAME FAIL" line per run (tools/test.sh counts
# them). New inputs go to BUILD/fuzz-work/<target>/, never to the committed
# corpus. Exits non-zero if any run failed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:?usage: tests/fuzz/run.sh BUILD_DIR [TARGET...]}"
shift
seconds="${FUZZ_SECONDS:-30}"
results="${FUZZ_RESULTS:-/dev/null}"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for exe in "$build"/tests/fuzz/fuzz_*; do
    [ -x "$exe" ] && [ -f "$exe" ] && targets+=("$(basename "$exe" | sed 's/^fuzz_//')")
  done
fi
if [ ${#targets[@]} -eq 0 ]; then
  echo "no fuzz targets in $build (configure it with -Dfuzzing=true and build them)"
  echo "fuzz_build FAIL" >> "$results"
  exit 1
fi

failed=0
record() {  # NAME STATUS
  echo "$1 $2" >> "$results"
  [ "$2" = OK ] || failed=1
}

for target in "${targets[@]}"; do
  exe="$build/tests/fuzz/fuzz_$target"
  corpus="$here/corpus/$target"
  regressions="$here/regressions/$target"
  work="$build/fuzz-work/$target"
  artifacts="$build/fuzz-artifacts/$target"
  log="$build/fuzz-logs/$target"
  mkdir -p "$work" "$artifacts" "$log"
  if [ ! -x "$exe" ]; then
    echo "fuzz $target: $exe missing"
    record "fuzz_replay_$target" FAIL
    record "fuzz_$target" FAIL
    continue
  fi

  # The committed inputs, each run once.
  if "$exe" -runs=0 "$corpus" "$regressions" > "$log/replay.log" 2>&1; then
    inputs="$(grep -o 'Done [0-9]* runs' "$log/replay.log" | awk '{print $2}')"
    echo "fuzz $target: replayed ${inputs:-?} committed inputs: OK"
    record "fuzz_replay_$target" OK
  else
    echo "fuzz $target: replay FAILED:"
    tail -n 40 "$log/replay.log"
    record "fuzz_replay_$target" FAIL
  fi

  # Bounded fuzzing; -timeout and -rss_limit_mb turn hangs and runaway
  # memory into failures too.
  if "$exe" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$artifacts/" "$work" "$corpus" "$regressions" > "$log/fuzz.log" 2>&1; then
    status=OK
  else
    status=FAIL
  fi
  runs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log/fuzz.log" | awk '{print $2}')"
  corpus_size="$(find "$work" -type f | wc -l)"
  echo "fuzz $target: ${runs:-?} executions in ${seconds} s, $corpus_size new inputs: $status"
  if [ "$status" != OK ]; then
    grep -E 'ERROR|SUMMARY|FUZZ_CHECK|runtime error|Test unit written' "$log/fuzz.log" | head -n 20
    echo "(full log: $log/fuzz.log)"
  fi
  record "fuzz_$target" "$status"
done
exit $failed
