#!/usr/bin/python3
"""Helper for bench/load/run.sh (stdlib only).

Subcommands:
  freeports N                 print N TCP+UDP-free ports on 127.0.0.1, one per line
  parse RAW [key=value ...]   parse one dnsperf output file, merge the key=value
                              metadata (CPU ticks etc.), print one JSON object
  table RUNS.jsonl            print the Markdown results table (dnsperf runs)
  burst PORT QUERIES SOCKETS WINDOW PREFIX [key=value ...]
                              send QUERIES unique queries at once from SOCKETS UDP
                              sockets to 127.0.0.1:PORT, count answers within WINDOW
                              seconds, print one JSON object
  bursttable RUNS.jsonl       print the Markdown table of burst runs
  ratios RUNS.jsonl           print the ratios section (Markdown)
"""
import json
import math
import re
import select
import socket
import struct
import sys
import time


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
    rows = [r for r in rows if r.get("scenario") != "burst"]
    cols = ["target", "scenario", "proto", "offered qps", "achieved qps", "lost %", "NOERROR %",
            "avg µs", "sd µs", "p50 µs", "p99 µs", "p99.9 µs", "max µs",
            "target CPU µs/q", "target CPU %", "core0 busy %", "core1 busy %"]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        if not r.get("dnsperf_ok"):
            cells = [r.get("target", "?"), r.get("scenario", "-"), r.get("proto", "?"),
                     str(r.get("offered", "?")), "FAILED: " + str(r.get("note", "no dnsperf statistics"))]
            cells += [""] * (len(cols) - len(cells))
        else:
            cells = [
                r.get("target", "?"), r.get("scenario", "-"), r.get("proto", "?"),
                str(r.get("offered", "?")),
                _f(r.get("qps"), "%.0f"), _f(r.get("lost_pct"), "%.2f"),
                _f(r.get("noerror_pct"), "%.1f"),
                _us(r.get("avg_s")), _us(r.get("stddev_s")), _us(r.get("p50_s")),
                _us(r.get("p99_s")), _us(r.get("p99_9_s")), _us(r.get("max_s")),
                _f(r.get("target_cpu_us_per_q"), "%.1f"), _f(r.get("target_cpu_pct"), "%.0f"),
                _f(r.get("core0_busy_pct"), "%.0f"), _f(r.get("core1_busy_pct"), "%.0f"),
            ]
        out.append("| " + " | ".join(cells) + " |")
    print("\n".join(out))


def _query(qid, name):
    """A standard query (RD=1, A/IN) with an EDNS OPT advertising 1232 bytes."""
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    q += b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 0)
    return q


def _ticks(pid):
    """utime+stime (clock ticks, all threads) of process `pid`, or None."""
    if not pid:
        return None
    try:
        with open("/proc/%s/stat" % pid) as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def burst(port, queries, nsock, window, prefix, meta):
    """Sends `queries` queries as fast as possible, spread round-robin over
    `nsock` UDP sockets, then collects answers for `window` seconds (bounded)."""
    port, queries, nsock, window = int(port), int(queries), int(nsock), float(window)
    if not (1 <= nsock <= 1000 and 1 <= queries <= 100000 and 0 < window <= 30):
        sys.exit("burst: out of range")
    socks = []
    for _ in range(nsock):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("127.0.0.1", 0))
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    # Per socket, IDs 1..k are unique; the name makes each query a cache miss.
    packets = []
    for i in range(queries):
        si, k = i % nsock, i // nsock + 1
        packets.append((si, k, _query(k, "%s-s%d-q%d.bench.test" % (prefix, si, k))))
    pid = next((kv.split("=", 1)[1] for kv in meta if kv.startswith("target_pid=")), None)
    ticks0 = _ticks(pid)
    sent_at = {}
    send_errors = 0
    t0 = time.monotonic()
    for si, k, pkt in packets:
        try:
            socks[si].send(pkt)
            sent_at[(si, k)] = time.monotonic()
        except OSError:
            send_errors += 1
    t_sent = time.monotonic()
    fd_to_i = {s.fileno(): i for i, s in enumerate(socks)}
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    lat, rcodes, dup, last = [], {}, 0, None
    got = set()
    deadline = t0 + window
    while len(got) < len(sent_at):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for fd, _ in poller.poll(left * 1000):
            i = fd_to_i[fd]
            for _ in range(1000):  # bounded drain of one socket
                try:
                    data = socks[i].recv(4096)
                except BlockingIOError:
                    break
                now = time.monotonic()
                if len(data) < 12:
                    continue
                qid = struct.unpack(">H", data[:2])[0]
                key = (i, qid)
                if key not in sent_at:
                    continue
                if key in got:
                    dup += 1
                    continue
                if now > deadline:
                    break
                got.add(key)
                rc = data[3] & 0x0F
                name = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}.get(rc, "RCODE%d" % rc)
                rcodes[name] = rcodes.get(name, 0) + 1
                lat.append(now - sent_at[key])
                last = now - t0
    ticks1 = _ticks(pid)
    for s in socks:
        s.close()
    lat.sort()
    r = {
        "scenario": "burst", "sent": len(sent_at), "send_errors": send_errors,
        "answered": len(got), "rcodes": rcodes, "duplicates": dup,
        "send_s": t_sent - t0, "last_answer_s": last, "window_s": window, "sockets": nsock,
        "p50_s": percentile(lat, 50), "p99_s": percentile(lat, 99),
        "max_s": lat[-1] if lat else None,
    }
    r["answered_pct"] = 100.0 * r["answered"] / max(1, queries)
    for kv in meta:
        k, _, v = kv.partition("=")
        try:
            v = int(v)
        except ValueError:
            pass
        r[k] = v
    if ticks0 is not None and ticks1 is not None:
        r["target_ticks"] = ticks1 - ticks0
    hz = r.get("clk_tck") or 100
    if "target_ticks" in r and r["answered"]:
        r["target_cpu_us_per_q"] = r["target_ticks"] * 1e6 / hz / r["answered"]
    r["dnsperf_ok"] = True
    print(json.dumps(r, sort_keys=True))


def _load(path):
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def bursttable(path):
    rows = [r for r in _load(path) if r.get("scenario") == "burst"]
    cols = ["target", "sent", "answered ≤ window", "answered %", "NOERROR", "SERVFAIL",
            "other rcodes", "send time ms", "p50 ms", "p99 ms", "last answer ms",
            "target CPU µs/q"]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    ms = lambda v: "-" if v is None else "%.1f" % (v * 1e3)
    for r in rows:
        if "answered" not in r:
            out.append("| %s | FAILED: %s |%s" % (r.get("target"), r.get("note", "?"), " |" * (len(cols) - 2)))
            continue
        rc = dict(r.get("rcodes", {}))
        noerr, sf = rc.pop("NOERROR", 0), rc.pop("SERVFAIL", 0)
        other = ", ".join("%s %d" % kv for kv in sorted(rc.items())) or "0"
        out.append("| " + " | ".join([
            r["target"], str(r["sent"]), str(r["answered"]), "%.1f" % r["answered_pct"],
            str(noerr), str(sf), other, ms(r.get("send_s")), ms(r.get("p50_s")),
            ms(r.get("p99_s")), ms(r.get("last_answer_s")),
            _f(r.get("target_cpu_us_per_q"), "%.1f")]) + " |")
    print("\n".join(out))


PEERS = ("dnsdist", "unbound_fwd", "kresd")


def ratios(path):
    rows = [r for r in _load(path) if r.get("dnsperf_ok") and r.get("scenario") != "burst"]

    def get(target, scenario, proto, offered):
        for r in rows:
            if (r.get("target"), r.get("scenario"), r.get("proto"), str(r.get("offered"))) == \
                    (target, scenario, proto, str(offered)):
                return r
        return None

    def cpu(r):
        return None if r is None else r.get("target_cpu_us_per_q")

    flagged = []

    def note(t, r):
        # A fast SERVFAIL is not a served query: say so next to the figure.
        if r is not None and r.get("noerror_pct") is not None and r["noerror_pct"] < 99:
            flagged.append("%s %s/%s/%s: NOERROR %.1f%%" % (
                t, r.get("scenario"), r.get("proto"), r.get("offered"), r["noerror_pct"]))

    def ratio(a, b):
        return "-" if a is None or b in (None, 0) else "%.2f" % (a / b)

    def f1(v):
        return "-" if v is None else "%.1f" % v

    out = []
    for r in rows:
        if r.get("scenario") in ("hit", "miss"):
            note(r.get("target"), r)
    d, rf = get("dotproxy", "hit", "udp", "max"), get("reflector", "hit", "udp", "max")
    out.append("- **Cache hits (UDP, max) vs the bare reflector:** CPU µs/q dotproxy %s / "
               "reflector %s = **%s×**; QPS dotproxy %s / reflector %s = **%s**" % (
                   f1(cpu(d)), f1(cpu(rf)), ratio(cpu(d), cpu(rf)),
                   _f(d and d.get("qps"), "%.0f"), _f(rf and rf.get("qps"), "%.0f"),
                   ratio(d and d.get("qps"), rf and rf.get("qps"))))
    for offered in ("max", "5000"):
        d = get("dotproxy", "miss", "udp", offered)
        peers = [(p, get(p, "miss", "udp", offered)) for p in PEERS]
        peers = [(p, r) for p, r in peers if cpu(r) is not None]
        detail = ", ".join("%s %s" % (p, f1(cpu(r))) for p, r in peers) or "no peer data"
        if peers:
            bp, br = min(peers, key=lambda pr: cpu(pr[1]))
            out.append("- **Misses (UDP, %s qps offered), CPU µs/q:** dotproxy %s vs best peer "
                       "%s %s = **%s×** (peers: %s)" % (
                           offered, f1(cpu(d)), bp, f1(cpu(br)), ratio(cpu(d), cpu(br)), detail))
        else:
            out.append("- **Misses (UDP, %s qps offered):** dotproxy %s CPU µs/q; %s" % (
                offered, f1(cpu(d)), detail))
    d, dd = get("dotproxy", "hit", "tcp", "max"), get("dnsdist", "hit", "tcp", "max")
    out.append("- **TCP clients, cache hits (max), CPU µs/q:** dotproxy %s / dnsdist %s = **%s×** "
               "(QPS %s vs %s)" % (f1(cpu(d)), f1(cpu(dd)), ratio(cpu(d), cpu(dd)),
                                   _f(d and d.get("qps"), "%.0f"), _f(dd and dd.get("qps"), "%.0f")))
    for scen in ("hit", "miss"):
        offered = sorted({str(r.get("offered")) for r in rows
                          if r.get("proto") == "dot" and r.get("scenario") == scen})
        for o in offered:
            d, dd = get("dotproxy", scen, "dot", o), get("dnsdist", scen, "dot", o)
            if d is None and dd is None:
                continue
            out.append("- **DoT clients (dnsperf -m dot), %s, %s qps offered:** CPU µs/q dotproxy "
                       "%s / dnsdist %s = **%s×**; QPS %s vs %s; p99 %s vs %s µs" % (
                           "cache hits" if scen == "hit" else "misses", o, f1(cpu(d)), f1(cpu(dd)),
                           ratio(cpu(d), cpu(dd)), _f(d and d.get("qps"), "%.0f"),
                           _f(dd and dd.get("qps"), "%.0f"), _us(d and d.get("p99_s")),
                           _us(dd and dd.get("p99_s"))))
    p99 = []
    for t in ("dotproxy",) + PEERS:
        r = get(t, "miss", "udp", "20000")
        if r is not None and r.get("p99_s") is not None:
            p99.append((t, r["p99_s"], r.get("lost_pct")))
    if p99:
        d99 = next((v for t, v, _ in p99 if t == "dotproxy"), None)
        best = min((pr for pr in p99 if pr[0] != "dotproxy"), key=lambda pr: pr[1], default=None)
        out.append("- **p99 latency at 20000 qps offered (UDP misses):** " + ", ".join(
            "%s %s µs (lost %s%%)" % (t, _us(v), _f(l, "%.2f")) for t, v, l in p99) +
            ("; dotproxy / best peer (%s) = **%s×**" % (best[0], ratio(d99, best[1])) if best and d99 else ""))
    if flagged:
        out.append("- **Rows with errors** (their QPS/CPU count SERVFAIL answers as served): " +
                   "; ".join(flagged))
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
    elif cmd == "burst":
        burst(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7:])
    elif cmd == "bursttable":
        bursttable(argv[2])
    elif cmd == "ratios":
        ratios(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
