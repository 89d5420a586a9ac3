#!/usr/bin/python3
"""End-to-end cases for protecting the proxy (issue 10): slowloris clients
closed by the message deadline, memory of slow readers bounded and returned,
UDP answers capped at --max-udp-size, malformed structure refused at the edge
without reaching the upstream, fast recovery when the only upstream flaps,
and goodput under overload. Uses the harness in dotproxy_e2e.py and the
counters of dotproxy_e2e_features.py (same rules: loopback only, every wait
and loop bounded, every child killed by PID).

    dotproxy_e2e_protect.py --list
    dotproxy_e2e_protect.py --dotproxy build/dotproxy --case protect_slowloris [--keep]

Exit status: 0 pass, 1 fail, 77 skip. Cases print what they measure.
"""

import os
import random
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
    rcode_of, tcp_connect, tcp_exchange, tcp_read_msg, udp_exchange,
)
import dotproxy_e2e_features as F  # noqa: E402
_INHERITED = set(E.CASES)

from dotproxy_e2e_features import counters, start_unbound_x, up_spec, wild  # noqa: E402

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
                except (socket.timeout, OSError):
                    pass
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
            for _ in range(300):
                later = [a for a in answers if a > t_spawn]
                if later:
                    first = later[0]
                    break
                if time.monotonic() - t_ready > 5.0:
                    break
                time.sleep(0.01)
            check(first is not None, "cycle %d: no NOERROR within 5 s of the upstream's return" % cycle)
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


# ---- overload


def _dnsperf_parse(text):
    st = {"sent": 0, "completed": 0, "noerror": 0, "latency": 0.0, "seconds": 0.0}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Queries sent:"):
            st["sent"] = int(line.split()[2])
        elif line.startswith("Queries completed:"):
            st["completed"] = int(line.split()[2])
        elif line.startswith("Response codes:"):
            for part in line[len("Response codes:"):].split(","):
                words = part.split()
                if words and words[0] == "NOERROR":
                    st["noerror"] = int(words[1])
        elif line.startswith("Average Latency"):
            st["latency"] = float(line.split()[3])
        elif line.startswith("Run time (s):"):
            st["seconds"] = float(line.split()[3])
    return st


def _overload_round(h, port, total_qps, seconds, sources, tag, outstanding=20000):
    """`sources` dnsperf processes, each from its own 127.0.0.x address, at
    total_qps together (None: as fast as `outstanding` queries in flight per
    process allow: a closed loop). With a rate, `outstanding` is large so
    that the offered load is open-loop: lost queries do not slow the
    sender down. Returns NOERROR per second, the completed-weighted mean
    latency (s) and the sent rate."""
    data = os.path.join(h.dir, "names.txt")
    if not os.path.exists(data):
        with open(data, "w") as f:
            for i in range(100000):
                f.write("%s A\n" % wild("n%d" % i).rstrip("."))
    procs = []
    for i in range(sources):
        out = open(os.path.join(h.dir, "dnsperf-%s-%d.out" % (tag, i)), "w")
        argv = [E.DNSPERF, "-s", LOOPBACK4, "-p", str(port), "-d", data, "-l", str(seconds),
                "-a", "127.0.0.%d" % (10 + i), "-c", "20", "-q", str(outstanding), "-t", "1"]
        if total_qps:
            argv += ["-Q", str(int(total_qps / sources))]
        procs.append((E.spawn(argv, out, subprocess.STDOUT), out))
    noerror = completed = sent = 0
    latency_sum = 0.0
    for proc, out in procs:
        try:
            proc.wait(timeout=seconds + 20)
        except subprocess.TimeoutExpired:
            E.stop_process(proc)
        out.close()
        with open(out.name) as f:
            st = _dnsperf_parse(f.read())
        noerror += st["noerror"]
        completed += st["completed"]
        sent += st["sent"]
        latency_sum += st["latency"] * st["completed"]
    return noerror / seconds, (latency_sum / completed if completed else 0.0), sent / seconds


@case
def protect_overload_goodput(h):
    """Overload of the upstream's capacity: one shard, cache off, unique
    names, one connection with one query in flight. Capacity C is a closed
    loop's NOERROR rate (8 queries outstanding per dnsperf); then 0.1, 1, 2
    and 4 C are offered open-loop from 4 dnsperf processes on 4 source
    addresses (127.0.0.10-13). The waiting queue stands, so what is
    answered is dispatched newest first: asserted, the mean latency of
    answered queries at 4x stays under 100 ms (it was about 180 ms when the
    queue was served oldest first up to 200 ms) and queries were shed.
    Goodput is printed, not asserted: with one query in flight, capacity is
    one round trip per loop iteration, and iterations lengthen with the
    offered load, so C measured at a light load is not this setup's
    capacity under a flood (protect_overload_cpu measures goodput where the
    shard's CPU is the limit)."""
    if not os.access(E.DNSPERF, os.X_OK):
        raise CaseSkip("dnsperf not installed")
    u = start_unbound_x(h)
    # Capacity is made the upstream's: one connection with one query in
    # flight (the way a provider's per-connection limit caps a shard), so
    # that dnsperf on these 2 cores can offer 4x of it.
    p = h.start_proxy(upstreams=[up_spec(u.dot_port)], extra=[
        "--threads", "1", "--max-connections-per-upstream", "1",
        "--max-inflight-per-connection", "1"])
    seconds = 5
    # Capacity: a closed loop that keeps the upstream's slot busy with a
    # short queue (8 in flight), so that it measures service, not shedding.
    cap, cap_latency, _ = _overload_round(h, p.port, None, seconds, 4, "capacity", outstanding=8)
    check(cap > 100, "capacity run: only %.0f NOERROR/s" % cap)
    idle, idle_latency, idle_offered = _overload_round(h, p.port, cap / 10, seconds, 4, "unloaded")
    rows = [("max", cap, cap_latency, 0.0), ("0.1x", idle, idle_latency, idle_offered)]
    for factor in (1, 2, 4):
        good, latency, offered = _overload_round(h, p.port, cap * factor, seconds, 4, "x%d" % factor)
        rows.append(("%dx" % factor, good, latency, offered))
        check(p.alive(), "dotproxy died at %dx" % factor)
    c = counters(p)
    print("overload (one shard, capacity C = %.0f NOERROR/s):" % cap)
    for name, good, latency, offered in rows:
        print("  %-4s offered %6.0f q/s  NOERROR %6.0f /s (%.2f C)  mean latency %.1f ms" % (
            name, offered, good, good / cap, latency * 1000))
    print("  counters: servfail_overload=%d servfail_timeout=%d shed_waiting=%d queued_for_capacity=%d "
          "intake_overload_began=%d shed_intake=%d" % (
              c.get("servfail_overload"), c.get("servfail_timeout"), c.get("shed_waiting"),
              c.get("queued_for_capacity"), c.get("intake_overload_began"), c.get("shed_intake")))
    good4, latency4 = rows[-1][1], rows[-1][2]
    check(good4 > 0, "at 4x: nothing answered")
    check(latency4 <= 0.1, "at 4x: mean latency %.0f ms" % (latency4 * 1000))
    check(c.get("shed_waiting") > 0, "nothing was shed at 4x")


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


# ---- CPU-bound overload (udp_flood, a CPU quota)


class _CpuQuota:
    """A cgroup (v1 cpu controller, or v2 cpu.max) that gives its members
    `percent` of one CPU in fine periods: a slow CPU whose capacity a cheap
    generator on the other core can exceed four times over."""

    def __init__(self, percent):
        self.path = None
        name = "dotproxy-e2e-%d" % os.getpid()
        period = 10000
        quota = int(period * percent / 100)
        v1 = "/sys/fs/cgroup/cpu"
        try:
            if os.path.exists(os.path.join(v1, "cpu.cfs_quota_us")) or os.path.isdir(
                    os.path.join(v1, "tasks")):
                path = os.path.join(v1, name)
                os.mkdir(path)
                self.path = path
                with open(os.path.join(path, "cpu.cfs_period_us"), "w") as f:
                    f.write(str(period))
                with open(os.path.join(path, "cpu.cfs_quota_us"), "w") as f:
                    f.write(str(quota))
            elif "cpu" in open("/sys/fs/cgroup/cgroup.controllers").read().split():
                path = os.path.join("/sys/fs/cgroup", name)
                os.mkdir(path)
                self.path = path
                with open(os.path.join(path, "cpu.max"), "w") as f:
                    f.write("%d %d" % (quota, period))
            else:
                raise OSError("no cpu controller")
        except OSError as e:
            self.remove()
            raise CaseSkip("no writable cpu cgroup for a CPU quota (%s)" % e)

    def add(self, pid):
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def remove(self):
        if self.path:
            try:
                os.rmdir(self.path)
            except OSError:
                pass
            self.path = None


def _udp_flood():
    path = os.environ.get("DOTPROXY_E2E_UDP_FLOOD") or os.path.join(
        os.path.dirname(os.path.abspath(sys.argv[0])), "udp_flood")
    if not os.access(path, os.X_OK):
        raise CaseSkip("udp_flood not built (%s)" % path)
    return path


def _flood(flood, port, rate, seconds, tag, sources=16, base="127.0.1.1", stride=1):
    """One udp_flood run (real-time priority, on CPU 1); its figures."""
    argv = ["chrt", "-f", "20", "taskset", "-c", "1", flood, "--to", "%s:%d" % (LOOPBACK4, port),
            "--rate", str(int(rate)), "--seconds", str(seconds), "--sources", str(sources),
            "--source-base", base, "--source-stride", str(stride), "--tag", tag]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _flood_result(proc, seconds):
    try:
        out, err = proc.communicate(timeout=seconds + 20)
    except subprocess.TimeoutExpired:
        E.stop_process(proc)
        raise CaseFailure("udp_flood did not finish")
    if proc.returncode != 0:
        raise CaseFailure("udp_flood failed: %s" % err.strip())
    f = {k: float(v) for k, v in (kv.split("=") for kv in out.split())}
    f["noerror_per_s"] = f["noerror"] / seconds
    return f


def _start_pinned(h, u, quota, extra):
    p = h.start_proxy(upstreams=[up_spec(u.dot_port)], extra=["--threads", "1"] + extra,
                      prefix=["taskset", "-c", "0"])
    quota.add(p.proc.pid)
    # Within its quota it must not lose its CPU to whatever else runs there.
    subprocess.run(["renice", "-n", "-15", "-p", str(p.proc.pid)], capture_output=True)
    return p


@case
def protect_overload_cpu(h):
    """Overload of the shard's own CPU (issue 10). dotproxy runs on CPU 0 in
    a cgroup limited to 10% of it (a slow CPU), Unbound and udp_flood (an
    open-loop generator of unique names from 16 sources) at real-time
    priority on CPU 1, so the generator can offer 4x what the shard serves.
    Capacity C is the best NOERROR rate of a ramp (up to the first step
    that is not 90% answered); then 0.1, 1, 2 and 4 C.
    At 4 C for 20 s, RSS is sampled every second. Asserted: NOERROR/s at
    4 C >= 0.6 C (0.9 is the target, printed), the mean latency of answered
    queries at 4 C under 150 ms (it was over a second when the socket
    buffer queued the flood), RSS within 16 MiB over the 20 s, and an
    answer within 1 s after the flood. Then a flood of 2 C from 64
    prefixes with --rate-limit 20: a well-behaved client at half its limit
    from another prefix keeps >= 99% answered."""
    flood = _udp_flood()
    if subprocess.run(["chrt", "-f", "1", "true"], capture_output=True).returncode != 0:
        raise CaseSkip("real-time priority not permitted (chrt)")
    if os.cpu_count() is None or os.cpu_count() < 2:
        raise CaseSkip("needs 2 CPUs")
    quota = _CpuQuota(10)
    try:
        u = start_unbound_x(h)
        subprocess.run(["taskset", "-a", "-p", "-c", "1", str(u.proc.pid)], capture_output=True)
        subprocess.run(["chrt", "-f", "-a", "-p", "20", str(u.proc.pid)], capture_output=True)
        p = _start_pinned(h, u, quota, [])
        # The ramp goes on until a step is not fully answered (on a fast
        # machine 12,000/s was: C was its ceiling, not the shard's).
        ramp = []
        for i, rate in enumerate((3000, 6000, 12000, 18000, 24000, 36000, 48000)):
            ramp.append(_flood_result(_flood(flood, p.port, rate, 3, "ramp%d" % i), 3))
            if ramp[-1]["noerror_per_s"] < 0.9 * rate:
                break
        cap = max(r["noerror_per_s"] for r in ramp)
        check(cap > 500, "capacity: only %.0f NOERROR/s" % cap)
        rows = []
        for factor in (0.1, 1, 2):
            r = _flood_result(_flood(flood, p.port, cap * factor, 3, "x%s" % factor), 3)
            rows.append(("%gx" % factor, cap * factor, r))
        seconds = 20
        proc = _flood(flood, p.port, cap * 4, seconds, "x4")
        rss = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds and len(rss) < seconds + 2:
            rss.append(rss_bytes(p.proc.pid))
            time.sleep(1.0)
        r4 = _flood_result(proc, seconds)
        rows.append(("4x", cap * 4, r4))
        # Recovery: the next query is answered at once.
        t1 = time.monotonic()
        E.query_and_compare(h, u, p, "udp", "a.example.test.", "A")
        recovery = time.monotonic() - t1
        c = counters(p)
        print("CPU-bound overload (one shard at 10%% of a CPU): capacity C = %.0f NOERROR/s" % cap)
        for r in ramp:
            print("  ramp  offered %6.0f/s  NOERROR %6.0f/s  mean %6.1f ms" % (
                r["sent"] / 3, r["noerror_per_s"], r["mean_ms"]))
        for name, offered, r in rows:
            print("  %-4s offered %6.0f/s  NOERROR %6.0f/s (%.2f C)  mean %6.1f ms  p50 %6.1f  p99 %6.1f" % (
                name, offered, r["noerror_per_s"], r["noerror_per_s"] / cap, r["mean_ms"],
                r["p50_ms"], r["p99_ms"]))
        print("  RSS over the 20 s at 4x: min %.1f MiB, max %.1f MiB; recovery %.2f s" % (
            min(rss) / MIB, max(rss) / MIB, recovery))
        print("  counters: shed_intake=%s shed_waiting=%s intake_overload_began=%s "
              "answered=%s loop_iterations=%s completions=%s" % (
                  c.get("shed_intake"), c.get("shed_waiting"), c.get("intake_overload_began"),
                  c.get("answered"), c.get("loop_iterations"), c.get("completions")))
        check(p.alive(), "dotproxy died under the flood")
        # The target is 0.9 C (printed above); asserted with room for a
        # shared machine, where C itself moves between rounds.
        check(r4["noerror_per_s"] >= 0.6 * cap, "at 4x: %.0f NOERROR/s, %.2f of C" % (
            r4["noerror_per_s"], r4["noerror_per_s"] / cap))
        check(r4["mean_ms"] <= 150, "at 4x: mean latency %.0f ms" % r4["mean_ms"])
        check(max(rss) - min(rss) <= 16 * MIB, "RSS moved %.1f MiB during the flood" % (
            (max(rss) - min(rss)) / MIB))
        check(recovery < 1.0, "first answer after the flood took %.2f s" % recovery)
        p.stop()

        # The limiter on: a flood of 2 C spread over 64 prefixes (127.1.N.1),
        # each at 28x its 20 qps, and a good client at 10 qps from another
        # prefix. Not 4 C: at 10% of a CPU the shard tops out reading and
        # dropping near 5 C (75,000/s against C = 14,000-15,000/s, one run),
        # so at 4 C any hiccup stands its intake, and then the kernel's tail
        # drop of a full socket buffer and the age shed, which come before
        # the limiter, take the good client's queries with the flood's (a
        # CI run at 48,000/s lost 5 of 199).
        p2 = _start_pinned(h, u, quota, ["--rate-limit", "20", "--rate-limit-burst", "10",
                                         "--rate-limit-slip", "0"])
        proc = _flood(flood, p2.port, cap * 2, seconds, "lim", sources=64, base="127.1.0.1",
                      stride=256)
        good = _flood(flood, p2.port, 10, seconds, "good", sources=1, base="127.0.0.50")
        rl = _flood_result(proc, seconds)
        g = _flood_result(good, seconds)
        print("  limiter on (20 qps per /24), flood %.0f/s from 64 prefixes: flood answered %.0f/s; "
              "good client %d/%d answered, mean %.1f ms" % (
                  rl["sent"] / seconds, rl["answered"] / seconds, g["noerror"], g["sent"], g["mean_ms"]))
        check(g["noerror"] >= 0.99 * g["sent"], "good client: %d of %d NOERROR" % (g["noerror"], g["sent"]))
        p2.stop()
    finally:
        for p in h.proxies:
            if p.alive():
                p.stop()
        quota.remove()


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
