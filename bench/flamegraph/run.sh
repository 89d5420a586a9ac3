#!/usr/bin/env bash
# Flame graphs of dotproxy under dnsperf load: one cache-hit and one cache-miss workload.
#
# Drives bench/load/run.sh (same local DoT upstream, same pinning: dnsperf + upstream on
# core 0, dotproxy on core 1) with only the profiled runs: for each workload, dnsperf at
# max for DURATION seconds while `perf record -g` samples dotproxy. Writes, per workload,
# RESULTS_DIR/flame/dotproxy-{hit,miss}-udp.{html,svg,folded,top.txt,perf.data} and prints
# the top 15 frames by self time. Loopback only; bounded; stops everything it started.
#
# usage: bench/flamegraph/run.sh            (env: see bench/flamegraph/README.md)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n 2,10p "$0"; exit 0; }
command -v perf >/dev/null 2>&1 || { echo "perf missing; install with: apt-get install -y linux-perf" >&2; exit 1; }

TS="$(date +%Y%m%d-%H%M%S)"
export RESULTS_DIR="${RESULTS_DIR:-$REPO/bench/load/results/flame-$TS}"
export TARGETS="${TARGETS:-dotproxy}"
export SCENARIOS=""            # no measured points, only the profiled ones
export PERF=1
export PERF_SCENARIOS="${PERF_SCENARIOS:-hit-udp miss-udp}"
# dotproxy is built with -fno-omit-frame-pointer (meson.build), so frame-pointer stacks
# (`perf record -g`) are cheap and complete for its own code; libraries built without
# frame pointers (wolfSSL, libc) show as leaves, which is what self time needs.
export PERF_CALLGRAPH="${PERF_CALLGRAPH:-fp}"
export CALIBRATE="${CALIBRATE:-0}"
export DURATION="${DURATION:-10}"
TOP="${TOP:-15}"

"$REPO/bench/load/run.sh" >/dev/null

shopt -s nullglob
found=0
for folded in "$RESULTS_DIR"/flame/*.folded; do
    found=1
    name="$(basename "$folded" .folded)"
    total="$(awk '{ n += $NF } END { print n + 0 }' "$folded")"
    echo
    echo "== $name: top $TOP frames by self time ($total samples)"
    "$REPO/bench/flamegraph/flamegraph.py" top "$TOP" < "$folded"
    echo "   flame graph: $RESULTS_DIR/flame/$name.html"
done
[ "$found" = 1 ] || { echo "no profiles produced; see $RESULTS_DIR" >&2; exit 1; }
echo
echo "Open the .html files in a browser (self-contained, no network needed), e.g."
echo "  xdg-open $RESULTS_DIR/flame/dotproxy-hit-udp.html"
echo "or copy them off the machine: scp HOST:$RESULTS_DIR/flame/*.html ."
