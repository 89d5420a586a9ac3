#!/usr/bin/python3
"""End-to-end cases for protecting the proxy (issue 10): slowloris clients
closed by the message deadline, memory of slow readers bounded and returned,
UDP answers capped at --max-udp-size, malformed structure refused at the edge
without reaching the upstream, fast recovery when the only upstream flaps,
a TCP connection flood, and the pipelining limit held within one write
(overload cases: dotproxy_e2e_overload.py). Uses the harness in dotproxy_e2e.py and the
counters of dotproxy_e2e_features.py (same rules: loopback only, every wait
and loop bounded, every child killed by PID).

    dotproxy_e2e_protect.py --list
    dotproxy_e2e_protect.py --dotproxy build/dotproxy --case protect_slowloris [--keep]

Exit status: 0 pass, 1 fail, 77 skip. Cases print what they measure.
"""

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.rcode  # noqa: E402

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import (  # noqa: E402
    LOOPBACK4, CaseFailure, CaseSkip, case, check, describe, make_query, parse_or_fail,
    rcode_of, tcp_connect, tcp_exchange, udp_exchange,
)
# Importing the features cases registers them: dropped in main.
from dotproxy_e2e_features import counters, start_unbound_x, up_spec  # noqa: E402
_INHERITED = set(E.CASES)

MIB = 1024 * 1024
# TcpClients::kClientBytes: 96 KiB answers + 8 KiB queries per client slot.
CLIENT_SLOT = 104 * 1024


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise CaseFailure("no VmRSS for pid %d" % pid)


def framed(wire):
    return struct.pack("!H", len(wire)) + wire


# --------------------------------------------------------------------------


@case
def protect_slowloris(h):
    """200 TCP connections trickling one byte every 0.5 s of a message that
    never completes are all closed by the message deadline (default 3000 ms;
    idle timeout 10 s, which the trickle alone would keep resetting) within
    deadline + 1.5 s, none before 90% of it; a normal TCP client is answered
    throughout; tcp_message_timeout_closed counts them."""
    u = h.start_unbound()
    p = h.start_proxy(u, extra=["--threads", "1"])
    ref = u.reference("a.example.test.", "A")
    n, deadline = 200, 3.0
    # The prefix promises 64 bytes; 1 more byte every 0.5 s: 32 s to finish.
    tricklers = []
    try:
        for i in range(n):
            s = tcp_connect(p.port)
            s.setblocking(False)
            tricklers.append(s)
        opened = {}
        closed = {}
        t0 = time.monotonic()
        for s in tricklers:
            s.send(b"\x00")
            opened[s] = time.monotonic()
        served = 0
        next_trickle = t0 + 0.5
        for _ in range(2000):
            now = time.monotonic()
            if len(closed) == n or now - t0 > deadline + 3.0:
                break
            # A normal client, a fresh connection each time, is answered.
            wire = make_query("a.example.test.", "A").to_wire()
            try:
                resp, secs = tcp_exchange(p.port, wire, timeout=2.0)
            except (socket.timeout, EOFError, OSError) as e:
                raise CaseFailure("normal TCP client beside %d tricklers: no answer (%r)" % (
                    n - len(closed), e))
            E.check_same_answer("normal TCP client beside tricklers", resp, wire, ref)
            served += 1
            if now >= next_trickle:
                for s in tricklers:
                    if s not in closed:
                        try:
                            s.send(b"\x40")
                        except (BlockingIOError, OSError):
                            pass
                next_trickle += 0.5
            open_ones = [s for s in tricklers if s not in closed]
            readable, _, _ = select.select(open_ones, [], [], 0.05) if open_ones else ([], [], [])
            for s in readable:
                try:
                    data = s.recv(64)
                except (ConnectionResetError, OSError):
                    data = b""
                if not data:
                    closed[s] = time.monotonic()
        times = sorted(closed[s] - opened[s] for s in closed)
    finally:
        for s in tricklers:
            s.close()
    check(len(times) == n, "%d of %d trickling connections still open %.1f s after their first byte"
          % (n - len(times), n, deadline + 3.0))
    print("slowloris: %d connections closed %.2f..%.2f s after their first byte (deadline %.1f s); "
          "%d normal TCP queries answered meanwhile" % (n, times[0], times[-1], deadline, served))
    check(times[0] >= 0.9 * deadline, "a trickler was closed after only %.2f s" % times[0])
    check(times[-1] <= deadline + 1.5, "the last trickler was closed after %.2f s" % times[-1])
    check(served >= 10, "only %d normal queries answered" % served)
    c = counters(p)
    check(c.get("tcp_message_timeout_closed") == n, "tcp_message_timeout_closed=%d, want %d" % (
        c.get("tcp_message_timeout_closed"), n))
    check(c.get("tcp_idle_closed") == 0, "tcp_idle_closed=%d" % c.get("tcp_idle_closed"))


def _pipeline_without_reading(port, clients, queries_per_client, wire_for):
    """Opens `clients` connections with a small receive buffer and writes
    `queries_per_client` framed queries on each without reading. Returns the
    sockets (still open)."""
    socks = []
    for i in range(clients):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(2.0)
        s.connect((LOOPBACK4, port))
        s.setblocking(False)
        socks.append(s)
    for s in socks:
        batch = b"".join(framed(wire_for(j)) for j in range(queries_per_client))
        try:
            s.send(batch)  # what does not fit in the socket buffers is dropped: fine
        except (BlockingIOError, OSError):
            pass
    return socks


@case
def protect_slow_readers_memory(h):
    """200 TCP clients pipelining 400 queries each (answers ~1.5 KB, from the
    cache) without ever reading: dotproxy's RSS (VmRSS) stays within the
    baseline + 200 client slots of 104 KiB (the per-client bound: a 96 KiB
    answer buffer + 8 KiB query buffer) + 8 MiB, and after they close it is
    back within baseline + 200 x 12 KiB (what a closed client keeps: the first
    answer page and the query buffer) + 4 MiB of allocator and kernel noise.
    Normal clients are answered throughout. One shard."""
    u = h.start_unbound()
    p = h.start_proxy(u, extra=["--threads", "1", "--cache-size", "1000"])
    ref = u.reference("big.example.test.", "TXT")
    # Warm: the cache entry, one TCP client served, page faults of start-up.
    for _ in range(3):
        q = make_query("big.example.test.", "TXT").to_wire()
        resp, _ = tcp_exchange(p.port, q)
        E.check_same_answer("warm-up", resp, q, ref)
    time.sleep(0.5)
    base = rss_bytes(p.proc.pid)
    n, per = 200, 400
    socks = _pipeline_without_reading(
        p.port, n, per, lambda j: make_query("big.example.test.", "TXT", qid=j).to_wire())
    peak = base
    try:
        for _ in range(20):  # 2 s of sampling while they sit there
            time.sleep(0.1)
            peak = max(peak, rss_bytes(p.proc.pid))
        q = make_query("a.example.test.", "A").to_wire()
        resp, secs = udp_exchange(p.port, q, timeout=2.0)
        check(resp is not None and rcode_of(resp) == dns.rcode.NOERROR,
              "UDP beside slow readers: %s" % describe(resp))
        resp, secs = tcp_exchange(p.port, q, timeout=2.0)
        check(rcode_of(resp) == dns.rcode.NOERROR, "TCP beside slow readers: %s" % describe(resp))
    finally:
        for s in socks:
            s.close()
    after = base
    for _ in range(30):  # the closes are seen at once; give it 3 s
        time.sleep(0.1)
        after = rss_bytes(p.proc.pid)
        if after <= base + n * 12 * 1024 + 4 * MIB:
            break
    c = counters(p)
    print("slow readers: RSS baseline %.1f MiB, peak %.1f MiB (+%.1f), after close %.1f MiB (+%.1f); "
          "bound during +%.1f MiB, after +%.1f MiB; tcp_slow_closed=%d" % (
              base / MIB, peak / MIB, (peak - base) / MIB, after / MIB, (after - base) / MIB,
              (n * CLIENT_SLOT + 8 * MIB) / MIB, (n * 12 * 1024 + 4 * MIB) / MIB,
              c.get("tcp_slow_closed")))
    check(peak - base <= n * CLIENT_SLOT + 8 * MIB,
          "RSS grew by %.1f MiB with %d slow readers (bound %.1f MiB)" % (
              (peak - base) / MIB, n, (n * CLIENT_SLOT + 8 * MIB) / MIB))
    check(after - base <= n * 12 * 1024 + 4 * MIB,
          "RSS %.1f MiB above the baseline after the slow readers closed" % ((after - base) / MIB))
    check(p.alive(), "dotproxy died")


@case
def protect_udp_size_cap(h):
    """Amplification: a ~45-byte UDP query with EDNS 4096 for a name whose
    answer is over 1232 bytes gets TC=1 within 1232 bytes by default; over
    TCP the full answer; with --max-udp-size 4096 the full answer over UDP."""
    u = h.start_unbound()
    ref = u.reference("big.example.test.", "TXT")
    full = len(ref.to_wire())
    check(1232 < full < 4096, "test data: big answer %d bytes" % full)
    p = h.start_proxy(u)
    q = make_query("big.example.test.", "TXT", edns=0, payload=4096)
    wire = q.to_wire()
    resp, _ = udp_exchange(p.port, wire)
    msg = parse_or_fail("UDP EDNS 4096 default cap", resp)
    print("default: %d-byte query drew %d bytes over UDP (TC=%d); the whole answer is %d bytes" % (
        len(wire), len(resp), 1 if msg.flags & dns.flags.TC else 0, full))
    check(msg.flags & dns.flags.TC, "no TC on a %d-byte answer" % len(resp))
    check(len(resp) <= 1232, "UDP answer %d bytes > 1232" % len(resp))
    check(resp[:2] == wire[:2], "ID not echoed")
    resp, _ = tcp_exchange(p.port, wire)
    E.check_same_answer("TCP after TC", resp, wire, ref)
    c = counters(p)
    check(c.get("truncated") == 1, "truncated=%d" % c.get("truncated"))
    p2 = h.start_proxy(u, extra=["--max-udp-size", "4096"])
    wire = make_query("big.example.test.", "TXT", edns=0, payload=4096).to_wire()
    resp, _ = udp_exchange(p2.port, wire)
    E.check_same_answer("UDP with --max-udp-size 4096", resp, wire, ref)
    # A client advertising less still gets less.
    wire = make_query("big.example.test.", "TXT", edns=0, payload=1000).to_wire()
    resp, _ = udp_exchange(p2.port, wire)
    check(len(resp) <= 1000 and (resp[2] & 0x02), "EDNS 1000 with --max-udp-size 4096: %d bytes" % len(resp))


# ---- malformed structure


def _a_record(owner=b"\xc0\x0c"):
    return owner + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 1])


def _opt(size=1232):
    return b"\x00" + struct.pack("!HHIH", 41, size, 0, 0)


def _tsig(key=b"\x03key\x00", original_id=0x1234):
    rdata = b"\x0bhmac-sha256\x00" + b"\x00\x00\x60\x00\x00\x01" + struct.pack("!HH", 300, 32) \
        + b"\xab" * 32 + struct.pack("!HHH", original_id, 0, 0)
    return key + struct.pack("!HHIH", 250, 255, 0, len(rdata)) + rdata


def _query(qid, an=b"", ns=b"", ar=b"", counts=None):
    question = b"\x01a\x07example\x04test\x00" + struct.pack("!HH", 1, 1)
    an_n, ns_n, ar_n = counts
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, an_n, ns_n, ar_n)
    return header + question + an + ns + ar


MALFORMED = [
    # (label, wire, expected rcode)
    ("answer record in a QUERY", _query(0x1001, an=_a_record(), counts=(1, 0, 0)), dns.rcode.FORMERR),
    ("authority record in a QUERY", _query(0x1002, ns=_a_record(), counts=(0, 1, 0)), dns.rcode.FORMERR),
    ("OPT in the answer section", _query(0x1003, an=_opt(), counts=(1, 0, 0)), dns.rcode.FORMERR),
    ("OPT in the authority section", _query(0x1004, ns=_opt(), ar=_opt(), counts=(0, 1, 1)),
     dns.rcode.FORMERR),
    ("two OPT records", _query(0x1005, ar=_opt() + _opt(), counts=(0, 0, 2)), dns.rcode.FORMERR),
    ("TSIG not last", _query(0x1006, ar=_tsig() + _opt(), counts=(0, 0, 2)), dns.rcode.FORMERR),
    ("TSIG in the answer section", _query(0x1007, an=_tsig(), counts=(1, 0, 0)), dns.rcode.FORMERR),
    ("TSIG-signed query (no key here)", _query(0x1008, ar=_opt() + _tsig(original_id=0x1008),
                                               counts=(0, 0, 2)), dns.rcode.NOTAUTH),
]


@case
def protect_malformed_refused(h):
    """Queries with an answer or authority record, an OPT outside the
    additional section, two OPTs, or a misplaced TSIG get FORMERR; a
    TSIG-signed one NOTAUTH (RFC 8945 §5.2.1: no key is known here); over UDP
    and TCP, ID echoed. None of them reaches the upstream: its query counter
    (dotproxy's per-upstream `queries`) and `forwarded` do not move."""
    u = h.start_unbound()
    p = h.start_proxy(u)
    before = counters(p)
    up_before = before.upstream(u.dot_port)["queries"]
    for label, wire, want in MALFORMED:
        for transport, fn in (("udp", udp_exchange), ("tcp", tcp_exchange)):
            resp, _ = fn(p.port, wire, timeout=2.0)
            check(resp is not None, "%s over %s: no reply" % (label, transport))
            rc = resp[3] & 0x0F
            check(rc == want, "%s over %s: rcode %d, want %d (%s)" % (
                label, transport, rc, want, dns.rcode.to_text(want)))
            check(resp[:2] == wire[:2], "%s: ID not echoed" % label)
            check(resp[2] & 0x80, "%s: QR not set" % label)
            if want == dns.rcode.NOTAUTH:
                ar = struct.unpack("!H", resp[10:12])[0]
                check(ar == 2, "%s: ARCOUNT %d, want OPT + TSIG" % (label, ar))
                check(resp[-4:-2] == struct.pack("!H", 17), "%s: TSIG error is not BADKEY: %s" % (
                    label, resp[-6:].hex()))
    # A good query still goes through, so the counter works.
    E.query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    after = counters(p)
    up_after = after.upstream(u.dot_port)["queries"]
    print("malformed: %d kinds x 2 transports refused; upstream queries %d -> %d (one good query)" % (
        len(MALFORMED), up_before, up_after))
    check(up_after - up_before == 1, "upstream queries rose by %d (want 1: the good query)" % (
        up_after - up_before))
    check(after.get("forwarded") - before.get("forwarded") == 1, "forwarded rose by %d" % (
        after.get("forwarded") - before.get("forwarded")))
    check(after.get("formerr") - before.get("formerr") == 2 * (len(MALFORMED) - 1),
          "formerr=%d" % after.get("formerr"))
    check(after.get("notauth_tsig") - before.get("notauth_tsig") == 2,
          "notauth_tsig=%d" % after.get("notauth_tsig"))


# ---- flapping upstream


def _dnsperf_background(h, port, qps, seconds, names, tag, clients=8, extra=()):
    data = os.path.join(h.dir, "dnsperf-%s.txt" % tag)
    with open(data, "w") as f:
        for name in names:
            f.write("%s A\n" % name.rstrip("."))
    out = open(os.path.join(h.dir, "dnsperf-%s.out" % tag), "w")
    argv = [E.DNSPERF, "-s", LOOPBACK4, "-p", str(port), "-d", data, "-l", str(seconds),
            "-c", str(clients), "-q", "500", "-t", "2"] + list(extra)
    if qps:
        argv += ["-Q", str(qps)]
    proc = E.spawn(argv, out, subprocess.STDOUT)
    return proc, out


@case
def protect_flap_recovery(h):
    """The only upstream killed (SIGKILL, by PID) and restarted on the same
    port 5 times, every 3 s, under 2000 qps of dnsperf: answers through
    dotproxy resume within 1 s of the upstream being ready again in every
    cycle; dotproxy stays up and its RSS does not grow (every sample after
    the first cycle within 4 MiB of that cycle's)."""
    if not os.access(E.DNSPERF, os.X_OK):
        raise CaseSkip("dnsperf not installed")
    u = h.start_unbound()
    p = h.start_proxy(u, extra=["--query-timeout", "1000"])
    cycles = 5
    load, load_out = _dnsperf_background(h, p.port, 2000, cycles * 3 + 6, ["a.example.test."], "flap")
    answers = []  # monotonic times of NOERROR answers seen by the prober
    outcomes = []  # (monotonic time, "timeout" or the rcode's name) of the others
    stop = threading.Event()

    def prober():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.3)
        try:
            for _ in range(100000):
                if stop.is_set():
                    return
                wire = make_query("txt.example.test.", "TXT").to_wire()
                try:
                    s.sendto(wire, (LOOPBACK4, p.port))
                    resp = s.recv(4096)
                    if resp[:2] == wire[:2] and resp[3] & 0x0F == 0:
                        answers.append(time.monotonic())
                    else:
                        outcomes.append((time.monotonic(), dns.rcode.to_text(resp[3] & 0x0F)))
                except (socket.timeout, OSError):
                    outcomes.append((time.monotonic(), "timeout"))
                time.sleep(0.02)
        finally:
            s.close()

    t = threading.Thread(target=prober, daemon=True)
    t.start()
    results = []
    rss = [rss_bytes(p.proc.pid)]
    try:
        time.sleep(1.0)
        for cycle in range(cycles):
            os.kill(u.proc.pid, signal.SIGKILL)
            u.proc.wait(timeout=5)
            u.proc = None
            u._logf.close()
            u._logf = None
            time.sleep(1.5)
            t_spawn = time.monotonic()
            u.start()  # returns once Unbound answers over UDP and DoT itself
            t_ready = time.monotonic()
            first = None
            for _ in range(1000):  # 10 ms apart: bounded by the 5 s below too
                later = [a for a in answers if a > t_spawn]
                if later:
                    first = later[0]
                    break
                if time.monotonic() - t_ready > 5.0:
                    break
                time.sleep(0.01)
            if first is None:
                seen = {}
                for t_o, what in list(outcomes):
                    if t_o > t_spawn:
                        seen[what] = seen.get(what, 0) + 1
                os.kill(p.proc.pid, signal.SIGUSR1)  # its counters, into the log shown below
                time.sleep(0.3)
                raise CaseFailure("cycle %d: no NOERROR within 5 s of the upstream's return "
                                  "(ready %.2f s after spawn); the prober got instead: %s"
                                  % (cycle, t_ready - t_spawn, seen or "nothing"))
            results.append((first - t_spawn, first - t_ready))
            check(p.alive(), "dotproxy died in cycle %d" % cycle)
            rss.append(rss_bytes(p.proc.pid))
            rest = 3.0 - (time.monotonic() - t_spawn) - 1.5
            if rest > 0:
                time.sleep(rest)
    finally:
        stop.set()
        t.join(timeout=3)
        E.stop_process(load)
        load_out.close()
    print("flap recovery (first NOERROR after restart): " + ", ".join(
        "%.2f s after spawn / %+.2f s after ready" % r for r in results))
    print("RSS across cycles (MiB): " + " ".join("%.1f" % (r / MIB) for r in rss))
    worst = max(r[1] for r in results)
    check(worst <= 1.0, "answers resumed %.2f s after the upstream was ready (target 1 s)" % worst)
    # The first outage touches pages for good (reconnect paths, sibling
    # connections under load): growth is judged from the first cycle on.
    check(max(rss[1:]) - rss[1] <= 4 * MIB, "RSS grew %.1f MiB over %d flaps" % (
        (max(rss[1:]) - rss[1]) / MIB, cycles))
    E.query_and_compare(h, u, p, "udp", "a.example.test.", "A")


# ---- TCP connection flood


@case
def protect_tcp_connection_flood(h):
    """2,000 TCP connections opened over about 5 s and left idle against
    --max-tcp-clients 64 (one shard), while every 50 ms a UDP query and a new TCP client (a
    fresh connection, one query) are sent. Near the cap the least recently
    active idle connection is closed to make room (RFC 7766 §6.2.3), so the
    newcomers are served: >= 95% of the TCP newcomers and every UDP query
    answered, the flood's connections closed (rejected or evicted), RSS
    within 8 MiB, and TCP served normally once the flood is gone."""
    u = start_unbound_x(h)
    p = h.start_proxy(upstreams=[up_spec(u.dot_port)], extra=[
        "--threads", "1", "--max-tcp-clients", "64"])
    wire = make_query("a.example.test.", "A").to_wire()
    rss0 = rss_bytes(p.proc.pid)
    flood, probes = [], {"tcp": 0, "tcp_ok": 0, "udp": 0, "udp_ok": 0}
    try:
        next_probe = time.monotonic()
        deadline = time.monotonic() + 30
        while len(flood) < 2000 and time.monotonic() < deadline:
            # 20 connections per 50 ms: 2,000 in about 5 s, a probe each turn.
            for _ in range(20):
                try:
                    c = socket.create_connection((LOOPBACK4, p.port), timeout=2.0)
                    flood.append(c)
                except OSError:
                    pass
            time.sleep(max(0.0, next_probe - time.monotonic()))
            next_probe += 0.05
            probes["udp"] += 1
            try:
                resp, _ = udp_exchange(p.port, wire, timeout=1.0)
                probes["udp_ok"] += resp is not None and rcode_of(resp) == dns.rcode.NOERROR
            except (socket.timeout, OSError):
                pass
            probes["tcp"] += 1
            try:
                resp, _ = tcp_exchange(p.port, wire, timeout=1.0)
                probes["tcp_ok"] += resp is not None and rcode_of(resp) == dns.rcode.NOERROR
            except (socket.timeout, EOFError, OSError, CaseFailure):
                pass
        rss1 = rss_bytes(p.proc.pid)
        c = counters(p)
    finally:
        for s in flood:
            s.close()
    print("connection flood: %d connections opened; TCP newcomers %d/%d answered, UDP %d/%d; "
          "tcp_accepted=%s tcp_rejected=%s tcp_idle_evicted=%s; RSS %.1f -> %.1f MiB" % (
              len(flood), probes["tcp_ok"], probes["tcp"], probes["udp_ok"], probes["udp"],
              c.get("tcp_accepted"), c.get("tcp_rejected"), c.get("tcp_idle_evicted"),
              rss0 / MIB, rss1 / MIB))
    check(len(flood) >= 1500, "only %d flood connections opened" % len(flood))
    check(probes["tcp"] >= 10 and probes["tcp_ok"] >= 0.95 * probes["tcp"],
          "TCP newcomers: %d of %d answered" % (probes["tcp_ok"], probes["tcp"]))
    check(probes["udp_ok"] == probes["udp"], "UDP: %d of %d answered" % (
        probes["udp_ok"], probes["udp"]))
    check(c.get("tcp_idle_evicted") > 0, "no idle connection was evicted")
    check(rss1 - rss0 <= 8 * MIB, "RSS grew %.1f MiB" % ((rss1 - rss0) / MIB))
    E.query_and_compare(h, u, p, "tcp", "a.example.test.", "A")


class GatedTlsServer(E.SilentTlsServer):
    """A DoT upstream that holds every query it reads until release(), then
    answers each (the query echoed with QR set: the question and ID match)
    and, from then on, answers at once. Records the first question's name
    of each query, in the order read, so a case can see how many queries
    dotproxy had in flight, and which, while nothing was answered. Health
    probes (the root, `.`) are answered at once and not recorded. Accepts
    and stops as SilentTlsServer does."""

    def __init__(self, pki):
        # Before the accept loop starts (in the base's constructor).
        self.names = []
        self._released = False
        super().__init__(pki)

    @staticmethod
    def _answer(wire):
        out = bytearray(wire)
        out[2] |= 0x80  # QR
        return framed(bytes(out))

    def _serve(self, c, addr):
        s = E.tls_accept(self.ctx, c, addr, self._note)
        if s is None:
            return
        # Only this thread reads or writes `s` (an SSL object is not safe
        # to use from two threads at once): it sends what it held within
        # 0.2 s of release().
        s.settimeout(0.2)
        buf = b""
        held = []
        try:
            while not self._stop.is_set():
                with self.lock:
                    released = self._released
                if released and held:
                    s.sendall(b"".join(held))
                    held = []
                try:
                    data = s.recv(65536)
                except (socket.timeout, E.ssl.SSLWantReadError):
                    continue
                if not data:
                    return
                buf += data
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                    n = struct.unpack("!H", buf[:2])[0]
                    wire, buf = buf[2:2 + n], buf[2 + n:]
                    probe = len(wire) > 12 and wire[12] == 0
                    with self.lock:
                        if not probe:
                            self.names.append(dns.message.from_wire(wire).question[0].name
                                              .to_text())
                        hold = not probe and not self._released
                    if hold:
                        held.append(self._answer(wire))
                    else:
                        s.sendall(self._answer(wire))
        except (E.ssl.SSLError, OSError) as e:
            self._note("error from %s:%d: %r" % (addr + (e,)))
        finally:
            s.close()

    def release(self):
        with self.lock:
            self._released = True

    def seen(self, prefix):
        with self.lock:
            return [n for n in self.names if n.startswith(prefix)]


@case
def protect_pipelining_limit(h):
    """A client may not pass the pipelining limit (128 queries in flight per
    connection) by writing many queries at once: 300 minimal queries in one
    write over TCP, and 300 in one write over DoT (a few TLS records), to an
    upstream that holds every query. While it holds them, the upstream sees
    exactly the first 128 of each connection, however many the
    proxy's reads brought; once it answers, the queries held back are handed
    up as answers make room, and every one of the 600 is answered, once."""
    g = GatedTlsServer(h.pki)
    h.silent.append(g)  # stopped by the harness
    tls_port = E.free_port()
    p = h.start_proxy(upstreams=["%s:%d#%s" % (LOOPBACK4, g.port, E.TLS_NAME)], ready=None,
                      extra=["--threads", "1", "--query-timeout", "10000",
                             "--listen-tls", "%s:%d" % (LOOPBACK4, tls_port),
                             "--tls-cert", h.pki.good_pem, "--tls-key", h.pki.good_key])
    # Ready once its TCP port accepts (a query would be held by the gate).
    deadline = time.monotonic() + 10
    tcp = None
    while tcp is None and time.monotonic() < deadline:
        check(p.alive(), "dotproxy exited (rc=%s)" % p.proc.returncode)
        try:
            tcp = tcp_connect(p.port)
        except OSError:
            time.sleep(0.1)
    check(tcp is not None, "dotproxy's TCP port never accepted")
    ctx = E.ssl.create_default_context(cafile=h.pki.ca_pem)
    raw = socket.create_connection((LOOPBACK4, tls_port), timeout=5)
    dot = ctx.wrap_socket(raw, server_hostname=E.TLS_NAME)
    queries = 300
    limit = 128
    bursts = ("tcp", "dot")
    for name, conn in zip(bursts, (tcp, dot)):
        wires = [make_query("q%d.%s.example.test." % (i, name), "A", qid=i + 1).to_wire()
                 for i in range(queries)]
        conn.sendall(b"".join(framed(w) for w in wires))
    # Each connection's first 128 reach the upstream; then nothing more
    # (bounded: 5 s for the 256, then 0.5 s in which no more may come).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (len(g.seen("q")) < 2 * limit):
        time.sleep(0.05)
    time.sleep(0.5)
    wrong = []
    for name in bursts:
        got = [n for n in g.seen("q") if n.endswith(".%s.example.test." % name)]
        want = ["q%d.%s.example.test." % (i, name) for i in range(limit)]
        print("%s: %d of %d queries reached the upstream while it held them" % (
            name, len(got), queries))
        # Over several upstream connections (100 queries each), read by one
        # thread each here: the order between them is the threads'.
        if sorted(got) != sorted(want):
            wrong.append("%s: %d (want the first %d; not among them: %r)" % (
                name, len(got), limit, sorted(set(got) - set(want))[:3]))
    check(not wrong, "while the upstream held every query it saw, of the %d written at once "
          "on each connection: %s" % (queries, "; ".join(wrong)))
    g.release()
    for name, conn in zip(bursts, (tcp, dot)):
        deadline = time.monotonic() + 10
        ids = []
        for _ in range(queries):
            wire = E.tcp_read_msg(conn, deadline)
            check(rcode_of(wire) == dns.rcode.NOERROR, "%s: %s" % (name, describe(wire)))
            ids.append(struct.unpack("!H", wire[:2])[0])
        check(sorted(ids) == list(range(1, queries + 1)),
              "%s: answers for %d distinct IDs of %d" % (name, len(set(ids)), queries))
        seen = [n for n in g.seen("q") if n.endswith(".%s.example.test." % name)]
        check(len(seen) == queries and len(set(seen)) == queries,
              "%s: the upstream saw %d queries (%d distinct) for %d written" % (
                  name, len(seen), len(set(seen)), queries))
        conn.close()
    print("after the release: %d of %d answered on each connection, each query sent once" % (
        queries, queries))


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
