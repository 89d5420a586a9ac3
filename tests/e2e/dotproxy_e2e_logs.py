#!/usr/bin/python3
"""End-to-end cases for dotproxy's log output (--log-format, --log-level and
the journal's priorities). Uses the harness in dotproxy_e2e.py (loopback
only, bounded waits, children ended by PID).

    dotproxy_e2e_logs.py --dotproxy build/dotproxy --case log_json_lines
"""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import LOOPBACK4, TLS_NAME, case, check, free_port, make_query, udp_exchange  # noqa: E402

_INHERITED = set(E.CASES)


def _start(h, u, extra, prefix=(), name=None):
    port = free_port()
    args = h.base_args(port, ["%s:%d#%s" % (LOOPBACK4, u.dot_port, TLS_NAME)]) + list(extra)
    p = E.Proxy(h.need_exe(), h.dir, args, name or "dotproxy%d" % len(h.proxies), prefix)
    p.port = port
    h.proxies.append(p)
    h.wait_ready(p, "answer", 10.0)
    return p


def _lines(p):
    rc, _ = p.stop()
    check(rc == 0, "dotproxy exited %s" % rc)
    with open(p.stderr_path, encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


@case
def log_json_lines(h):
    """--log-format json: every stderr line is one JSON object with time,
    level and message (start, upstream connect, stop, counters), nothing else."""
    u = h.start_unbound()
    p = _start(h, u, ["--log-format", "json"])
    udp_exchange(p.port, make_query("a.example.test.").to_wire())
    lines = _lines(p)
    check(len(lines) >= 3, "too few log lines: %r" % lines)
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            raise E.CaseFailure("not a JSON line: %r" % line)
        check(set(obj) == {"time", "level", "message"}, "fields %s in %r" % (sorted(obj), line))
        check(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", obj["time"]), "time %r" % obj["time"])
        check(obj["level"] in ("debug", "info", "warning", "error"), "level %r" % obj["level"])
    check(any(l.startswith('{"time"') and "serving on" in l for l in lines), "no start line: %r" % lines)
    print("%d JSON lines" % len(lines))


@case
def log_level_warning_hides_info(h):
    """--log-level warning: the info lines (start, connects, counters at exit)
    are not written; with the default level they are."""
    u = h.start_unbound()
    quiet = _lines(_start(h, u, ["--log-level", "warning"], name="quiet"))
    check(not any(" info: " in l for l in quiet), "info lines at --log-level warning: %r" % quiet)
    loud = _lines(_start(h, u, [], name="loud"))
    check(any(" info: serving on " in l for l in loud), "no info start line by default: %r" % loud)
    print("warning level: %d lines; default: %d lines" % (len(quiet), len(loud)))


@case
def log_journal_priorities(h):
    """Under systemd (JOURNAL_STREAM names stderr's device:inode) each line
    starts with the syslog priority (<6> info, <4> warning) and carries no
    timestamp; a JOURNAL_STREAM naming another file changes nothing."""
    u = h.start_unbound()
    path = os.path.join(h.dir, "journal.stderr")
    open(path, "ab").close()
    st = os.stat(path)
    env = ["/usr/bin/env", "JOURNAL_STREAM=%d:%d" % (st.st_dev, st.st_ino)]
    lines = _lines(_start(h, u, [], prefix=env, name="journal"))
    check(lines and all(re.match(r"^<[0-7]>", l) for l in lines), "lines without a priority: %r" % lines)
    check(any(l.startswith("<6>info: serving on ") for l in lines), "no <6> start line: %r" % lines)
    check(not any(re.search(r"\d{4}-\d\d-\d\dT", l) for l in lines), "timestamps under the journal: %r" % lines)
    other = ["/usr/bin/env", "JOURNAL_STREAM=1:1"]
    plain = _lines(_start(h, u, [], prefix=other, name="notjournal"))
    check(not any(l.startswith("<") for l in plain), "priority prefix for another stream: %r" % plain)
    print("journal: %d lines with priorities" % len(lines))


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
