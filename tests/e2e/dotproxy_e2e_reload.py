#!/usr/bin/python3
"""End-to-end cases for configuration reload (SIGHUP) and the systemd
notifications around it. The upstreams live in a TOML file that the cases
rewrite between reloads; flags carry only what stays. Uses the harness in
dotproxy_e2e.py (loopback only, bounded waits, children ended by PID).

    dotproxy_e2e_reload.py --dotproxy build/dotproxy --case reload_under_load
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import (  # noqa: E402
    DNSPERF, GOOD_QUESTIONS, LOOPBACK4, TLS_NAME, CaseSkip, case, check, free_port, make_query,
    query_and_compare, rcode_of, udp_exchange)
import dotproxy_e2e_metrics as M  # noqa: E402

_INHERITED = set(E.CASES)


def spec(u):
    return "%s:%d#%s" % (LOOPBACK4, u.dot_port, TLS_NAME)


def write_config(path, upstreams, extra=""):
    """A TOML file with `upstreams` (Unbounds) and `extra` lines, replaced
    whole (rename) so that a reload never reads half a file."""
    lines = [extra] if extra else []
    for u in upstreams:
        lines += ["[[upstream]]", 'address = "%s:%d"' % (LOOPBACK4, u.dot_port),
                  'name = "%s"' % TLS_NAME, ""]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def listen_line(ports):
    return "listen = [%s]" % ", ".join('"%s:%d"' % (LOOPBACK4, port) for port in ports)


def start_reloadable(h, upstreams, extra_flags=(), cache=False, prefix=(), file_extra="",
                     listen_in_file=False):
    """dotproxy --config FILE (the upstreams) with --metrics; p.config_path.
    listen_in_file: the listen address is in the file (so a reload can
    change it), not a flag."""
    path = os.path.join(h.dir, "reload%d.toml" % len(h.proxies))
    port, metrics_port = free_port(), free_port()
    if listen_in_file:
        file_extra = "\n".join(x for x in (listen_line([port]), file_extra) if x)
    write_config(path, upstreams, file_extra)
    args = ["--config", path, "--ca-file",
            h.pki.ca_pem, "--threads", "2", "--metrics", "%s:%d" % (LOOPBACK4, metrics_port)]
    if not listen_in_file:
        args += ["--listen", "%s:%d" % (LOOPBACK4, port)]
    if not cache:
        args += ["--cache-size", "0"]
    args += E.io_backend_args() + list(extra_flags)
    p = E.Proxy(h.need_exe(), h.dir, args, "dotproxy%d" % len(h.proxies), prefix)
    p.port, p.metrics_port, p.config_path = port, metrics_port, path
    h.proxies.append(p)
    h.wait_ready(p, "answer", 10.0)
    return p


def log_lines(p):
    with open(p.stderr_path, encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in f]


def wait_log(p, needle, count=1, timeout=8.0):
    """Waits (bounded) until `needle` appears `count` times in the log."""
    deadline = time.monotonic() + timeout
    lines = []
    for _ in range(400):
        lines = [l for l in log_lines(p) if needle in l]
        if len(lines) >= count or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    check(len(lines) >= count, "%d of %d %r lines in the log:\n%s" % (
        len(lines), count, needle, p.stderr_text()))
    return lines


def reload(p, upstreams, expect_count, file_extra=""):
    write_config(p.config_path, upstreams, file_extra)
    p.proc.send_signal(signal.SIGHUP)
    return wait_log(p, "reload applied", expect_count)


def answers_from(p, u):
    _, samples = M.scrape(p)
    return samples.get('dotproxy_upstream_answers_total{upstream="%s"}' % spec(u), 0)


@case
def reload_under_load(h):
    """dnsperf at 3000 qps over UDP for 14 s while ten SIGHUPs, one a second,
    alternate the upstreams between two Unbounds: no query lost, no SERVFAIL,
    ten `reload applied` lines, dotproxy_config_reloads_total 10, and both
    upstreams answered queries during the run. DOTPROXY_E2E_RELOAD_QPS sets
    another rate (for measuring at a fraction of capacity by hand)."""
    qps = int(os.environ.get("DOTPROXY_E2E_RELOAD_QPS", "3000"))
    if not os.access(DNSPERF, os.X_OK):
        raise CaseSkip("dnsperf not installed")
    u1, u2 = h.start_unbound(), h.start_unbound()
    p = start_reloadable(h, [u1])
    data = os.path.join(h.dir, "dnsperf.txt")
    with open(data, "w") as f:
        for qname, qtype in GOOD_QUESTIONS:
            f.write("%s %s\n" % (qname.rstrip("."), qtype))
    out_path = os.path.join(h.dir, "dnsperf.out")
    with open(out_path, "wb") as out:
        perf = subprocess.Popen([DNSPERF, "-s", LOOPBACK4, "-p", str(p.port), "-m", "udp", "-d",
                                 data, "-l", "14", "-Q", str(qps), "-c", "4", "-q", "500", "-t", "3"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.5)
        sets = [[u2], [u1]]
        for i in range(10):
            reload(p, sets[i % 2], i + 1)
            if i == 4:
                check(answers_from(p, u2) > 0, "no answers from the second upstream after reloads")
            time.sleep(1.0)
        rc = perf.wait(timeout=40)
    finally:
        if perf.poll() is None:
            perf.kill()
            perf.wait()
    with open(out_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    check(rc == 0, "dnsperf exit %s:\n%s" % (rc, text))
    stats = E.parse_dnsperf(text)
    check(stats["Queries sent"] >= 14 * qps * 0.5, "dnsperf sent only %d:\n%s" % (
        stats["Queries sent"], text))
    check(stats["Queries lost"] == 0, "%d of %d queries lost across 10 reloads:\n%s" % (
        stats["Queries lost"], stats["Queries sent"], text))
    bad = [w for w in stats["rcodes"].replace(",", " ").split()
           if w.isupper() and w not in ("NOERROR", "NXDOMAIN")]
    check(not bad, "rcodes other than NOERROR/NXDOMAIN across reloads: %s" % stats["rcodes"])
    _, samples = M.scrape(p)
    check(samples.get("dotproxy_config_reloads_total") == 10,
          "dotproxy_config_reloads_total = %s" % samples.get("dotproxy_config_reloads_total"))
    servfails = sum(v for k, v in samples.items() if k.startswith("dotproxy_servfail"))
    check(servfails == 0, "SERVFAIL counters rose: %s" % {
        k: v for k, v in samples.items() if k.startswith("dotproxy_servfail") and v})
    a1, a2 = answers_from(p, u1), answers_from(p, u2)
    check(a1 > 0 and a2 > 0, "answers by upstream: %s, %s" % (a1, a2))
    check(p.alive(), "dotproxy died")
    print("reloads=10 qps=%d sent=%d lost=%d answers u1=%d u2=%d %s" % (
        qps, stats["Queries sent"], stats["Queries lost"], a1, a2, stats["rcodes"]))


@case
def reload_invalid_keeps_old(h):
    """A file with an error is refused: the log names FILE:LINE, the old
    upstream keeps answering, dotproxy_config_reload_failures_total is 1 and
    dotproxy_config_last_reload_successful 0; fixing the file applies it."""
    u1, u2 = h.start_unbound(), h.start_unbound()
    p = start_reloadable(h, [u1])
    with open(p.config_path + ".tmp", "w") as f:
        f.write('query_timeout_ms = "soon"\n[[upstream]]\naddress = "%s:%d"\nname = "%s"\n' % (
            LOOPBACK4, u2.dot_port, TLS_NAME))
    os.replace(p.config_path + ".tmp", p.config_path)
    p.proc.send_signal(signal.SIGHUP)
    refused = wait_log(p, "reload refused")
    check("%s:1:" % p.config_path in refused[0], "no FILE:LINE in %r" % refused[0])
    before = answers_from(p, u1)
    for qname, qtype in GOOD_QUESTIONS[:3]:
        query_and_compare(h, u1, p, "udp", qname, qtype)
    check(answers_from(p, u1) >= before + 3, "the old upstream stopped answering")
    check(answers_from(p, u2) == 0, "the refused upstream got queries")
    _, samples = M.scrape(p)
    check(samples.get("dotproxy_config_reload_failures_total") == 1, "failures: %s" %
          samples.get("dotproxy_config_reload_failures_total"))
    check(samples.get("dotproxy_config_last_reload_successful") == 0, "last successful: %s" %
          samples.get("dotproxy_config_last_reload_successful"))
    reload(p, [u2], 1)
    for qname, qtype in GOOD_QUESTIONS[:3]:
        query_and_compare(h, u2, p, "udp", qname, qtype)
    check(answers_from(p, u2) >= 3, "the fixed file's upstream did not answer")
    _, samples = M.scrape(p)
    check(samples.get("dotproxy_config_last_reload_successful") == 1, "not successful after fix")
    print("refused: %s" % refused[0].split("reload refused", 1)[1][:120])


@case
def reload_keeps_cache_applies_acl(h):
    """With the cache on, an answer cached before a reload is served from the
    cache after it (dotproxy_cache_hits_total rises, the new upstream is not
    asked); a reload whose allow list excludes loopback makes queries go
    unanswered, and the next reload brings them back; restart-only keys
    (max_inflight) are named in the log and not applied."""
    u1, u2 = h.start_unbound(), h.start_unbound()
    # One shard: the second query must find the first one's cache.
    p = start_reloadable(h, [u1], cache=True, extra_flags=["--cache-size", "1000", "--threads", "1"])
    query_and_compare(h, u1, p, "udp", "txt.example.test.", "TXT")
    reload(p, [u2], 1)
    asked = 'dotproxy_upstream_queries_total{upstream="%s"}' % spec(u2)
    _, before = M.scrape(p)
    query_and_compare(h, u1, p, "udp", "txt.example.test.", "TXT")
    _, after = M.scrape(p)
    check(after["dotproxy_cache_hits_total"] == before["dotproxy_cache_hits_total"] + 1,
          "no cache hit after the reload: %s -> %s" % (before["dotproxy_cache_hits_total"],
                                                       after["dotproxy_cache_hits_total"]))
    check(after.get(asked, 0) == before.get(asked, 0), "the new upstream was asked for a cached name")
    lines = reload(p, [u2], 2, file_extra='allow = ["10.0.0.0/8"]\nmax_inflight = 1000')
    check("not applied until restart: max_inflight" in lines[-1], "restart-only key not named: %r" %
          lines[-1])
    wire, _ = udp_exchange(p.port, make_query("a.example.test.").to_wire(), timeout=1.0)
    check(wire is None, "answered although loopback is no longer allowed")
    reload(p, [u2], 3)
    query_and_compare(h, u2, p, "udp", "a.example.test.", "A")
    print("cache hit kept across reload; ACL applied and lifted")


def tcp_refused(port):
    try:
        socket.create_connection((LOOPBACK4, port), timeout=1.0).close()
    except OSError:
        return True
    return False


@case
def reload_listen_addresses(h):
    """listen in the file: a reload that adds an address serves it over UDP
    and TCP at once; one that removes the first closes it (no UDP answer,
    TCP refused) while the other keeps serving; an address taken by another
    socket is refused as a whole (`reload partly applied`, the old addresses
    stay, dotproxy_config_reload_failures_total 1)."""
    u = h.start_unbound()
    p = start_reloadable(h, [u], listen_in_file=True)
    a, b = p.port, free_port()
    reload(p, [u], 1, file_extra=listen_line([a, b]))
    for port in (a, b):
        p.port = port
        query_and_compare(h, u, p, "udp", "a.example.test.", "A")
        query_and_compare(h, u, p, "tcp", "txt.example.test.", "TXT")
    reload(p, [u], 2, file_extra=listen_line([b]))
    p.port = b
    query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    query_and_compare(h, u, p, "tcp", "a.example.test.", "A")
    deadline = time.monotonic() + 3.0
    for _ in range(30):
        gone = udp_exchange(a, make_query("a.example.test.").to_wire(), timeout=0.3)[0] is None
        if (gone and tcp_refused(a)) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    check(gone and tcp_refused(a), "removed address %d still served" % a)
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind((LOOPBACK4, 0))
    try:
        c = taken.getsockname()[1]
        write_config(p.config_path, [u], listen_line([b, c]))
        p.proc.send_signal(signal.SIGHUP)
        lines = wait_log(p, "reload partly applied")
        check("listen addresses kept" in lines[0], "no reason: %r" % lines[0])
    finally:
        taken.close()
    query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    _, samples = M.scrape(p)
    check(samples.get("dotproxy_config_reload_failures_total") == 1, "failures: %s" %
          samples.get("dotproxy_config_reload_failures_total"))
    print("listen %d,%d -> %d; taken %d refused" % (a, b, b, c))


@case
def reload_systemd_notify(h):
    """Under a NOTIFY_SOCKET (as systemd sets it) dotproxy sends READY=1 with
    STATUS=, on SIGHUP RELOADING=1 (with MONOTONIC_USEC) then READY=1, and with
    WATCHDOG_USEC set, WATCHDOG=1 keep-alives at half the interval while its
    shards turn; STOPPING=1 at SIGTERM."""
    u1 = h.start_unbound()
    path = os.path.join(h.dir, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    messages = []
    done = threading.Event()

    def collect():
        for _ in range(2000):
            if done.is_set():
                return
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            except socket.timeout:
                pass

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    env = ["/usr/bin/env", "NOTIFY_SOCKET=%s" % path, "WATCHDOG_USEC=1000000"]
    try:
        p = start_reloadable(h, [u1], prefix=env)
        time.sleep(1.6)
        p.proc.send_signal(signal.SIGHUP)
        wait_log(p, "reload applied")
        time.sleep(0.3)
        rc, _ = p.stop()
        time.sleep(0.3)
    finally:
        done.set()
        reader.join(timeout=3)
        sock.close()
    texts = [m for _, m in messages]
    check(rc == 0, "exit %s" % rc)
    ready = [i for i, m in enumerate(texts) if "READY=1" in m.split("\n")]
    check(ready and "STATUS=serving on" in texts[ready[0]], "no READY=1 with STATUS: %r" % texts)
    reloading = [i for i, m in enumerate(texts) if "RELOADING=1" in m.split("\n")]
    check(len(reloading) == 1 and "MONOTONIC_USEC=" in texts[reloading[0]],
          "RELOADING=1 with MONOTONIC_USEC: %r" % texts)
    check(any(i > reloading[0] for i in ready[1:]), "no READY=1 after RELOADING=1: %r" % texts)
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    check(len(pings) >= 3, "%d WATCHDOG=1 in ~2.5 s: %r" % (len(pings), texts))
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    check(max(gaps) < 0.9, "watchdog gaps %r (interval 1 s: pings every 0.5 s)" % gaps)
    check(any("STOPPING=1" in m for m in texts), "no STOPPING=1: %r" % texts)
    print("notify: %d messages, %d watchdog pings, gaps max %.2f s" % (
        len(texts), len(pings), max(gaps)))


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
