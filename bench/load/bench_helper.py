#!/usr/bin/python3
"""Helper for bench/load/run.sh (stdlib only).

Subcommands:
  freeports N                 print N TCP+UDP-free ports on 127.0.0.1, one per line
  parse RAW [key=value ...]   parse one dnsperf output file, merge the key=value
                              metadata (CPU ticks etc.), print one JSON object
  table RUNS.jsonl            print the Markdown results table
"""
import json
import math
import re
import socket
import sys


def freeports(n):
    socks, ports = [], []
    tries = 0
    while len(ports) < n and tries < 200:
        tries += 1
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            t.close()
            u.close()
            continue
        socks += [t, u]
        ports.append(port)
    for s in socks:
        s.close()
    if len(ports) < n:
        sys.exit("could not find free ports")
    print("\n".join(str(p) for p in ports))


_NUM = r"([0-9]+(?:\.[0-9]+)?)"
_STATS = {
    "sent": re.compile(r"Queries sent:\s+([0-9]+)"),
    "completed": re.compile(r"Queries completed:\s+([0-9]+)"),
    "lost": re.compile(r"Queries lost:\s+([0-9]+)"),
    "interrupted": re.compile(r"Queries interrupted:\s+([0-9]+)"),
    "runtime_s": re.compile(r"Run time \(s\):\s+" + _NUM),
    "qps": re.compile(r"Queries per second:\s+" + _NUM),
    "avg_s": re.compile(r"Average Latency \(s\):\s+" + _NUM),
    "min_s": re.compile(r"Average Latency \(s\):.*\(min " + _NUM),
    "max_s": re.compile(r"Average Latency \(s\):.*max " + _NUM + r"\)"),
    "stddev_s": re.compile(r"Latency StdDev \(s\):\s+" + _NUM),
}
# "> NOERROR q1.bench.test A 0.000587" (dnsperf -v, one line per response)
_VLINE = re.compile(r"^> (\S+) .* ([0-9]+\.[0-9]+)$")
_RCODES = re.compile(r"Response codes:\s+(.*)")


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def parse(path, meta):
    with open(path, errors="replace") as f:
        text = f.read()
    # The summary block follows "Statistics:"; -v lines come before it.
    head, _, summary = text.partition("\nStatistics:")
    r = {}
    for key, rx in _STATS.items():
        m = rx.search(summary)
        if m:
            r[key] = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    m = _RCODES.search(summary)
    rcodes = {}
    if m:
        for name, cnt in re.findall(r"([A-Z]+) ([0-9]+) \(", m.group(1)):
            rcodes[name] = int(cnt)
    r["rcodes"] = rcodes
    lat = []
    for line in head.splitlines():
        if line.startswith("> "):
            mm = _VLINE.match(line)
            if mm:
                lat.append(float(mm.group(2)))
    lat.sort()
    r["lat_samples"] = len(lat)
    for p in (50, 90, 99, 99.9):
        r["p%s_s" % str(p).replace(".", "_")] = percentile(lat, p)
    r["dnsperf_ok"] = "completed" in r and "qps" in r
    for kv in meta:
        k, _, v = kv.partition("=")
        try:
            v = int(v)
        except ValueError:
            try:
                v = float(v)
            except ValueError:
                pass
        r[k] = v
    # Derived figures.
    hz = r.get("clk_tck") or 100
    done = r.get("completed") or 0
    if "target_ticks" in r and done:
        r["target_cpu_us_per_q"] = r["target_ticks"] * 1e6 / hz / done
    # Over dnsperf's own run time (the ticks taken outside it, while dnsperf loads its
    # file or waits for stragglers, are near zero); fall back to the wall window.
    span = r.get("runtime_s") or r.get("wall_s")
    if "target_ticks" in r and span:
        r["target_cpu_pct"] = 100.0 * r["target_ticks"] / hz / span
    if "upstream_ticks" in r and done:
        r["upstream_cpu_us_per_q"] = r["upstream_ticks"] * 1e6 / hz / done
    if r.get("sent"):
        r["lost_pct"] = 100.0 * r.get("lost", 0) / r["sent"]
        r["noerror_pct"] = 100.0 * rcodes.get("NOERROR", 0) / max(1, done)
    print(json.dumps(r, sort_keys=True))


def _us(v):
    return "-" if v is None else "%.0f" % (v * 1e6)


def _f(v, fmt):
    return "-" if v is None else fmt % v


def table(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    cols = ["target", "proto", "offered qps", "achieved qps", "lost %", "NOERROR %",
            "avg µs", "sd µs", "p50 µs", "p99 µs", "p99.9 µs", "max µs",
            "target CPU µs/q", "target CPU %", "core0 busy %", "core1 busy %"]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        if not r.get("dnsperf_ok"):
            cells = [r.get("target", "?"), r.get("proto", "?"), str(r.get("offered", "?")),
                     "FAILED: " + str(r.get("note", "no dnsperf statistics"))]
            cells += [""] * (len(cols) - len(cells))
        else:
            cells = [
                r.get("target", "?"), r.get("proto", "?"), str(r.get("offered", "?")),
                _f(r.get("qps"), "%.0f"), _f(r.get("lost_pct"), "%.2f"),
                _f(r.get("noerror_pct"), "%.1f"),
                _us(r.get("avg_s")), _us(r.get("stddev_s")), _us(r.get("p50_s")),
                _us(r.get("p99_s")), _us(r.get("p99_9_s")), _us(r.get("max_s")),
                _f(r.get("target_cpu_us_per_q"), "%.1f"), _f(r.get("target_cpu_pct"), "%.0f"),
                _f(r.get("core0_busy_pct"), "%.0f"), _f(r.get("core1_busy_pct"), "%.0f"),
            ]
        out.append("| " + " | ".join(cells) + " |")
    print("\n".join(out))


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd = argv[1]
    if cmd == "freeports":
        freeports(int(argv[2]))
    elif cmd == "parse":
        parse(argv[2], argv[3:])
    elif cmd == "table":
        table(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
