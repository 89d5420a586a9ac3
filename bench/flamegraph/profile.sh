#!/usr/bin/env bash
# Profile one running process with perf for a bounded time and draw a flame graph.
# usage: bench/flamegraph/profile.sh PID SECONDS OUTDIR [NAME]
# Writes OUTDIR/NAME.perf.data, NAME.folded, NAME.html (interactive), NAME.svg, NAME.top.txt.
# Env: PERF_FREQ (sampling Hz, default 999), PERF_CALLGRAPH (dwarf|fp|lbr, default dwarf:
# works without frame pointers; use fp for a -fno-omit-frame-pointer build, much cheaper),
# PERF_CPU (core perf itself runs on, default 0), PERF_EVENT (default: cycles when the
# PMU counts them, else cpu-clock, the software timer that works in VMs).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=/usr/bin/python3

[ $# -ge 3 ] || { sed -n 2,9p "$0" >&2; exit 2; }
PID="$1" SECS="$2" OUT="$3" NAME="${4:-profile}"
FREQ="${PERF_FREQ:-999}"
CG="${PERF_CALLGRAPH:-dwarf}"
PCPU="${PERF_CPU:-0}"
case "$SECS" in ''|*[!0-9]*) echo "SECONDS must be an integer" >&2; exit 2 ;; esac
[ "$SECS" -ge 1 ] && [ "$SECS" -le 120 ] || { echo "SECONDS must be 1..120" >&2; exit 2; }
command -v perf >/dev/null || { echo "perf missing: apt-get install -y linux-perf" >&2; exit 1; }
kill -0 "$PID" 2>/dev/null || { echo "no process $PID" >&2; exit 1; }
mkdir -p "$OUT"

cgarg="$CG"; [ "$CG" = dwarf ] && cgarg="dwarf,16384"
EVENT="${PERF_EVENT:-}"
if [ -z "$EVENT" ]; then
    if perf stat -x, -e cycles -- true 2>&1 | grep -qE '^[0-9]+,'; then EVENT=cycles; else EVENT=cpu-clock; fi
fi
# cpu-clock works in VMs without hardware PMU access. perf stops itself after SECS
# (it profiles the PID while running "sleep SECS"); timeout is a backstop.
timeout -k 5 $((SECS + 30)) taskset -c "$PCPU" perf record -q -e "$EVENT" -F "$FREQ" \
    --call-graph "$cgarg" -p "$PID" -o "$OUT/$NAME.perf.data" -- sleep "$SECS" \
    >"$OUT/$NAME.perf.log" 2>&1 || { echo "perf record failed:" >&2; cat "$OUT/$NAME.perf.log" >&2; exit 1; }
timeout -k 5 300 perf script -i "$OUT/$NAME.perf.data" 2>>"$OUT/$NAME.perf.log" \
    | "$PY" "$HERE/flamegraph.py" fold > "$OUT/$NAME.folded"
TITLE="$NAME ($(date +%F), $EVENT ${FREQ} Hz, ${CG} stacks)"
"$PY" "$HERE/flamegraph.py" svg "$TITLE" < "$OUT/$NAME.folded" > "$OUT/$NAME.svg"
"$PY" "$HERE/flamegraph.py" html "$TITLE" < "$OUT/$NAME.folded" > "$OUT/$NAME.html"
"$PY" "$HERE/flamegraph.py" top 30 < "$OUT/$NAME.folded" > "$OUT/$NAME.top.txt"
echo "$OUT/$NAME.html"
