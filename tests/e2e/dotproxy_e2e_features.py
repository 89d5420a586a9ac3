#!/usr/bin/python3
"""End-to-end tests of dotproxy's upstream handling, cache, counters and
configuration layers. Uses the harness in dotproxy_e2e.py (same rules: loopback
only, every wait bounded, every child killed by PID).

    dotproxy_e2e_features.py --list
    dotproxy_e2e_features.py --dotproxy build/dotproxy --case cache_prefetch [--keep]

Exit status: 0 pass, 1 fail, 77 skip. Cases print the figures they measure
(failover and recovery times, latencies) on stdout.
"""

import os
import random
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dns.edns  # noqa: E402
import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdatatype  # noqa: E402
import dns.rrset  # noqa: E402

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import (  # noqa: E402
    LOOPBACK4, TLS_NAME, CaseFailure, CaseSkip, case, check, describe, free_port,
    make_query, parse_or_fail, question_end, rcode_of, tcp_connect, tcp_exchange,
    tcp_read_msg, udp_exchange,
)

OPT_ECS, OPT_KEEPALIVE, OPT_PADDING = 8, 11, 12

# Extra upstream data for these cases (example.test. already has an SOA, so
# NXDOMAIN/NODATA below it are cacheable, RFC 2308).
EXTRA_RR = [
    'ttl2.example.test. 2 IN A 192.0.2.2',
    'ttl10.example.test. 10 IN A 192.0.2.10',
    'ttl300.example.test. 300 IN A 192.0.2.30',
    'clamp.example.test. 5000 IN A 192.0.2.50',
    'tiny.example.test. 1 IN A 192.0.2.51',
]
WILD_ADDR = "192.0.2.99"  # every name under wild.example.test. (redirect zone)


def wild(label):
    return "%s.wild.example.test." % label


# --------------------------------------------------------------------------
# Harness additions


class UnboundX(E.Unbound):
    """Unbound with EXTRA_RR and a redirect zone: any name under
    wild.example.test. answers A 192.0.2.99 (unique names, all NOERROR)."""

    def __init__(self, workdir, pki):
        super().__init__(workdir, pki)
        with open(self.conf) as f:
            text = f.read()
        add = ['  local-zone: "wild.example.test." redirect',
               "  local-data: 'wild.example.test. 300 IN A %s'" % WILD_ADDR]
        add += ["  local-data: '%s'" % rr for rr in EXTRA_RR]
        text = text.replace("remote-control:", "\n".join(add) + "\nremote-control:")
        with open(self.conf, "w") as f:
            f.write(text)


def start_unbound_x(h, cls=None):
    """Starts an UnboundX (or the subclass `cls`) in its own directory."""
    d = os.path.join(h.dir, "unbound%d" % len(h.unbounds))
    os.mkdir(d)
    u = (cls or UnboundX)(d, h.pki)
    h.unbounds.append(u)
    u.start()
    return u


def up_spec(port):
    return "%s:%d#%s" % (LOOPBACK4, port, TLS_NAME)


# ---- counters (SIGUSR1)

_COUNTERS_RE = re.compile(r" info: counters:(.*)$")
_UPSTREAM_RE = re.compile(r" info: upstream (\S+): (queries=.*)$")


class Counters:
    def __init__(self, counters, upstreams, text):
        self.c = counters
        self.up = upstreams
        self.text = text

    def get(self, name):
        return self.c.get(name, 0)

    def upstream(self, port):
        for spec, vals in self.up.items():
            if spec.startswith("%s:%d" % (LOOPBACK4, port)):
                return vals
        raise CaseFailure("SIGUSR1: no line for upstream port %d in:\n%s" % (port, self.text))

    def __repr__(self):
        return self.text


def counters(p, n_upstreams=None, timeout=3.0):
    """Send SIGUSR1 to proxy p, wait (bounded) for its counters line and one line
    per upstream, and parse them: shard counters (absent = 0) and, per upstream
    spec, its values (healthy_shards kept as "H/N", latency_ms a float)."""
    if n_upstreams is None:
        n_upstreams = p.args.count("--upstream")
    check(p.alive(), "dotproxy is not running (rc=%s), cannot read counters" % p.proc.returncode)
    start = os.path.getsize(p.stderr_path)
    os.kill(p.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    text = ""
    for _ in range(1000):
        with open(p.stderr_path, "r", errors="replace") as f:
            f.seek(start)
            text = f.read()
        lines = text.splitlines()
        ci = [i for i, l in enumerate(lines) if _COUNTERS_RE.search(l)]
        if ci:
            ups = [l for l in lines[ci[0] + 1:] if _UPSTREAM_RE.search(l)]
            if len(ups) >= n_upstreams and text.endswith("\n"):
                c = {}
                for tok in _COUNTERS_RE.search(lines[ci[0]]).group(1).split():
                    k, _, v = tok.partition("=")
                    c[k] = int(v)
                u = {}
                for l in ups[:n_upstreams]:
                    m = _UPSTREAM_RE.search(l)
                    vals = {}
                    for tok in m.group(2).split():
                        k, _, v = tok.partition("=")
                        if k == "healthy_shards":
                            vals[k] = v
                        elif k == "latency_ms":
                            vals[k] = float(v)
                        else:
                            vals[k] = int(v)
                    u[m.group(1)] = vals
                return Counters(c, u, "\n".join([lines[ci[0]]] + ups[:n_upstreams]))
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise CaseFailure("SIGUSR1: no counters line (+%d upstream lines) within %.0f s; new stderr:\n%s" % (
        n_upstreams, timeout, text))


# ---- raw EDNS options


def _skip_name(w, off):
    for _ in range(256):
        n = w[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n
    raise ValueError("name too long")


def raw_opt(wire):
    """The OPT record of a message as [(code, data bytes)], or None without OPT.
    Parsed by hand so the bytes are exactly what was on the wire."""
    qd, an, ns, ar = struct.unpack("!HHHH", wire[4:12])
    off = 12
    for _ in range(qd):
        off = _skip_name(wire, off) + 4
    opts = None
    for i in range(an + ns + ar):
        off = _skip_name(wire, off)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", wire[off:off + 10])
        off += 10
        rdata = wire[off:off + rdlen]
        off += rdlen
        if rtype == 41:
            check(opts is None, "two OPT records in %s" % wire.hex())
            opts = []
            o = 0
            while o + 4 <= len(rdata):
                code, ln = struct.unpack("!HH", rdata[o:o + 4])
                opts.append((code, rdata[o + 4:o + 4 + ln]))
                o += 4 + ln
    return opts


def opt_codes(wire):
    o = raw_opt(wire)
    return None if o is None else [c for c, _ in o]


def ecs_option_bytes():
    return dns.edns.ECSOption("198.51.100.0", 24)


# ---- a recording DoT upstream


class RecordingDot:
    """A DoT upstream on loopback (the test PKI's good cert) that records every
    query it reads (raw bytes) and answers it: A 192.0.2.77 TTL 300 for A
    questions, NODATA otherwise, SERVFAIL for names in `servfail`. Its answers
    carry a padding option and, when `keepalive` is set, an edns-tcp-keepalive
    option with that timeout (units of 100 ms). Per connection it notes the
    accept time, each answer's time and EOF."""

    ADDR = "192.0.2.77"

    def __init__(self, pki, keepalive=None, servfail=()):
        self.keepalive = keepalive
        self.servfail = {n.lower() for n in servfail}
        self.port, self.ctx, self.sock = E.open_tls_listener(pki, 32)
        self.lock = threading.Lock()
        self.queries = []  # (time, conn id, raw bytes)
        self.conns = []    # dicts: accepted, answers [times], eof
        self._stop = threading.Event()
        self.threads = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                c, addr = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with self.lock:
                cid = len(self.conns)
                self.conns.append({"accepted": time.monotonic(), "answers": [], "eof": None,
                                   "error": None})
            t = threading.Thread(target=self._serve, args=(c, cid, addr), daemon=True)
            self.threads.append(t)
            t.start()

    def answer(self, raw):
        q = dns.message.from_wire(raw)
        r = dns.message.make_response(q)
        r.flags |= dns.flags.RA
        qname = q.question[0].name
        if qname.to_text().lower() in self.servfail:
            r.set_rcode(dns.rcode.SERVFAIL)
        elif q.question[0].rdtype == dns.rdatatype.A:
            r.answer.append(dns.rrset.from_text(qname, 300, "IN", "A", self.ADDR))
        if q.edns >= 0:
            opts = [dns.edns.GenericOption(OPT_PADDING, b"\x00" * 40)]
            if self.keepalive is not None:
                opts.insert(0, dns.edns.GenericOption(OPT_KEEPALIVE, struct.pack("!H", self.keepalive)))
            r.use_edns(0, 0, 1232, options=opts)
        return r.to_wire()

    def _serve(self, c, cid, addr):
        conn = self.conns[cid]
        s = E.tls_accept(self.ctx, c, addr, lambda what: conn.__setitem__("error", what))
        if s is None:
            return
        s.settimeout(0.1)
        buf = b""
        try:
            for _ in range(10 ** 7):
                if self._stop.is_set():
                    return
                try:
                    data = s.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
                if not data:
                    conn["eof"] = time.monotonic()
                    return
                buf += data
                while len(buf) >= 2:
                    (ln,) = struct.unpack("!H", buf[:2])
                    if len(buf) < 2 + ln:
                        break
                    raw, buf = buf[2:2 + ln], buf[2 + ln:]
                    with self.lock:
                        self.queries.append((time.monotonic(), cid, raw))
                    out = self.answer(raw)
                    s.sendall(struct.pack("!H", len(out)) + out)
                    conn["answers"].append(time.monotonic())
        except (ssl.SSLError, OSError) as e:
            conn["error"] = repr(e)
            conn["eof"] = conn["eof"] or time.monotonic()
        finally:
            try:
                s.close()
            except OSError:
                pass

    def find(self, qname):
        """Raw queries received for qname (case-insensitive)."""
        want = qname.lower().rstrip(".")
        out = []
        with self.lock:
            items = list(self.queries)
        for t, cid, raw in items:
            try:
                m = dns.message.from_wire(raw)
            except Exception:  # noqa: BLE001
                continue
            if m.question and m.question[0].name.to_text().lower().rstrip(".") == want:
                out.append((t, cid, raw))
        return out

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=3)
        for t in self.threads:
            t.join(timeout=3)
        self.sock.close()


def start_recording(h, **kw):
    s = RecordingDot(h.pki, **kw)
    h.silent.append(s)  # Harness.close() stops it
    return s


def udp_query(p, qname, qtype="A", edns=None, timeout=3.0, **kw):
    q = make_query(qname, qtype, edns=edns, **kw)
    wire = q.to_wire()
    resp, secs = udp_exchange(p.port, wire, timeout=timeout)
    return wire, resp, secs


def ttl_of(msg):
    return [r.ttl for r in msg.answer]


# --------------------------------------------------------------------------
# Upstream-side wire format


def _check_upstream_query(what, raw, padding=True, ecs=None):
    """A query as received by the upstream: padded to a multiple of 128 bytes
    with option 12, an empty keepalive option 11, and option 8 only if ecs (its
    expected bytes) is given."""
    opts = raw_opt(raw)
    check(opts is not None, "%s: upstream query has no OPT record (%d bytes: %s)" % (what, len(raw), raw.hex()))
    codes = [c for c, _ in opts]
    if padding:
        check(len(raw) % 128 == 0, "%s: upstream query is %d bytes, not a multiple of 128 (options %s)" % (
            what, len(raw), codes))
        check(OPT_PADDING in codes, "%s: no padding option (12) upstream; options %s" % (what, codes))
        pad = [d for c, d in opts if c == OPT_PADDING][0]
        check(pad == b"\x00" * len(pad), "%s: padding option is not all zeros: %s" % (what, pad.hex()))
    else:
        check(OPT_PADDING not in codes, "%s: --no-padding but upstream query has option 12 (%d bytes, options %s)" % (
            what, len(raw), codes))
    check(codes.count(OPT_KEEPALIVE) == 1, "%s: want one edns-tcp-keepalive option (11) upstream; options %s" % (
        what, codes))
    ka = [d for c, d in opts if c == OPT_KEEPALIVE][0]
    check(ka == b"", "%s: keepalive option in a query must be empty (RFC 7828); got %s" % (what, ka.hex()))
    if ecs is None:
        check(OPT_ECS not in codes, "%s: client-subnet option (8) forwarded upstream; options %s" % (what, codes))
    else:
        got = [d for c, d in opts if c == OPT_ECS]
        check(got == [ecs], "%s: --keep-client-subnet: want option 8 = %s upstream; got %s" % (
            what, ecs.hex(), [g.hex() for g in got]))


def _check_client_answer(what, wire, resp, expect_addr):
    msg = parse_or_fail(what, resp)
    check(resp[:2] == wire[:2], "%s: ID not echoed" % what)
    check(msg.rcode() == dns.rcode.NOERROR, "%s: rcode %s:\n%s" % (what, dns.rcode.to_text(msg.rcode()), msg.to_text()))
    addrs = [r.to_text() for rr in msg.answer for r in rr]
    check(addrs == [expect_addr], "%s: answer %s, want [%s]" % (what, addrs, expect_addr))
    q_opt = raw_opt(wire)
    r_opt = raw_opt(resp)
    if q_opt is None:
        check(r_opt is None, "%s: client sent no OPT but the answer has one (options %s):\n%s" % (
            what, [c for c, _ in r_opt], msg.to_text()))
    else:
        check(r_opt is not None, "%s: client sent OPT but the answer has none" % what)
        codes = [c for c, _ in r_opt]
        check(OPT_PADDING not in codes and OPT_KEEPALIVE not in codes,
              "%s: answer to the client carries upstream options %s (padding/keepalive must be removed)" % (
                  what, codes))
    return msg


def _client_queries(p, tag):
    """(label, qname, wire, transport) for the padding/ECS checks."""
    ecs = ecs_option_bytes()
    out = []
    specs = [("udp-ecs", "udp", [ecs]), ("udp-noedns", "udp", None), ("udp-edns", "udp", []),
             ("tcp-ecs", "tcp", [ecs]), ("tcp-noedns", "tcp", None),
             # a long name: the padding must still round up to a block
             ("udp-long", "udp", [ecs])]
    for label, transport, opts in specs:
        if label == "udp-long":
            qname = "%s-%s.%s.example.test." % (tag, label, "l" * 60)
        else:
            qname = "%s-%s.example.test." % (tag, label)
        if opts is None:
            q = make_query(qname, "A")
        else:
            q = dns.message.make_query(qname, "A", use_edns=0, payload=1232, options=opts)
            q.id = random.randrange(65536)
        out.append((label, qname, q.to_wire(), transport))
    return out


def _run_client_queries(p, rec, tag, padding=True, keep_ecs=False):
    ecs_wire = None
    for label, qname, wire, transport in _client_queries(p, tag):
        fn = udp_exchange if transport == "udp" else tcp_exchange
        resp, _ = fn(p.port, wire, timeout=3.0)
        what = "%s %s" % (tag, label)
        _check_client_answer(what, wire, resp, RecordingDot.ADDR)
        got = rec.find(qname)
        check(len(got) >= 1, "%s: upstream never received %s" % (what, qname))
        client_opts = raw_opt(wire)
        client_ecs = None
        if client_opts:
            e = [d for c, d in client_opts if c == OPT_ECS]
            client_ecs = e[0] if e else None
            ecs_wire = ecs_wire or client_ecs
        for _t, _cid, raw in got:
            _check_upstream_query(what, raw, padding=padding,
                                  ecs=client_ecs if keep_ecs else None)
    check(ecs_wire is not None, "harness: no ECS option in the client queries")


@case
def upstream_padding_on_wire(h):
    """What the upstream receives (recorded raw by a Python DoT server): every
    query padded to a multiple of 128 bytes (option 12), an empty keepalive
    option 11, no client-subnet option 8 even though the client sent one; with
    --keep-client-subnet option 8 arrives unchanged; with --no-padding there is
    no option 12. Answers to clients carry no option 11/12 (the upstream sends
    both), and no OPT at all when the client sent none."""
    rec = start_recording(h, keepalive=600)
    ups = [up_spec(rec.port)]
    p = h.start_proxy(upstreams=ups)
    _run_client_queries(p, rec, "default")
    p.stop()
    p = h.start_proxy(upstreams=ups, extra=["--keep-client-subnet"])
    _run_client_queries(p, rec, "keepecs", keep_ecs=True)
    p.stop()
    t_nopad = time.monotonic()
    p = h.start_proxy(upstreams=ups, extra=["--no-padding"])
    _run_client_queries(p, rec, "nopad", padding=False)
    # Every query the padding proxies sent (readiness checks included) was
    # padded; any query with a padding option is a multiple of 128 bytes.
    with rec.lock:
        seen = list(rec.queries)
    print("upstream saw %d queries; sizes %s" % (len(seen), sorted({len(r) for _, _, r in seen})))
    for t, _cid, raw in seen:
        codes = opt_codes(raw) or []
        what = "upstream query %s" % describe(raw).splitlines()[-1:]
        if t < t_nopad:
            _check_upstream_query(what, raw, padding=True,
                                  ecs=[d for c, d in raw_opt(raw) if c == OPT_ECS][0] if OPT_ECS in codes else None)
        elif OPT_PADDING in codes:
            check(len(raw) % 128 == 0, "%s: %d bytes with a padding option" % (what, len(raw)))


@case
def upstream_keepalive_honoured(h):
    """The upstream advertises edns-tcp-keepalive 10 (1 s) in its answers:
    dotproxy closes the idle connection just before it, between 0.5 s and 1.1 s
    after the last answer (the upstream sees EOF), and the next query is still
    answered (on a new connection)."""
    rec = start_recording(h, keepalive=10)
    p = h.start_proxy(upstreams=[up_spec(rec.port)], extra=["--threads", "1"])
    results = []
    for rnd in range(2):
        wire, resp, _ = udp_query(p, wild("ka%d" % rnd))
        _check_client_answer("keepalive round %d" % rnd, wire, resp, RecordingDot.ADDR)
        got = rec.find(wild("ka%d" % rnd))
        check(got, "keepalive round %d: upstream did not see the query" % rnd)
        cid = got[-1][1]
        conn = rec.conns[cid]
        deadline = time.monotonic() + 4.0
        for _ in range(100):
            if conn["eof"] is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        last = conn["answers"][-1]
        check(conn["eof"] is not None,
              "keepalive round %d: upstream advertised a 1 s keepalive; connection %d still open %.1f s "
              "after its last answer (conns: %s)" % (rnd, cid, time.monotonic() - last, rec.conns))
        idle = conn["eof"] - last
        results.append(idle)
        print("keepalive round %d: dotproxy closed the connection %.3f s after the last answer" % (rnd, idle))
        check(0.5 < idle < 1.1, "keepalive round %d: connection closed %.3f s after the last answer; "
              "want 0.5-1.1 s (upstream keepalive 1 s)" % (rnd, idle))
    # And one more query works after the close.
    wire, resp, _ = udp_query(p, wild("ka-after"))
    _check_client_answer("after keepalive close", wire, resp, RecordingDot.ADDR)
    got = rec.find(wild("ka-after"))
    check(got, "after keepalive close: upstream did not see the query")
    closed = [i for i, cn in enumerate(rec.conns) if cn["eof"] is not None and cn["eof"] < got[-1][0]]
    check(got[-1][1] not in closed, "after keepalive close: query arrived on closed connection %d" % got[-1][1])
    c = counters(p)
    check(c.get("upstream_idle_closed") >= 2, "upstream_idle_closed=%d after two keepalive closes\n%s" % (
        c.get("upstream_idle_closed"), c))


@case
def upstream_resumption(h):
    """--upstream-idle-timeout 300 --threads 1 against Unbound: after idle closes,
    reconnects resume the TLS session (upstream counter resumptions >= 1)."""
    u = start_unbound_x(h)
    p = h.start_proxy(u, extra=["--upstream-idle-timeout", "300", "--threads", "1"])
    for i in range(4):
        time.sleep(0.8)
        wire, resp, _ = udp_query(p, wild("res%d" % i))
        _check_client_answer("query %d after idle" % i, wire, resp, WILD_ADDR)
    c = counters(p)
    up = c.upstream(u.dot_port)
    print("upstream after 4 idle reconnects: %s" % up)
    check(c.get("upstream_idle_closed") >= 2, "upstream_idle_closed=%d with a 300 ms idle timeout "
          "and 0.8 s gaps\n%s" % (c.get("upstream_idle_closed"), c))
    check(up["connection_opens"] >= 3, "connection_opens=%d\n%s" % (up["connection_opens"], c))
    check(up["resumptions"] >= 1, "no TLS session resumed over %d connection opens\n%s" % (
        up["connection_opens"], c))


# --------------------------------------------------------------------------
# Failover under load


class UdpLoad:
    """Paced UDP load from a thread: `qps` unique wild names for `duration` s,
    8 sockets, unique IDs. Records send time and (answer time, rcode, ok)."""

    def __init__(self, port, qps, duration, prefix="ld"):
        self.port, self.qps, self.duration, self.prefix = port, qps, duration, prefix
        self.sent = {}     # idx -> send time
        self.answers = {}  # idx -> (time, rcode, ok)
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.t0 = time.monotonic()
        self.thread.start()

    def join(self):
        self.thread.join(timeout=self.duration + 15)

    def _run(self):
        socks = []
        try:
            for _ in range(8):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.connect((LOOPBACK4, self.port))
                s.setblocking(False)
                socks.append(s)
            total = int(self.qps * self.duration)
            i = 0
            end_wait = None
            for _ in range(10 ** 7):
                now = time.monotonic()
                while i < total and now >= self.t0 + i / self.qps:
                    qname = wild("%s%d" % (self.prefix, i))
                    wire = make_query(qname, "A", qid=i).to_wire()
                    try:
                        socks[i % 8].send(wire)
                    except OSError as e:
                        self.errors.append("send %d: %r" % (i, e))
                    self.sent[i] = now
                    i += 1
                if i >= total:
                    end_wait = end_wait or now + 4.0
                    if len(self.answers) >= total or now >= end_wait:
                        return
                nxt = self.t0 + i / self.qps if i < total else now + 0.05
                r, _, _ = select.select(socks, [], [], max(0.0, min(0.05, nxt - now)))
                for s in r:
                    for _ in range(1000):
                        try:
                            resp = s.recv(65535)
                        except (BlockingIOError, ConnectionRefusedError):
                            break
                        qid = struct.unpack("!H", resp[:2])[0]
                        rc = rcode_of(resp)
                        ok = False
                        if rc == dns.rcode.NOERROR:
                            try:
                                m = dns.message.from_wire(resp)
                                ok = (m.question[0].name.to_text().lower() == wild("%s%d" % (self.prefix, qid))
                                      and [x.to_text() for rr in m.answer for x in rr] == [WILD_ADDR])
                            except Exception:  # noqa: BLE001
                                ok = False
                        if qid not in self.answers:
                            self.answers[qid] = (time.monotonic(), rc, ok)
        except Exception as e:  # noqa: BLE001
            self.errors.append(repr(e))
        finally:
            for s in socks:
                s.close()

    def failures(self):
        """[(idx, sent time rel t0, what)] for queries not answered NOERROR correctly."""
        out = []
        for i, t in sorted(self.sent.items()):
            a = self.answers.get(i)
            if a is None:
                out.append((i, t - self.t0, "no answer"))
            elif not a[2]:
                out.append((i, t - self.t0, "%s after %.2f s" % (dns.rcode.to_text(a[1]), a[0] - t)))
        return out


@case
def failover_mid_load(h):
    """Two Unbound upstreams, 200 queries/s of unique names over UDP for 14 s.
    The upstream carrying the load is killed at 2 s: at most 10 queries fail.
    It restarts on the same port at 4 s; by the end its answers counter has grown
    by more than the number of probes sent (it carries client queries again).
    Prints the failover time (kill to the last failed query)."""
    u1, u2 = start_unbound_x(h), start_unbound_x(h)
    p = h.start_proxy(upstreams=[up_spec(u1.dot_port), up_spec(u2.dot_port)])
    load = UdpLoad(p.port, 200, 14.0)
    load.start()
    time.sleep(max(0.0, load.t0 + 1.8 - time.monotonic()))
    c0 = counters(p)
    a1, a2 = c0.upstream(u1.dot_port)["answers"], c0.upstream(u2.dot_port)["answers"]
    victim, other = (u1, u2) if a1 >= a2 else (u2, u1)
    print("before the kill: answers %d (port %d) vs %d (port %d); killing port %d" % (
        a1, u1.dot_port, a2, u2.dot_port, victim.dot_port))
    time.sleep(max(0.0, load.t0 + 2.0 - time.monotonic()))
    t_kill = time.monotonic()
    victim.stop()
    time.sleep(max(0.0, load.t0 + 4.0 - time.monotonic()))
    victim.start()
    t_restart = time.monotonic()
    c1 = counters(p)
    load.join()
    check(not load.thread.is_alive(), "harness: load thread did not finish")
    c2 = counters(p)
    fails = load.failures()
    total = len(load.sent)
    after_kill = [f for f in fails if load.t0 + f[1] >= t_kill - 0.5]
    last_fail = max((load.t0 + f[1] for f in after_kill), default=None)
    print("load: %d queries, %d not answered NOERROR correctly" % (total, len(fails)))
    print("failover: killed at +%.2f s, restarted at +%.2f s; %s" % (
        t_kill - load.t0, t_restart - load.t0,
        "no failed query" if last_fail is None else
        "last failed query sent %.3f s after the kill" % (last_fail - t_kill)))
    for f in fails[:20]:
        print("  failed: #%d sent at +%.3f s: %s" % f)
    around = [(load.answers[i][0] - t, t - t_kill) for i, t in load.sent.items()
              if i in load.answers and t_kill - 0.2 <= t <= t_kill + 2.0]
    if around:
        worst = max(around)
        slow = [a for a in around if a[0] > 0.1]
        print("failover: in the 2 s after the kill, slowest answer %.3f s (query sent %+.3f s from the kill); "
              "%d of %d answers slower than 100 ms" % (worst[0], worst[1], len(slow), len(around)))
    lat = sorted(load.answers[i][0] - t for i, t in load.sent.items() if i in load.answers)
    if lat:
        print("load latency: median %.4f s, p99 %.4f s, max %.3f s" % (
            lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[-1]))
    slow = sorted((t - load.t0, load.answers[i][0] - t) for i, t in load.sent.items()
                  if i in load.answers and load.answers[i][0] - t > 0.5)
    if slow:
        print("answers slower than 0.5 s: %d, sent between +%.2f s and +%.2f s (kill at +%.2f, restart at +%.2f); "
              "first: %s" % (len(slow), slow[0][0], slow[-1][0], t_kill - load.t0, t_restart - load.t0,
                             ", ".join("+%.2f:%.2fs" % x for x in slow[:8])))
    v0, v1, v2 = (c.upstream(victim.dot_port) for c in (c0, c1, c2))
    print("victim upstream at restart: %s\nvictim upstream at end: %s\nother upstream at end: %s" % (
        v1, v2, c2.upstream(other.dot_port)))
    check(not load.errors, "load generator errors: %s" % load.errors[:5])
    check(total >= 2500, "harness: only %d queries sent" % total)
    check(len(fails) <= 10, "%d of %d queries failed around the upstream kill (want <= 10); first: %s" % (
        len(fails), total, fails[:10]))
    probes = c2.get("probes") - c1.get("probes")
    grown = v2["answers"] - v1["answers"]
    check(grown > probes, "the restarted upstream answered %d queries in the %.1f s after its restart, "
          "not more than the %d probes sent meanwhile: it is not used again\nat restart: %s\nat end: %s" % (
              grown, time.monotonic() - t_restart, probes, c1, c2))
    check(p.alive(), "dotproxy died")


def _wait_answers(p, deadline_s, qname_prefix):
    """Query every 0.2 s until a correct NOERROR; returns seconds taken or None."""
    t0 = time.monotonic()
    last = None
    for i in range(1000):
        if time.monotonic() - t0 > deadline_s:
            return None, last
        wire, resp, _ = udp_query(p, wild("%s%d" % (qname_prefix, i)), timeout=2.5)
        last = resp
        if resp is not None and rcode_of(resp) == dns.rcode.NOERROR:
            return time.monotonic() - t0, resp
        time.sleep(0.2)
    return None, last


@case
def all_upstreams_down(h):
    """Two upstreams, both killed: UDP and TCP clients get SERVFAIL within
    --query-timeout 1000 (+0.5 s), the proxy stays up; both restart and correct
    answers resume within 15 s (the recovery time is printed)."""
    u1, u2 = start_unbound_x(h), start_unbound_x(h)
    p = h.start_proxy(upstreams=[up_spec(u1.dot_port), up_spec(u2.dot_port)],
                      extra=["--query-timeout", "1000"])
    wire, resp, _ = udp_query(p, wild("before"))
    _check_client_answer("both up", wire, resp, WILD_ADDR)
    u1.stop()
    u2.stop()
    t_down = time.monotonic()
    lat = []
    for i in range(6):
        for transport, fn in (("udp", udp_exchange), ("tcp", tcp_exchange)):
            wire = make_query(wild("down%d%s" % (i, transport)), "A").to_wire()
            try:
                resp, secs = fn(p.port, wire, timeout=4.0)
            except (socket.timeout, EOFError, OSError) as e:
                raise CaseFailure("all upstreams down, %s query %d: no response within 4 s (%r)" % (transport, i, e))
            msg = parse_or_fail("all down %s %d" % (transport, i), resp)
            check(msg.rcode() == dns.rcode.SERVFAIL, "all upstreams down, %s query %d: %s, want SERVFAIL" % (
                transport, i, dns.rcode.to_text(msg.rcode())))
            check(resp[:2] == wire[:2], "all down: ID not echoed")
            lat.append(secs)
            check(secs < 1.5, "all upstreams down, %s query %d: SERVFAIL after %.2f s (deadline 1 s)" % (
                transport, i, secs))
    print("all upstreams down: SERVFAIL latencies %s s" % ", ".join("%.3f" % x for x in lat))
    check(p.alive(), "dotproxy died with all upstreams down")
    time.sleep(max(0.0, t_down + 3.0 - time.monotonic()))
    u1.start()
    secs, last = _wait_answers(p, 15.0, "rec")
    check(secs is not None, "answers did not resume within 15 s of restarting one upstream (the other still "
          "down); last: %s" % describe(last))
    print("all upstreams down for %.1f s: answers resumed %.2f s after the first upstream was back" % (
        3.0, secs))
    u2.start()
    t_u2 = time.monotonic()
    both = None
    c = None
    for _ in range(100):
        c = counters(p)
        if all(c.upstream(x.dot_port)["healthy_shards"] == "2/2" for x in (u1, u2)):
            both = time.monotonic() - t_u2
            break
        if time.monotonic() - t_u2 > 15.0:
            break
        udp_query(p, wild("poll%d" % random.randrange(10 ** 9)), timeout=2.5)
        time.sleep(0.25)
    check(both is not None, "the second upstream was not healthy on every shard within 15 s of its restart:\n%s" % c)
    print("second upstream healthy on every shard %.2f s after its restart" % both)
    for i in range(10):
        wire, resp, _ = udp_query(p, wild("after%d" % i))
        _check_client_answer("after recovery %d" % i, wire, resp, WILD_ADDR)


@case
def silent_listener_failover(h):
    """A silent upstream (TLS completes, never answers) listed FIRST, a working
    Unbound second, --query-timeout 2000: every query gets NOERROR within the
    deadline (retried on the good one after 1 s), and once the silent one is
    unhealthy, quickly (the last 10 of 30 each under 0.3 s). Latencies printed."""
    s = h.start_silent_upstream()
    u = start_unbound_x(h)
    p = h.start_proxy(upstreams=[up_spec(s.port), up_spec(u.dot_port)],
                      extra=["--query-timeout", "2000"], ready=None)
    time.sleep(0.3)
    lat = []
    for i in range(30):
        wire, resp, secs = udp_query(p, wild("sil%d" % i), timeout=3.0)
        what = "query %d (silent upstream first)" % i
        check(resp is not None, "%s: no answer within 3 s (deadline 2 s); latencies so far %s" % (what, lat))
        _check_client_answer(what, wire, resp, WILD_ADDR)
        check(secs < 2.0, "%s: answered after %.2f s, past the 2 s deadline" % (what, secs))
        lat.append(round(secs, 3))
    print("silent first: latencies (s) %s" % lat)
    slow = [x for x in lat[-10:] if x >= 0.3]
    c = counters(p)
    check(not slow, "queries 20-29 should avoid the silent upstream (unhealthy by then) but took %s s; "
          "all latencies %s\n%s" % (slow, lat, c))
    print("silent upstream: %s" % c.upstream(s.port))


# --------------------------------------------------------------------------
# Configuration layers


def _run_env(argv, env_extra, timeout=5):
    return E.run_cmd(argv, timeout=timeout, env_extra=env_extra)


class EnvProxy(E.Proxy):
    """A Proxy started with extra environment variables."""

    def __init__(self, exe, workdir, args, env_extra, name):
        self.exe, self.args = exe, args
        self.stderr_path = os.path.join(workdir, name + ".stderr")
        self.stdout_path = os.path.join(workdir, name + ".stdout")
        self._err = open(self.stderr_path, "ab")
        self._out = open(self.stdout_path, "ab")
        env = E.child_env()
        env.update(env_extra)
        self.proc = subprocess.Popen([exe] + args, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=self._err, env=env)
        E._children.append(self.proc)


@case
def config_error_names_line(h):
    """Errors inside [[upstream]] tables name FILE:LINE (unknown key, bad
    address, bad pin), with and without a --upstream flag overriding the file's
    list; a bad DOTPROXY_UPSTREAMS names the variable. All with --check-config."""
    exe = h.need_exe()
    up = ["--upstream", "%s:853#%s" % (LOOPBACK4, TLS_NAME)]
    base = ["--listen", "%s:%d" % (LOOPBACK4, free_port()), "--ca-file", h.pki.ca_pem]
    files = [
        ("up-unknown.toml", 'threads = 1\n\n[[upstream]]\naddress = "127.0.0.1:853"\nname = "%s"\npriorty = 1\n' % TLS_NAME, 6),
        ("up-address.toml", '# upstreams\n[[upstream]]\naddress = "not-an-ip"\nname = "%s"\n' % TLS_NAME, 3),
        ("up-pin.toml", '[[upstream]]\naddress = "127.0.0.1:853"\nname = "%s"\npins = ["%%%%not-base64%%%%"]\n' % TLS_NAME, 4),
        ("up-type.toml", '[[upstream]]\naddress = "127.0.0.1:853"\npriority = "high"\n', 3),
    ]
    problems = []
    for name, text, line in files:
        path = os.path.join(h.dir, name)
        with open(path, "w") as f:
            f.write(text)
        for flags in (up, []):
            if not flags:
                # Without a flag the file's list is used; --check-config never
                # sends traffic, and the file's address is loopback anyway.
                pass
            rc, out, err = E.run_cmd([exe, "--config", path, "--check-config"] + base + flags, timeout=5)
            label = "%s (%s)" % (name, "with --upstream flag" if flags else "no flag")
            if rc in (0, None):
                problems.append("%s: exit %s, stdout %r" % (label, rc, out))
            elif "%s:%d" % (name, line) not in err:
                problems.append("%s: exit %s but stderr does not say %s:%d: %r" % (label, rc, name, line, err))
    rc, out, err = _run_env([exe, "--check-config"] + base + up, {"DOTPROXY_UPSTREAMS": "127.0.0.1:99999#x"})
    if rc in (0, None):
        problems.append("DOTPROXY_UPSTREAMS=127.0.0.1:99999#x (flag given): exit %s" % rc)
    rc, out, err = _run_env([exe, "--check-config"] + base, {"DOTPROXY_UPSTREAMS": "127.0.0.1:99999#x"})
    if rc in (0, None):
        problems.append("DOTPROXY_UPSTREAMS=127.0.0.1:99999#x: exit %s" % rc)
    elif "DOTPROXY_UPSTREAMS" not in err:
        problems.append("bad DOTPROXY_UPSTREAMS: stderr does not name the variable: %r" % err)
    check(not problems, "config errors:\n  " + "\n  ".join(problems))


@case
def env_overrides(h):
    """DOTPROXY_UPSTREAMS / DOTPROXY_LISTEN override the file (the file's
    upstream is a dead loopback port, so an answer proves the variable was
    used), and flags override the variables. Each configuration is first
    checked with --check-config, so the proxy only starts when every upstream
    it would use is the loopback one we expect."""
    exe = h.need_exe()
    u = start_unbound_x(h)
    dead = free_port()
    port_file, port_env, port_flag = free_port(), free_port(), free_port()
    conf = os.path.join(h.dir, "env.toml")
    with open(conf, "w") as f:
        f.write('listen = ["127.0.0.1:%d"]\nca_file = "%s"\nthreads = 1\n'
                '[[upstream]]\naddress = "127.0.0.1:%d"\nname = "%s"\n' % (
                    port_file, h.pki.ca_pem, dead, TLS_NAME))

    def checked(args, env, want_listen, want_up):
        rc, out, err = _run_env([exe, "--check-config"] + args, env)
        check(rc == 0, "--check-config %s env %s: exit %s\n%s%s" % (args, env, rc, out, err))
        want = "listen %s; upstreams %s;" % (want_listen, want_up)
        check(want in out, "--check-config %s env %s: want %r in %r" % (args, env, want, out))

    def run(args, env, port, n_up, good_port):
        p = EnvProxy(exe, h.dir, args + E.io_backend_args(), env, "dotproxy%d" % len(h.proxies))
        p.port = port
        h.proxies.append(p)
        h.wait_ready(p, "answer", 10.0)
        wire, resp, _ = udp_query(p, wild("env%d" % port))
        _check_client_answer("env config on port %d" % port, wire, resp, WILD_ADDR)
        c = counters(p, n_upstreams=n_up)
        check(len(c.up) == n_up, "want %d upstream lines, got:\n%s" % (n_up, c))
        check(c.upstream(good_port)["answers"] >= 1, "upstream %d gave no answers:\n%s" % (good_port, c))
        return p

    good = "127.0.0.1:%d#%s" % (u.dot_port, TLS_NAME)
    # 1. The environment overrides the file (listen and upstreams).
    env = {"DOTPROXY_UPSTREAMS": good, "DOTPROXY_LISTEN": "127.0.0.1:%d" % port_env}
    checked(["--config", conf], env, "127.0.0.1:%d" % port_env, good)
    p = run(["--config", conf], env, port_env, 1, u.dot_port)
    resp, _ = udp_exchange(port_file, make_query("a.example.test.", "A").to_wire(), timeout=0.5)
    check(resp is None, "the file's listen address answers although DOTPROXY_LISTEN overrides it")
    p.stop()
    # 2. Flags override the environment.
    env = {"DOTPROXY_UPSTREAMS": "127.0.0.1:%d#%s" % (dead, TLS_NAME),
           "DOTPROXY_LISTEN": "127.0.0.1:%d" % port_env}
    flags = ["--config", conf, "--upstream", good, "--listen", "127.0.0.1:%d" % port_flag]
    checked(flags, env, "127.0.0.1:%d" % port_flag, good)
    p = run(flags, env, port_flag, 1, u.dot_port)
    p.stop()
    # 3. A comma-separated list: two upstreams, the dead one first.
    env = {"DOTPROXY_UPSTREAMS": "127.0.0.1:%d#%s,%s" % (dead, TLS_NAME, good),
           "DOTPROXY_LISTEN": "127.0.0.1:%d" % port_env}
    checked(["--config", conf], env, "127.0.0.1:%d" % port_env,
            "127.0.0.1:%d#%s, %s" % (dead, TLS_NAME, good))
    p = run(["--config", conf], env, port_env, 2, u.dot_port)
    p.stop()


# --------------------------------------------------------------------------
# Cache


def _cache_proxy(h, u, extra=()):
    return h.start_proxy(u, extra=["--cache-size", "100", "--threads", "1"] + list(extra))


@case
def cache_hit_patches(h):
    """A cache hit, answered with the upstream STOPPED: the client's ID, its exact
    question bytes (0x20 case) and TTLs aged by the elapsed seconds; over UDP and
    TCP, with and without EDNS."""
    u = start_unbound_x(h)
    p = _cache_proxy(h, u)
    first = {}
    for edns in (None, 0):
        wire = make_query("TtL300.ExAmPlE.tEsT.", "A", edns=edns, qid=0x1111).to_wire()
        resp, _ = udp_exchange(p.port, wire)
        msg = E.check_same_answer("fill edns=%s" % edns, resp, wire, u.reference("ttl300.example.test.", "A"))
        first[edns] = msg
        # make_query(edns=None) still sends an OPT (dnspython adds one for the
        # payload), so both fills share one cache key: the second may be a hit
        # served a second after the first on a slow machine.
        want = [[300]] if edns is None else [[300], [299]]
        check(ttl_of(msg) in want, "fill edns=%s: TTL %s, want %s (fresh from upstream)" % (
            edns, ttl_of(msg), " or ".join(map(str, want))))
    t_fill = time.monotonic()
    ref = u.reference("ttl300.example.test.", "A")
    u.stop()
    time.sleep(2.6)
    c0 = counters(p)
    for i, (spelling, transport, edns, qid) in enumerate([
            ("ttl300.EXAMPLE.test.", "udp", None, 0x0000),
            ("TTL300.example.TEST.", "tcp", None, 0xFFFF),
            ("tTl300.eXaMpLe.TeSt.", "udp", 0, 0xBEEF),
            ("TTL300.EXAMPLE.TEST.", "tcp", 0, 0x0102)]):
        wire = make_query(spelling, "A", edns=edns, qid=qid).to_wire()
        fn = udp_exchange if transport == "udp" else tcp_exchange
        resp, secs = fn(p.port, wire, timeout=3.0)
        what = "hit %d (%s %s edns=%s id=%#x, upstream stopped)" % (i, transport, spelling, edns, qid)
        msg = E.check_same_answer(what, resp, wire, ref)
        qend = question_end(wire)
        check(resp[12:qend] == wire[12:qend], "%s: question bytes %r, sent %r" % (what, resp[12:qend], wire[12:qend]))
        elapsed = time.monotonic() - t_fill
        ttl = ttl_of(msg)[0]
        check(300 - elapsed - 1.5 <= ttl <= 300 - elapsed + 1.5 and ttl < 300,
              "%s: TTL %d after %.1f s in the cache (stored with 300)" % (what, ttl, elapsed))
        check(secs < 0.5, "%s: took %.2f s (a hit should be immediate)" % (what, secs))
    c1 = counters(p)
    check(c1.get("cache_hits") - c0.get("cache_hits") == 4, "cache_hits went %d -> %d for 4 hits" % (
        c0.get("cache_hits"), c1.get("cache_hits")))


@case
def cache_negative_soa(h):
    """NXDOMAIN and NODATA with an SOA are cached (RFC 2308) and served with the
    upstream stopped: same rcode, SOA in authority, TTL <= the SOA minimum (60)
    and aged. A negative answer without SOA (the static root zone) is not cached:
    SERVFAIL once the upstream is gone."""
    u = start_unbound_x(h)
    p = _cache_proxy(h, u, extra=["--query-timeout", "1000"])
    cases = [("nothere.example.test.", "A"), ("a.example.test.", "MX")]
    refs = {}
    for qname, qtype in cases:
        ref = u.reference(qname, qtype)
        check(any(r.rdtype == dns.rdatatype.SOA for r in ref.authority), "test data: %s %s has no SOA" % (qname, qtype))
        refs[(qname, qtype)] = ref
        wire = make_query(qname, qtype).to_wire()
        resp, _ = udp_exchange(p.port, wire)
        E.check_same_answer("fill %s %s" % (qname, qtype), resp, wire, ref)
    noso_ref = u.reference("nowhere.test.", "A")
    no_soa = not any(r.rdtype == dns.rdatatype.SOA for r in noso_ref.authority)
    if no_soa:
        wire = make_query("nowhere.test.", "A").to_wire()
        resp, _ = udp_exchange(p.port, wire)
        E.check_same_answer("fill nowhere.test.", resp, wire, noso_ref)
    u.stop()
    time.sleep(1.2)
    for qname, qtype in cases:
        wire = make_query(qname.upper(), qtype).to_wire()
        resp, secs = udp_exchange(p.port, wire, timeout=3.0)
        what = "cached negative %s %s (upstream stopped)" % (qname, qtype)
        msg = E.check_same_answer(what, resp, wire, refs[(qname, qtype)])
        soa = [r for r in msg.authority if r.rdtype == dns.rdatatype.SOA]
        check(soa and soa[0].ttl <= 59, "%s: SOA TTL %s, want aged below 60" % (what, soa and soa[0].ttl))
        check(secs < 0.5, "%s: %.2f s" % (what, secs))
    if no_soa:
        wire = make_query("nowhere.test.", "A").to_wire()
        resp, _ = udp_exchange(p.port, wire, timeout=3.0)
        check(resp is not None and rcode_of(resp) == dns.rcode.SERVFAIL,
              "NXDOMAIN without SOA must not be cached; with the upstream stopped got %s" % describe(resp))
    c = counters(p)
    check(c.get("cache_hits") >= 2, "cache_hits=%d\n%s" % (c.get("cache_hits"), c))


@case
def cache_servfail(h):
    """An upstream SERVFAIL is cached briefly (--cache-servfail-ttl, default 5 s):
    repeats within 2 s do not reach the upstream; after 6 s one does."""
    rec = start_recording(h, servfail=["broken.example.test."])
    p = h.start_proxy(upstreams=[up_spec(rec.port)], extra=["--cache-size", "100", "--threads", "1"])
    for i in range(4):
        wire, resp, _ = udp_query(p, "broken.example.test.")
        check(resp is not None and rcode_of(resp) == dns.rcode.SERVFAIL,
              "query %d: want the upstream's SERVFAIL, got %s" % (i, describe(resp)))
        time.sleep(0.4)
    n1 = len(rec.find("broken.example.test."))
    check(n1 == 1, "SERVFAIL not cached: the upstream saw %d queries for 4 client queries within 2 s" % n1)
    time.sleep(max(0.0, 6.0 - 1.6))
    wire, resp, _ = udp_query(p, "broken.example.test.")
    check(resp is not None and rcode_of(resp) == dns.rcode.SERVFAIL, "after 6 s: %s" % describe(resp))
    n2 = len(rec.find("broken.example.test."))
    check(n2 == 2, "after the 5 s SERVFAIL lifetime the upstream saw %d queries in total, want 2" % n2)


@case
def cache_serve_stale(h):
    """A record with TTL 2, cached; 2.5 s later the upstream is stopped: the
    expired entry is served (NOERROR, TTL 30, RFC 8767) within the deadline
    (--query-timeout 1000) + 0.5 s, counted in cache_stale_answers."""
    u = start_unbound_x(h)
    p = _cache_proxy(h, u, extra=["--query-timeout", "1000"])
    wire, resp, _ = udp_query(p, "ttl2.example.test.")
    msg = E.check_same_answer("fill", resp, wire, u.reference("ttl2.example.test.", "A"))
    time.sleep(2.6)
    u.stop()
    c0 = counters(p)
    for i, transport in enumerate(("udp", "tcp", "udp")):
        wire = make_query("TTL2.example.test.", "A").to_wire()
        fn = udp_exchange if transport == "udp" else tcp_exchange
        resp, secs = fn(p.port, wire, timeout=4.0)
        what = "stale %d (%s, upstream stopped, entry expired)" % (i, transport)
        msg = parse_or_fail(what, resp)
        check(msg.rcode() == dns.rcode.NOERROR, "%s: %s, want the stale NOERROR answer:\n%s" % (
            what, dns.rcode.to_text(msg.rcode()), msg.to_text()))
        check([r.to_text() for rr in msg.answer for r in rr] == ["192.0.2.2"], "%s: %s" % (what, msg.to_text()))
        check(ttl_of(msg) == [30], "%s: TTL %s, want 30 (RFC 8767)" % (what, ttl_of(msg)))
        check(resp[:2] == wire[:2] and resp[12:question_end(wire)] == wire[12:question_end(wire)],
              "%s: ID or question not echoed" % what)
        check(secs < 1.5, "%s: served after %.2f s (deadline 1 s)" % (what, secs))
        print("stale answer %d after %.3f s" % (i, secs))
    c1 = counters(p)
    check(c1.get("cache_stale_answers") - c0.get("cache_stale_answers") >= 3,
          "cache_stale_answers %d -> %d\n%s" % (c0.get("cache_stale_answers"), c1.get("cache_stale_answers"), c1))
    # Without a stale window the same situation is a SERVFAIL.
    p.stop()


@case
def cache_stale_window_zero(h):
    """--cache-stale-window 0: an expired entry is not served when the upstream
    is down (SERVFAIL within the deadline)."""
    u = start_unbound_x(h)
    p = _cache_proxy(h, u, extra=["--query-timeout", "1000", "--cache-stale-window", "0"])
    wire, resp, _ = udp_query(p, "ttl2.example.test.")
    E.check_same_answer("fill", resp, wire, u.reference("ttl2.example.test.", "A"))
    time.sleep(2.6)
    u.stop()
    wire, resp, secs = udp_query(p, "ttl2.example.test.", timeout=4.0)
    check(resp is not None and rcode_of(resp) == dns.rcode.SERVFAIL and secs < 1.5,
          "--cache-stale-window 0, expired entry, upstream stopped: want SERVFAIL < 1.5 s, got %s after %.2f s" % (
              describe(resp), secs))


@case
def cache_prefetch(h):
    """A TTL-10 record: a hit in the last second of its TTL triggers one
    background refresh (cache_prefetches >= 1); with the upstream then stopped,
    a query at about 11.5 s (past the original expiry) is a fresh hit, TTL 7-10,
    not a stale (TTL 30) answer."""
    u = start_unbound_x(h)
    p = _cache_proxy(h, u, extra=["--query-timeout", "1000"])
    ref = u.reference("ttl10.example.test.", "A")
    wire, resp, _ = udp_query(p, "ttl10.example.test.")
    E.check_same_answer("fill", resp, wire, ref)
    t0 = time.monotonic()
    time.sleep(7.5)
    seen = []
    trigger = None
    for _ in range(30):
        if time.monotonic() - t0 > 10.5:
            break
        wire, resp, _ = udp_query(p, "ttl10.example.test.")
        msg = E.check_same_answer("hit at +%.1f s" % (time.monotonic() - t0), resp, wire, ref)
        ttl = ttl_of(msg)[0]
        seen.append((round(time.monotonic() - t0, 2), ttl))
        if ttl <= 1:
            trigger = time.monotonic() - t0
            break
        time.sleep(0.2)
    check(trigger is not None, "never saw a hit with TTL <= 1 between 7.5 and 10.5 s: %s" % seen)
    time.sleep(0.5)
    c = counters(p)
    print("prefetch triggered by the hit at +%.2f s; hits (t, ttl): %s" % (trigger, seen))
    check(c.get("cache_prefetches") >= 1, "no prefetch after a hit in the last tenth of the TTL\n%s" % c)
    u.stop()
    time.sleep(max(0.0, t0 + 11.5 - time.monotonic()))
    c0 = counters(p)
    wire, resp, secs = udp_query(p, "TTL10.example.test.", timeout=3.0)
    msg = parse_or_fail("after prefetch, upstream stopped", resp)
    check(msg.rcode() == dns.rcode.NOERROR and 7 <= ttl_of(msg)[0] <= 10,
          "query at +%.1f s (upstream stopped after the prefetch): want a refreshed hit with TTL 7-10, got TTL %s "
          "(30 = stale: the prefetch did not refresh the entry):\n%s" % (
              time.monotonic() - t0, ttl_of(msg), msg.to_text()))
    c1 = counters(p)
    check(c1.get("cache_stale_answers") == c0.get("cache_stale_answers"), "served stale:\n%s" % c1)
    check(c1.get("cache_hits") == c0.get("cache_hits") + 1, "not a hit:\n%s\n%s" % (c0, c1))


@case
def cache_bounded(h):
    """--cache-size 10 --threads 1, then 100 distinct names: cache_entries <= 10
    and cache_evictions >= 90; the answers are still right."""
    u = start_unbound_x(h)
    p = h.start_proxy(u, extra=["--cache-size", "10", "--threads", "1"])
    for i in range(100):
        wire, resp, _ = udp_query(p, wild("b%d" % i))
        _check_client_answer("name %d" % i, wire, resp, WILD_ADDR)
    c = counters(p)
    print("cache after 100 names: entries=%d evictions=%d" % (c.get("cache_entries"), c.get("cache_evictions")))
    check(1 <= c.get("cache_entries") <= 10, "cache_entries=%d with --cache-size 10\n%s" % (c.get("cache_entries"), c))
    check(c.get("cache_evictions") >= 90, "cache_evictions=%d after 100+ distinct names\n%s" % (
        c.get("cache_evictions"), c))


@case
def cache_ttl_clamp(h):
    """--cache-min-ttl 3 --cache-max-ttl 4 --cache-stale-window 0, the upstream
    stopped after filling: at 1.5 s a TTL-5000 record is a hit whose TTL is at
    most 4 (clients are not told to keep it longer than the proxy does) and a
    TTL-1 record is still a hit (kept 3 s); at 5.5 s both have expired
    (SERVFAIL)."""
    u = start_unbound_x(h)
    p = _cache_proxy(h, u, extra=["--cache-min-ttl", "3", "--cache-max-ttl", "4", "--query-timeout", "1000",
                                   "--cache-stale-window", "0"])
    for name in ("clamp.example.test.", "tiny.example.test."):
        wire, resp, _ = udp_query(p, name)
        check(resp is not None and rcode_of(resp) == dns.rcode.NOERROR, "fill %s: %s" % (name, describe(resp)))
    t0 = time.monotonic()
    u.stop()
    problems = []
    time.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
    c0 = counters(p)
    wire, resp, _ = udp_query(p, "clamp.example.test.")
    msg = parse_or_fail("clamped", resp)
    if msg.rcode() != dns.rcode.NOERROR or not msg.answer:
        problems.append("TTL-5000 record, --cache-max-ttl 4, at 1.5 s: want a hit, got:\n%s" % msg.to_text())
    elif ttl_of(msg)[0] > 4:
        problems.append("TTL-5000 record, --cache-max-ttl 4, at 1.5 s: hit served with TTL %d "
                        "(the entry lives at most 4 s)" % ttl_of(msg)[0])
    wire, resp, _ = udp_query(p, "tiny.example.test.")
    msg = parse_or_fail("min ttl", resp)
    if msg.rcode() != dns.rcode.NOERROR or [r.to_text() for rr in msg.answer for r in rr] != ["192.0.2.51"]:
        problems.append("TTL-1 record, --cache-min-ttl 3, at 1.5 s (upstream stopped): want a hit, got:\n%s" %
                        msg.to_text())
    c1 = counters(p)
    if c1.get("cache_hits") - c0.get("cache_hits") != 2:
        problems.append("want 2 hits at 1.5 s:\n%s\n%s" % (c0, c1))
    time.sleep(max(0.0, t0 + 5.5 - time.monotonic()))
    for name, why in (("clamp.example.test.", "--cache-max-ttl 4"), ("tiny.example.test.", "--cache-min-ttl 3")):
        wire, resp, secs = udp_query(p, name, timeout=3.0)
        if resp is None or rcode_of(resp) != dns.rcode.SERVFAIL:
            problems.append("%s at 5.5 s (%s, no stale window, upstream stopped): want SERVFAIL (expired), got %s" % (
                name, why, describe(resp)))
    check(not problems, "TTL clamps:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------
# Allocation and bursts


def _mixed_loop(port, n, prefix, hot):
    """n UDP queries in windows of 100 over 4 sockets: even ones repeat a `hot`
    name (hits), odd ones are unique wild names (misses). Returns (answered,
    bad list)."""
    socks = []
    for _ in range(4):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.connect((LOOPBACK4, port))
        s.setblocking(False)
        socks.append(s)
    answered, bad = 0, []
    try:
        i = 0
        for _w in range((n + 99) // 100):
            pending = set()
            for _ in range(100):
                if i >= n:
                    break
                qid = i & 0xFFFF
                name = hot[(i // 2) % len(hot)] if i % 2 == 0 else wild("%s%d" % (prefix, i))
                socks[i % 4].send(make_query(name, "A", qid=qid).to_wire())
                pending.add(qid)
                i += 1
            deadline = time.monotonic() + 3.0
            for _ in range(10000):
                if not pending or time.monotonic() > deadline:
                    break
                r, _, _ = select.select(socks, [], [], 0.2)
                for s in r:
                    for _ in range(200):
                        try:
                            resp = s.recv(65535)
                        except BlockingIOError:
                            break
                        qid = struct.unpack("!H", resp[:2])[0]
                        if qid in pending:
                            pending.discard(qid)
                            answered += 1
                            if rcode_of(resp) != dns.rcode.NOERROR:
                                bad.append((qid, rcode_of(resp)))
            bad += [(q, "no answer") for q in pending]
    finally:
        for s in socks:
            s.close()
    return answered, bad


@case
def no_allocation_per_query(h):
    """--cache-size 1000 --threads 1: after a warm-up (dnsperf on a mixed file,
    then the same loop as measured), a loop of 10,000 queries (half cache hits,
    half unique misses that go upstream and evict) makes no heap allocation on
    the shard thread: heap_allocations and tls_allocations unchanged."""
    u = start_unbound_x(h)
    p = h.start_proxy(u, extra=["--cache-size", "1000", "--threads", "1"])
    hot = ["a.example.test.", "multi.example.test.", "ttl300.example.test.", wild("hot1"), wild("hot2")]
    if os.access(E.DNSPERF, os.X_OK):
        data = os.path.join(h.dir, "mixed.txt")
        with open(data, "w") as f:
            for i in range(3000):
                f.write("%s A\n" % (hot[i % len(hot)].rstrip(".") if i % 2 == 0 else "w%d.wild.example.test" % i))
        rc, out, err = E.run_cmd([E.DNSPERF, "-s", LOOPBACK4, "-p", str(p.port), "-d", data, "-l", "1",
                                  "-Q", "3000", "-c", "2", "-q", "100", "-t", "3"], timeout=30)
        check(rc == 0, "dnsperf warm-up: exit %s\n%s%s" % (rc, out, err))
    ans, bad = _mixed_loop(p.port, 3000, "warm", hot)
    check(not bad, "warm-up loop: %d bad answers, e.g. %s" % (len(bad), bad[:5]))
    time.sleep(0.3)
    c0 = counters(p)
    t0 = time.monotonic()
    ans, bad = _mixed_loop(p.port, 10000, "meas", hot)
    secs = time.monotonic() - t0
    time.sleep(0.3)
    c1 = counters(p)
    print("measured loop: %d queries answered in %.2f s; %s" % (ans, secs, c1))
    check(not bad, "measured loop: %d bad answers, e.g. %s" % (len(bad), bad[:5]))
    check(ans == 10000, "measured loop: %d of 10000 answered" % ans)
    dh = c1.get("cache_hits") - c0.get("cache_hits")
    dm = c1.get("cache_misses") - c0.get("cache_misses")
    check(dh >= 4900 and dm >= 4900, "measured loop: %d hits, %d misses (want ~5000 each)" % (dh, dm))
    conns = c1.get("upstream_connects") - c0.get("upstream_connects")
    d_heap = c1.get("heap_allocations") - c0.get("heap_allocations")
    d_tls = c1.get("tls_allocations") - c0.get("tls_allocations")
    check(d_heap == 0 and d_tls == 0,
          "10,000 queries (%d hits, %d misses, %d evictions) made %d heap and %d wolfSSL allocations on the "
          "shard thread%s\nbefore: %s\nafter: %s" % (
              dh, dm, c1.get("cache_evictions") - c0.get("cache_evictions"), d_heap, d_tls,
              "" if conns == 0 else " (NOTE: %d new upstream connection(s) were opened meanwhile; that "
              "explains allocations but a steady loop should not reconnect)" % conns, c0, c1))
    check(conns == 0, "upstream_connects changed by %d during the measured loop" % conns)


def _burst(port, names, n_socks=50, per_sock=40, limit=3.0):
    socks = []
    for _ in range(n_socks):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.connect((LOOPBACK4, port))
        s.setblocking(False)
        socks.append(s)
    pending = {}
    try:
        wires = []
        for si in range(n_socks):
            for k in range(per_sock):
                qid = k
                name = names(si, k)
                wires.append((si, qid, name, make_query(name, "A", qid=qid).to_wire()))
        t0 = time.monotonic()
        for si, qid, name, w in wires:
            socks[si].send(w)
            pending[(si, qid)] = name
        good = 0
        bad = []
        fd = {s.fileno(): i for i, s in enumerate(socks)}
        for _ in range(100000):
            left = t0 + limit - time.monotonic()
            if not pending or left <= 0:
                break
            r, _, _ = select.select(socks, [], [], min(left, 0.2))
            for s in r:
                si = fd[s.fileno()]
                for _ in range(200):
                    try:
                        resp = s.recv(65535)
                    except BlockingIOError:
                        break
                    qid = struct.unpack("!H", resp[:2])[0]
                    name = pending.pop((si, qid), None)
                    if name is None:
                        bad.append("socket %d: unknown or duplicate ID %d" % (si, qid))
                        continue
                    if rcode_of(resp) != dns.rcode.NOERROR:
                        bad.append("%s: %s" % (name, dns.rcode.to_text(rcode_of(resp))))
                    else:
                        good += 1
        return good, bad, pending, time.monotonic() - t0
    finally:
        for s in socks:
            s.close()


@case
def udp_burst_2000(h):
    """2,000 queries sent at once from 50 UDP sockets (40 each, all sent before
    any is read): all answered NOERROR within 3 s, with the cache off (unique
    names) and on (--cache-size 1000, names repeated)."""
    u = start_unbound_x(h)
    problems = []
    for label, extra, names in (
            ("cache off", [], lambda si, k: wild("bu%d-%d" % (si, k))),
            ("cache on", ["--cache-size", "1000"], lambda si, k: wild("rep%d" % (k % 8)))):
        p = h.start_proxy(u, extra=extra)
        if extra:
            for k in range(8):  # fill
                udp_query(p, wild("rep%d" % k))
        snmp0 = E.udp_udp_snmp()
        good, bad, pending, secs = _burst(p.port, names)
        snmp1 = E.udp_udp_snmp()
        c = counters(p)
        print("burst (%s): %d of 2000 NOERROR in %.2f s" % (label, good, secs))
        if not (good == 2000 and not bad and not pending):
            problems.append(
              "burst (%s): %d of 2000 NOERROR within 3 s; %d bad (e.g. %s); %d unanswered (e.g. %s). "
              "Host UDP InErrors/RcvbufErrors before %s after %s\n%s" % (
                  label, good, len(bad), bad[:5], len(pending), sorted(pending)[:5], snmp0, snmp1, c))
        p.stop()
    check(not problems, "\n".join(problems))



# ---- access control and TLS parameters

def _udp_from(source, port, wire, timeout):
    """One UDP exchange from a chosen loopback source address; None on timeout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.sendto(wire, (LOOPBACK4, port))
        for _ in range(100):
            data, _addr = sock.recvfrom(65535)
            if data[:2] == wire[:2]:
                return data
        return None
    except socket.timeout:
        return None
    finally:
        sock.close()


def _tcp_from(source, port, wire, timeout):
    """One TCP exchange from a chosen loopback source; None when the proxy
    closes the connection or says nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect((LOOPBACK4, port))
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        return tcp_read_msg(sock, time.monotonic() + timeout)
    except (socket.timeout, EOFError, OSError):
        return None
    finally:
        sock.close()


@case
def acl_allow(h):
    """--allow 127.0.0.2/32: queries from 127.0.0.2 are answered; from
    127.0.0.1 (outside the list) UDP gets no reply at all (no reflection) and
    TCP is closed at accept. Both refusals are counted."""
    u = start_unbound_x(h)
    p = h.start_proxy(upstreams=[up_spec(u.dot_port)],
                      extra=["--threads", "1", "--allow", "127.0.0.2/32"], ready=None)
    wire = make_query(wild("acl"), "A").to_wire()
    answer = None
    deadline = time.monotonic() + 10.0
    while answer is None and time.monotonic() < deadline:
        check(p.alive(), "dotproxy exited:\n%s" % p.stderr_text())
        answer = _udp_from("127.0.0.2", p.port, wire, 0.5)
    check(answer is not None, "no UDP answer from an allowed source (127.0.0.2) within 10 s")
    _check_client_answer("allowed source over UDP", wire, answer, WILD_ADDR)
    tcp_answer = _tcp_from("127.0.0.2", p.port, wire, 3.0)
    check(tcp_answer is not None, "no TCP answer from an allowed source (127.0.0.2)")
    _check_client_answer("allowed source over TCP", wire, tcp_answer, WILD_ADDR)

    refused = _udp_from("127.0.0.1", p.port, make_query(wild("acl2"), "A").to_wire(), 1.0)
    check(refused is None, "a source outside --allow got a UDP reply: %s" % describe(refused))
    refused = _tcp_from("127.0.0.1", p.port, wire, 2.0)
    check(refused is None, "a source outside --allow got a TCP reply: %s" % describe(refused))
    c = counters(p)
    check(c.get("dropped_acl") >= 1, "dropped_acl not counted:\n%s" % c)
    check(c.get("tcp_acl_refused") >= 1, "tcp_acl_refused not counted:\n%s" % c)


@case
def tls_prefers_chacha20(h):
    """TLS 1.3 towards an OpenSSL server (Unbound ranks AES-256-GCM first) ends
    up on ChaCha20-Poly1305: dotproxy does not offer AES-256-GCM, and its
    connect log line names the version and cipher."""
    u = start_unbound_x(h)
    p = h.start_proxy(upstreams=[up_spec(u.dot_port)], extra=["--threads", "1"])
    text = ""
    for _ in range(50):
        text = p.stderr_text()
        if "connected (" in text:
            break
        time.sleep(0.1)
    m = re.search(r"connected \((TLSv[0-9.]+) (\S+?)[,)]", text)
    check(m is not None, "no 'connected (VERSION CIPHER)' log line:\n%s" % text)
    check(m.group(1) == "TLSv1.3" and m.group(2) == "TLS13-CHACHA20-POLY1305-SHA256",
          "negotiated %s %s, want TLSv1.3 TLS13-CHACHA20-POLY1305-SHA256" % (m.group(1), m.group(2)))


def main():
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
