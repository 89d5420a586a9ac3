#!/usr/bin/env bash
# Installs dependencies, builds dotproxy and runs every test (unit and
# end-to-end). Ends with the line "N passed, M failed"; exits non-zero if any
# test failed. This is the README's test command and what CI runs.
set -uo pipefail
cd "$(dirname "$0")/.."

bash tools/install-deps.sh < /dev/null || { echo "dependency installation failed"; echo "0 passed, 1 failed"; exit 1; }

if [ -d build ]; then
  meson setup --reconfigure build || { echo "0 passed, 1 failed"; exit 1; }
else
  meson setup build || { echo "0 passed, 1 failed"; exit 1; }
fi
meson compile -C build || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }

# Tests run one at a time: the end-to-end tests start real servers and the
# machine may have only two cores.
meson test -C build --print-errorlogs --num-processes 1
status=$?

/usr/bin/python3 - build/meson-logs/testlog.json <<'PY'
import json, sys
passed = failed = skipped = 0
with open(sys.argv[1]) as log:
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
summary = f"{passed} passed, {failed} failed"
if skipped:
    summary += f", {skipped} skipped"
print(summary)
PY
exit $status
