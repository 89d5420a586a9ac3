#!/usr/bin/python3
"""Hostile-upstream end-to-end tests: dotproxy against a scriptable, misbehaving DoT upstream.

The upstream is a Python TLS server on 127.0.0.1 (cert from a test CA made with
the openssl CLI at test time, SAN DNS:upstream.test + IP:127.0.0.1). It reads
RFC 7858 length-prefixed queries and reacts per case: wrong IDs, wrong
questions, answers out of order, one byte per TLS record, malformed messages,
torn frames, closing with queries in flight, edns-tcp-keepalive 0.

dotproxy runs with `--upstream 127.0.0.1:PORT#upstream.test --ca-file ca.pem
--threads 1` and its counters are read back with SIGUSR1 (the `counters:` line
on stderr).

    dotproxy_hostile.py --list
    dotproxy_hostile.py --dotproxy build/dotproxy --case upstream_unknown_id [--keep]

Exit status: 0 pass, 1 fail (what was sent, what came back, dotproxy's stderr),
77 skip. Reuses the PKI, process and DNS helpers of tests/e2e/dotproxy_e2e.py
(imported; its io_backend_args() adds `--io-backend` in the e2e_epoll suite).
Needs Debian's /usr/bin/python3 (python3-dnspython).
"""

import argparse
import os
import random
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import traceback
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))

import dotproxy_e2e as e2e  # noqa: E402  (tests/e2e harness, read-only for us)
from dotproxy_e2e import CaseFailure, CaseSkip, check, describe  # noqa: E402

import dns.edns  # noqa: E402
import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdataclass  # noqa: E402
import dns.rdatatype  # noqa: E402
import dns.rrset  # noqa: E402

LOOPBACK4 = e2e.LOOPBACK4
TLS_NAME = e2e.TLS_NAME
POISON_IP = "198.51.100.66"  # data that must never reach a client
SERVE_LIFETIME = 150.0        # hard cap on any upstream connection thread (s)
MAX_MESSAGES_PER_CONN = 20000


def ip_for(qname):
    """The A record the well-behaved upstream gives for qname (case-insensitive)."""
    n = qname.lower().rstrip(".") + "."
    return "192.0.2.%d" % (zlib.crc32(n.encode()) % 200 + 10)


# --------------------------------------------------------------------------
# The scriptable DoT upstream


class Query:
    """One query as the upstream received it."""

    def __init__(self, wire, conn):
        self.wire = bytes(wire)
        self.conn = conn
        self.time = time.monotonic()
        self.id = struct.unpack("!H", wire[:2])[0]
        self.msg = None
        self.qname = None
        self.qtype = None
        try:
            self.msg = dns.message.from_wire(self.wire)
            if self.msg.question:
                self.qname = self.msg.question[0].name.to_text().lower()
                self.qtype = self.msg.question[0].rdtype
        except Exception:  # noqa: BLE001 - recorded as an unparseable query
            pass

    def label(self):
        return "%s/%s id=%d conn#%d" % (
            self.qname, dns.rdatatype.to_text(self.qtype) if self.qtype is not None else "?",
            self.id, self.conn.number)


def build_answer(q, ip=None, qid=None, keepalive=None, question_from=None, rcode=None):
    """A response to q.msg: one A record (ip, default ip_for(qname)) for A queries.
    qid overrides the ID; question_from=(qname, qtype, qclass) answers another
    question (its own records); keepalive adds an edns-tcp-keepalive option."""
    if question_from is not None:
        qn, qt, qc = question_from
        base = dns.message.make_query(qn, qt, rdclass=qc, use_edns=0)
        base.id = q.id
    else:
        base = q.msg
    r = dns.message.make_response(base)
    r.flags |= dns.flags.RA
    qrr = base.question[0]
    if qrr.rdtype == dns.rdatatype.A and qrr.rdclass == dns.rdataclass.IN:
        r.answer.append(dns.rrset.from_text(qrr.name, 300, "IN", "A",
                                            ip or ip_for(qrr.name.to_text())))
    if rcode is not None:
        r.set_rcode(rcode)
    opts = []
    if keepalive is not None:
        opts.append(dns.edns.GenericOption(11, struct.pack("!H", keepalive)))
    if base.edns >= 0 or opts:
        r.use_edns(0, 0, 1232, options=opts)
    w = bytearray(r.to_wire())
    if qid is not None:
        w[0:2] = struct.pack("!H", qid & 0xFFFF)
    return bytes(w)


def swapcase_question(wire):
    """The same message with the letters of the question name in swapped case."""
    qend = e2e.question_end(wire)
    name = bytes(wire[12:qend - 4])
    return bytes(wire[:12]) + name.swapcase() + bytes(wire[qend - 4:])


def frame(msg):
    return struct.pack("!H", len(msg)) + msg


class UpConn:
    """One accepted DoT connection. write()/close() are safe from any thread."""

    def __init__(self, server, sock, number):
        self.server = server
        self.sock = sock
        self.number = number
        self.wlock = threading.Lock()
        self.closed = False
        self.peer_closed = False
        self.peer_closed_at = None
        self.opened_at = time.monotonic()

    def write(self, data, chunk=None):
        """Write bytes; chunk=N writes N bytes per sslsock.send (one TLS record each)."""
        with self.wlock:
            if self.closed:
                return False
            try:
                if chunk is None:
                    self.sock.sendall(data)
                else:
                    for i in range(0, len(data), chunk):
                        self.sock.sendall(data[i:i + chunk])
                return True
            except (OSError, ssl.SSLError) as e:
                self.server.note("conn#%d write failed: %r" % (self.number, e))
                return False

    def send_msg(self, msg, chunk=None):
        return self.write(frame(msg), chunk)

    def close(self):
        """Abrupt close: no close_notify, just the TCP FIN."""
        with self.wlock:
            if self.closed:
                return
            self.closed = True
            self.server.note("conn#%d closed by the upstream" % self.number)
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                self.sock.close()
            except OSError:
                pass


class HostileUpstream:
    """DoT server on 127.0.0.1. `scenario(up, q)` runs in the connection's thread
    for every query q (a Query); default: answer normally. Every thread ends
    within 0.2 s of stop(), and no connection thread outlives SERVE_LIFETIME."""

    def __init__(self, pki, scenario=None):
        self.scenario = scenario or (lambda up, q: up.answer(q))
        self.port, self.ctx, self.lsock = e2e.open_tls_listener(pki, 16)
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.t0 = time.monotonic()
        self.events = []
        self.queries = []      # every Query, in arrival order
        self.conns = []        # every UpConn
        self.state = {}        # scenario scratch space (guarded by self.lock)
        self._stop = threading.Event()
        self.threads = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    # -- bookkeeping
    def note(self, what):
        with self.lock:
            self.events.append((time.monotonic(), what))

    def events_text(self):
        with self.lock:
            ev = list(self.events)
        return "\n".join("  %+.3f s %s" % (t - self.t0, w) for t, w in ev[-60:])

    def queries_for(self, qname):
        qname = qname.lower()
        with self.lock:
            return [q for q in self.queries if q.qname == qname]

    def wait_for(self, pred, timeout):
        """Wait (bounded) until pred() is true under the lock; returns its value."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    return v
                self.cond.wait(min(left, 0.1))

    # -- actions a scenario uses
    def answer(self, q, chunk=None, **kw):
        w = build_answer(q, **kw)
        self.note("answer %s%s" % (q.label(), "" if not kw else " %r" % kw))
        return q.conn.send_msg(w, chunk)

    # -- server
    def _accept_loop(self):
        for _ in range(100000):
            if self._stop.is_set():
                return
            try:
                c, addr = self.lsock.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self._serve, args=(c, addr), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, c, addr):
        s = e2e.tls_accept(self.ctx, c, addr, self.note)
        if s is None:
            return
        with self.cond:
            conn = UpConn(self, s, len(self.conns) + 1)
            self.conns.append(conn)
            self.events.append((time.monotonic(), "conn#%d handshake done (%s:%d)" % ((conn.number,) + addr)))
            self.cond.notify_all()
        s.settimeout(0.2)
        buf = b""
        end = time.monotonic() + SERVE_LIFETIME
        handled = 0
        try:
            while not self._stop.is_set() and not conn.closed and time.monotonic() < end:
                try:
                    data = s.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
                if not data:
                    with self.cond:
                        conn.peer_closed = True
                        conn.peer_closed_at = time.monotonic()
                        self.events.append((time.monotonic(), "conn#%d closed by dotproxy" % conn.number))
                        self.cond.notify_all()
                    return
                buf += data
                while len(buf) >= 2 and handled < MAX_MESSAGES_PER_CONN:
                    (n,) = struct.unpack("!H", buf[:2])
                    if len(buf) < 2 + n:
                        break
                    q = Query(buf[2:2 + n], conn)
                    buf = buf[2 + n:]
                    handled += 1
                    with self.cond:
                        self.queries.append(q)
                        self.events.append((time.monotonic(), "query %s" % q.label()))
                        self.cond.notify_all()
                    if q.msg is None or q.qname is None:
                        continue
                    try:
                        self.scenario(self, q)
                    except Exception:  # noqa: BLE001 - a scenario bug is reported, not hidden
                        self.note("scenario error: %s" % traceback.format_exc())
                    if conn.closed:
                        return
        except (ssl.SSLError, OSError) as e:
            if not conn.closed:
                self.note("conn#%d error: %r" % (conn.number, e))
                with self.cond:
                    conn.peer_closed = True
                    conn.peer_closed_at = time.monotonic()
                    self.cond.notify_all()
        finally:
            conn.close() if not conn.closed else None

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=3)
        for t in self.threads:
            t.join(timeout=3)
        for c in self.conns:
            c.close()
        self.lsock.close()


# --------------------------------------------------------------------------
# dotproxy side


class World:
    """A case's world: the harness (temp dir, PKI, child cleanup), one hostile
    upstream and one dotproxy (--threads 1) pointed at it."""

    def __init__(self, h):
        self.h = h
        self.up = None
        self.p = None

    def start(self, scenario=None, query_timeout=1000, extra=(), ready=True):
        self.up = HostileUpstream(self.h.pki, scenario)
        self.h.silent.append(self.up)  # Harness.close() stops it (it has .stop())
        port = e2e.free_port()
        args = ["--listen", "%s:%d" % (LOOPBACK4, port),
                "--upstream", "%s:%d#%s" % (LOOPBACK4, self.up.port, TLS_NAME),
                "--ca-file", self.h.pki.ca_pem, "--threads", "1",
                "--query-timeout", str(query_timeout)] + e2e.io_backend_args() + list(extra)
        self.p = e2e.Proxy(self.h.need_exe(), self.h.dir, args, "dotproxy%d" % len(self.h.proxies))
        self.p.port = port
        self.h.proxies.append(self.p)
        if ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        last = None
        for i in range(200):
            if time.monotonic() >= deadline:
                break
            check(self.p.alive(), "dotproxy exited (rc=%s) during startup" % self.p.proc.returncode)
            qname = "ready%d.example.test." % i
            wire = e2e.make_query(qname, "A").to_wire()
            resp, _ = e2e.udp_exchange(self.p.port, wire, timeout=1.5)
            if resp is not None:
                last = resp
                if e2e.rcode_of(resp) == dns.rcode.NOERROR and struct.unpack("!H", resp[6:8])[0] > 0:
                    return
            time.sleep(0.1)
        raise CaseFailure("dotproxy not ready within %.0f s; last response: %s\nupstream events:\n%s" % (
            timeout, describe(last), self.up.events_text()))

    def counters(self, timeout=3.0):
        """SIGUSR1, then parse the new `counters:` line dotproxy logs to stderr."""
        check(self.p.alive(), "dotproxy died (rc=%s)" % self.p.proc.returncode)

        def lines():
            with open(self.p.stderr_path, "r", errors="replace") as f:
                return [l for l in f.read().splitlines() if " counters:" in l]

        before = len(lines())
        os.kill(self.p.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = lines()
            if len(got) > before:
                line = got[-1].split(" counters:", 1)[1]
                return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
            time.sleep(0.05)
        raise CaseFailure("no counters line on stderr within %.0f s of SIGUSR1" % timeout)

    def check_alive(self, what=""):
        check(self.p.alive(), "dotproxy died %s(rc=%s)" % (what, self.p.proc.returncode))

    def context(self):
        return "\nupstream events:\n%s" % self.up.events_text()


def udp_ask(w, qname, qtype="A", timeout=3.0, qid=None):
    q = e2e.make_query(qname, qtype, qid=qid)
    wire = q.to_wire()
    resp, secs = e2e.udp_exchange(w.p.port, wire, timeout=timeout)
    return wire, resp, secs


def check_good(what, resp, qwire, qname, w=None):
    """resp answers qwire: client ID and question bytes echoed exactly, NOERROR,
    exactly one A record with the well-behaved data, never the poison."""
    ctx = w.context() if w is not None else ""
    check(resp is not None, "%s: no response%s" % (what, ctx))
    check(len(resp) >= 12 and resp[:2] == qwire[:2],
          "%s: ID %s, sent %s%s" % (what, resp[:2].hex(), qwire[:2].hex(), ctx))
    qend = e2e.question_end(qwire)
    check(resp[12:qend] == qwire[12:qend], "%s: question not echoed exactly: sent %r got %r%s" % (
        what, qwire[12:qend], resp[12:qend], ctx))
    msg = e2e.parse_or_fail(what, resp)
    check(msg.flags & dns.flags.QR, "%s: QR=0" % what)
    check(msg.rcode() == dns.rcode.NOERROR, "%s: rcode %s, want NOERROR:\n%s%s" % (
        what, dns.rcode.to_text(msg.rcode()), msg.to_text(), ctx))
    ips = [r.address for rr in msg.answer for r in rr if rr.rdtype == dns.rdatatype.A]
    check(POISON_IP not in ips, "%s: the bogus answer's data %s reached the client:\n%s%s" % (
        what, POISON_IP, msg.to_text(), ctx))
    check(ips == [ip_for(qname)], "%s: answer %s, want [%s]:\n%s%s" % (
        what, ips, ip_for(qname), msg.to_text(), ctx))
    return msg


def check_servfail(what, resp, qwire, w=None):
    ctx = w.context() if w is not None else ""
    check(resp is not None, "%s: no response%s" % (what, ctx))
    check(resp[:2] == qwire[:2], "%s: ID %s, sent %s" % (what, resp[:2].hex(), qwire[:2].hex()))
    qend = e2e.question_end(qwire)
    check(resp[12:qend] == qwire[12:qend], "%s: question not echoed exactly" % what)
    msg = e2e.parse_or_fail(what, resp)
    check(msg.rcode() == dns.rcode.SERVFAIL and not msg.answer,
          "%s: want SERVFAIL without records, got:\n%s%s" % (what, msg.to_text(), ctx))
    return msg


def check_counter(w, c, name, minimum, what):
    check(c.get(name, 0) >= minimum, "%s: counter %s=%d, want >= %d (all: %s)%s" % (
        what, name, c.get(name, 0), minimum, c, w.context()))


# --------------------------------------------------------------------------
# Cases

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def names(prefix):
    """A per-run unique name under example.test (so nothing is shared between runs)."""
    return "%s-%06d.example.test." % (prefix, random.randrange(1000000))


@case
def upstream_unknown_id(h):
    """A wrong-ID answer (carrying bogus data) is discarded; the right answer
    that follows is delivered; upstream_unknown_id counts it. With only the
    wrong-ID answer the client gets SERVFAIL at the deadline, never the data.
    A duplicate of the right answer is discarded too (one reply per query)."""
    fix = names("wrongid-then-right")
    only = names("wrongid-only")
    dup = names("dup-answer")

    def scenario(up, q):
        if q.qname in (fix, only):
            up.answer(q, qid=q.id ^ 0x5A5A, ip=POISON_IP)
            if q.qname == fix:
                time.sleep(0.05)
                up.answer(q)
        elif q.qname == dup:
            up.answer(q)
            up.answer(q, ip=POISON_IP)
        else:
            up.answer(q)

    w = World(h).start(scenario, query_timeout=1000)
    base = w.counters().get("upstream_unknown_id", 0)
    qwire, resp, _ = udp_ask(w, fix)
    check_good("wrong ID then right answer (%s)" % fix, resp, qwire, fix, w)
    c = w.counters()
    check_counter(w, c, "upstream_unknown_id", base + 1, "after a wrong-ID answer")

    qwire, resp, secs = udp_ask(w, only, timeout=4.0)
    check_servfail("only a wrong-ID answer (%s)" % only, resp, qwire, w)
    check(0.8 <= secs < 2.5, "only a wrong-ID answer: SERVFAIL after %.2f s, want at the 1 s deadline" % secs)
    c = w.counters()
    check_counter(w, c, "upstream_unknown_id", base + 2, "after the second wrong-ID answer")
    check_counter(w, c, "servfail_timeout", 1, "wrong-ID only")

    # Duplicate answer: the second copy (bogus data) must not be sent anywhere.
    q = e2e.make_query(dup, "A")
    qwire = q.to_wire()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((LOOPBACK4, w.p.port))
        s.send(qwire)
        got = []
        deadline = time.monotonic() + 1.5
        for _ in range(10):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                got.append(s.recv(65535))
            except socket.timeout:
                break
    finally:
        s.close()
    check(len(got) == 1, "duplicate upstream answer: client got %d datagrams, want 1: %s%s" % (
        len(got), [describe(g) for g in got], w.context()))
    check_good("duplicate upstream answer (%s)" % dup, got[0], qwire, dup, w)
    c = w.counters()
    check_counter(w, c, "upstream_unknown_id", base + 3, "after a duplicate answer")
    w.check_alive()


@case
def upstream_question_mismatch(h):
    """An answer with the right ID but another QNAME, QTYPE or QCLASS is never
    delivered: the correct answer sent afterwards is; with only the wrong one
    the client gets SERVFAIL at the deadline. upstream_question_mismatch counts."""
    then_right = names("mismatch-then-right")
    wrong_name = names("mismatch-name-only")
    wrong_type = names("mismatch-type-only")
    wrong_class = names("mismatch-class-only")

    def scenario(up, q):
        if q.qname == then_right:
            up.answer(q, question_from=("other.example.test.", "A", "IN"), ip=POISON_IP)
            up.answer(q, question_from=(q.qname, "AAAA", "IN"))
            time.sleep(0.05)
            up.answer(q)
        elif q.qname == wrong_name:
            up.answer(q, question_from=("x" + q.qname, "A", "IN"), ip=POISON_IP)
        elif q.qname == wrong_type:
            up.answer(q, question_from=(q.qname, "TXT", "IN"))
        elif q.qname == wrong_class:
            up.answer(q, question_from=(q.qname, "A", "CH"))
        else:
            up.answer(q)

    w = World(h).start(scenario, query_timeout=1000)
    base = w.counters().get("upstream_question_mismatch", 0)
    qwire, resp, _ = udp_ask(w, then_right)
    check_good("wrong QNAME and QTYPE answers, then the right one", resp, qwire, then_right, w)
    check_counter(w, w.counters(), "upstream_question_mismatch", base + 2, "two mismatched answers")
    n = 2
    for what, qname in (("wrong QNAME only", wrong_name), ("wrong QTYPE only", wrong_type),
                        ("wrong QCLASS only", wrong_class)):
        qwire, resp, secs = udp_ask(w, qname, timeout=4.0)
        check_servfail("%s (%s)" % (what, qname), resp, qwire, w)
        check(0.8 <= secs < 2.5, "%s: SERVFAIL after %.2f s, want at the 1 s deadline" % (what, secs))
        n += 1
        check_counter(w, w.counters(), "upstream_question_mismatch", base + n, what)
    w.check_alive()


@case
def upstream_case_randomised(h):
    """An upstream that answers with the QNAME in other letter case is accepted
    (DNS names compare case-insensitively); the client gets its own question
    bytes back exactly, over UDP and TCP."""

    def scenario(up, q):
        w = build_answer(q)
        if "casey" in q.qname:
            w = swapcase_question(w)
            up.note("answer %s with the qname case swapped" % q.label())
        q.conn.send_msg(w)

    w = World(h).start(scenario, query_timeout=1000)
    for i, spelling in enumerate(["casey-%d.example.test." % random.randrange(10**6),
                                  "CaSeY-%d.ExAmPlE.tEsT." % random.randrange(10**6),
                                  "CASEY-%d.EXAMPLE.TEST." % random.randrange(10**6)]):
        for transport in ("udp", "tcp"):
            q = e2e.make_query(spelling, "A")
            qwire = q.to_wire()
            fn = e2e.udp_exchange if transport == "udp" else e2e.tcp_exchange
            resp, _ = fn(w.p.port, qwire, timeout=3.0)
            check_good("%s %s (upstream swaps the case)" % (transport, spelling), resp, qwire, spelling, w)
    c = w.counters()
    check(c.get("upstream_question_mismatch", 0) == 0,
          "case-swapped answers counted as mismatches: %s" % c)
    w.check_alive()


@case
def upstream_out_of_order(h):
    """The upstream holds query A, answers B first, then A. Over one pipelined
    TCP client connection and over two UDP sockets, each client answer carries
    its own ID, question and data."""
    lock = threading.Lock()
    held = {}

    def scenario(up, q):
        tag = q.qname.split("-")[0]
        if tag not in ("ooo1", "ooo2"):
            up.answer(q)
            return
        key = q.qname.split("-", 1)[1]  # shared suffix pairs A and B
        if tag == "ooo1":
            with lock:
                held[key] = q
            up.note("holding %s" % q.label())
            return
        # B: answer it, then the held A (waiting up to 1 s for A to arrive).
        up.answer(q)
        deadline = time.monotonic() + 1.0
        a = None
        for _ in range(100):
            with lock:
                a = held.pop(key, None)
            if a is not None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if a is not None:
            up.answer(a)

    w = World(h).start(scenario, query_timeout=2000)

    def order_ok(a, b):
        qa, qb = w.up.queries_for(a), w.up.queries_for(b)
        check(qa and qb, "upstream did not see both queries (%s: %d, %s: %d)%s" % (
            a, len(qa), b, len(qb), w.context()))
        ev = [e for _, e in w.up.events]
        ia = [i for i, e in enumerate(ev) if e.startswith("answer " + a)]
        ib = [i for i, e in enumerate(ev) if e.startswith("answer " + b)]
        check(ia and ib and ib[0] < ia[0], "upstream did not answer B before A%s" % w.context())

    # TCP: A and B pipelined on one client connection.
    suffix = "%06d.example.test." % random.randrange(10**6)
    a, b = "ooo1-tcp" + suffix, "ooo2-tcp" + suffix
    qa, qb = e2e.make_query(a, "A"), e2e.make_query(b, "A")
    if qa.id == qb.id:
        qb.id ^= 1
    wa, wb = qa.to_wire(), qb.to_wire()
    s = e2e.tcp_connect(w.p.port)
    try:
        s.sendall(frame(wa) + frame(wb))
        deadline = time.monotonic() + 4.0
        got = [e2e.tcp_read_msg(s, deadline), e2e.tcp_read_msg(s, deadline)]
    except (socket.timeout, EOFError, OSError) as e:
        raise CaseFailure("TCP pipelined A,B: %r%s" % (e, w.context()))
    finally:
        s.close()
    by_id = {g[:2]: g for g in got}
    check(set(by_id) == {wa[:2], wb[:2]}, "TCP: reply IDs %s, want %s and %s" % (
        [g[:2].hex() for g in got], wa[:2].hex(), wb[:2].hex()))
    check_good("TCP pipelined A (answered second)", by_id[wa[:2]], wa, a, w)
    check_good("TCP pipelined B (answered first)", by_id[wb[:2]], wb, b, w)
    check(got[0][:2] == wb[:2], "TCP: B's answer should arrive first (upstream answered it first)")
    order_ok(a, b)

    # UDP: two sockets, A then B, same client ID on purpose (the proxy must
    # route by its own upstream ID, not the client's).
    suffix = "%06d.example.test." % random.randrange(10**6)
    a, b = "ooo1-udp" + suffix, "ooo2-udp" + suffix
    cid = random.randrange(65536)
    wa = e2e.make_query(a, "A", qid=cid).to_wire()
    wb = e2e.make_query(b, "A", qid=cid).to_wire()
    sa = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sa.connect((LOOPBACK4, w.p.port))
        sb.connect((LOOPBACK4, w.p.port))
        sa.send(wa)
        time.sleep(0.02)
        sb.send(wb)
        res = {}
        for name, sk in (("A", sa), ("B", sb)):
            sk.settimeout(4.0)
            try:
                res[name] = sk.recv(65535)
            except socket.timeout:
                res[name] = None
    finally:
        sa.close()
        sb.close()
    check_good("UDP socket A (answered second)", res["A"], wa, a, w)
    check_good("UDP socket B (answered first)", res["B"], wb, b, w)
    order_ok(a, b)
    w.check_alive()


@case
def upstream_fragmented_records(h):
    """Answers written one byte per TLS record (length prefix split too) and in
    7-byte records that straddle message boundaries; and 20 answers in one TLS
    write. Everything is delivered intact."""
    batch_names = []
    lock = threading.Lock()
    batch = []

    def scenario(up, q):
        if q.qname.startswith("onebyte"):
            up.note("answer %s one byte per record" % q.label())
            q.conn.send_msg(build_answer(q), chunk=1)
        elif q.qname.startswith("batch"):
            with lock:
                batch.append(q)
                ready = len(batch) == len(batch_names)
                todo = list(batch) if ready else []
                if ready:
                    batch.clear()
            if ready:
                # Normally all on one connection; if not, one write per connection.
                by_conn = {}
                for x in todo:
                    by_conn.setdefault(x.conn.number, (x.conn, []))[1].append(x)
                for conn, xs in by_conn.values():
                    data = b"".join(frame(build_answer(x)) for x in xs)
                    if xs[0].qname.startswith("batch7"):
                        up.note("answer %d batch7 queries in 7-byte records on conn#%d" % (len(xs), conn.number))
                        conn.write(data, chunk=7)
                    else:
                        up.note("answer %d batch1 queries in one TLS write (%d bytes) on conn#%d" % (
                            len(xs), len(data), conn.number))
                        conn.write(data)
        else:
            up.answer(q)

    w = World(h).start(scenario, query_timeout=3000)
    for i in range(3):
        for transport in ("udp", "tcp"):
            name = names("onebyte%d%s" % (i, transport))
            q = e2e.make_query(name, "A", edns=0 if i % 2 else None)
            qwire = q.to_wire()
            fn = e2e.udp_exchange if transport == "udp" else e2e.tcp_exchange
            resp, _ = fn(w.p.port, qwire, timeout=4.0)
            check_good("%s answer written one byte per TLS record" % transport, resp, qwire, name, w)

    for prefix in ("batch1", "batch7"):
        # 20 queries on one TCP client connection; the upstream waits for all
        # of them (on whichever connection), then writes all answers at once.
        with lock:
            batch_names[:] = [names("%s-%02d" % (prefix, i)) for i in range(20)]
        qs = [e2e.make_query(n, "A") for n in batch_names]
        ids = random.sample(range(65536), len(qs))
        for q, i in zip(qs, ids):
            q.id = i
        wires = [q.to_wire() for q in qs]
        s = e2e.tcp_connect(w.p.port)
        try:
            s.sendall(b"".join(frame(x) for x in wires))
            deadline = time.monotonic() + 5.0
            got = []
            for _ in wires:
                got.append(e2e.tcp_read_msg(s, deadline))
        except (socket.timeout, EOFError, OSError) as e:
            raise CaseFailure("%s: got %d of %d answers: %r%s" % (prefix, len(got), len(wires), e, w.context()))
        finally:
            s.close()
        by_id = {g[:2]: g for g in got}
        check(len(by_id) == len(wires), "%s: %d distinct reply IDs for %d queries" % (prefix, len(by_id), len(wires)))
        for name, qwire in zip(batch_names, wires):
            check(qwire[:2] in by_id, "%s: no reply for %s" % (prefix, name))
            check_good("%s %s" % (prefix, name), by_id[qwire[:2]], qwire, name, w)
        ev = "\n".join(e for _, e in w.up.events)
        check(re.search(r"answer \d+ %s queries" % prefix, ev), "%s: the upstream never batched the answers "
              "(the queries did not all arrive?)%s" % (prefix, w.context()))
    w.check_alive()


@case
def upstream_malformed_answer(h):
    """Before the real answer the upstream sends a 5-byte message, a zero-length
    frame, a copy of the query (QR=0, right ID), 30 bytes of 0xff and a
    message whose question name runs past its end. The proxy survives, counts
    upstream_malformed, and the client gets the real answer; when the real one
    never comes, SERVFAIL at the deadline."""
    then_real = names("malformed-then-real")
    only = names("malformed-only")

    def junk(q):
        truncated = build_answer(q)
        qend = e2e.question_end(q.wire)
        truncated = truncated[:12] + truncated[12:qend - 6]  # name cut mid-label
        return [q.wire[:5], b"", q.wire, b"\xff" * 30, truncated]

    def scenario(up, q):
        if q.qname in (then_real, only):
            for m in junk(q):
                q.conn.send_msg(m)
            up.note("sent 5 malformed messages for %s" % q.label())
            if q.qname == then_real:
                time.sleep(0.05)
                up.answer(q)
        else:
            up.answer(q)

    w = World(h).start(scenario, query_timeout=1000)
    base = w.counters().get("upstream_malformed", 0)
    qwire, resp, _ = udp_ask(w, then_real)
    check_good("malformed messages, then the real answer", resp, qwire, then_real, w)
    c = w.counters()
    check_counter(w, c, "upstream_malformed", base + 5, "five malformed upstream messages")
    qwire, resp, secs = udp_ask(w, only, timeout=4.0)
    check_servfail("malformed messages only (%s)" % only, resp, qwire, w)
    check(0.8 <= secs < 2.5, "malformed only: SERVFAIL after %.2f s, want at the 1 s deadline" % secs)
    check_counter(w, w.counters(), "upstream_malformed", base + 10, "ten malformed upstream messages")
    for i in range(3):
        name = names("after-malformed%d" % i)
        qwire, resp, _ = udp_ask(w, name)
        check_good("normal query after the malformed ones", resp, qwire, name, w)
    w.check_alive()


@case
def upstream_closes_with_queries_in_flight(h):
    """The upstream reads the query and closes the connection without answering
    (the first time it sees that name); dotproxy retries once on a new
    connection, which answers: the client gets NOERROR, retried >= 1. Over UDP
    and TCP, and for a batch of 5 in-flight queries closed at once."""
    lock = threading.Lock()
    seen = set()
    group = []

    def scenario(up, q):
        if q.qname.startswith("drop-"):
            with lock:
                first = q.qname not in seen
                seen.add(q.qname)
            if first:
                up.note("closing on %s without answering" % q.label())
                q.conn.close()
                return
        elif q.qname.startswith("dropgroup-"):
            with lock:
                first = q.qname not in seen
                seen.add(q.qname)
                if first:
                    group.append(q)
                todo = list(group) if len(group) == 5 else []
                if todo:
                    group.clear()
            if first:
                if todo:
                    up.note("closing with %d queries in flight" % len(todo))
                    for x in todo:
                        x.conn.close()
                return
        up.answer(q)

    w = World(h).start(scenario, query_timeout=2000)
    c0 = w.counters()
    conns_before = len(w.up.conns)
    for transport in ("udp", "tcp"):
        name = names("drop-" + transport)
        qwire = e2e.make_query(name, "A").to_wire()
        fn = e2e.udp_exchange if transport == "udp" else e2e.tcp_exchange
        try:
            resp, secs = fn(w.p.port, qwire, timeout=4.0)
        except (socket.timeout, EOFError, OSError) as e:
            raise CaseFailure("%s: %r%s" % (transport, e, w.context()))
        check_good("%s query whose first connection closed" % transport, resp, qwire, name, w)
        check(secs < 1.5, "%s: the retried answer took %.2f s (a retry, not the deadline)" % (transport, secs))
        check(len(w.up.queries_for(name)) == 2, "%s: upstream saw the query %d times, want 2%s" % (
            transport, len(w.up.queries_for(name)), w.context()))
    c = w.counters()
    check_counter(w, c, "retried", c0.get("retried", 0) + 2, "two closed connections")
    check_counter(w, c, "upstream_closed", c0.get("upstream_closed", 0) + 2, "two closed connections")
    check(len(w.up.conns) >= conns_before + 2, "no new upstream connections after the closes%s" % w.context())

    # Five queries in flight on the connection when it closes.
    gnames = [names("dropgroup-%d" % i) for i in range(5)]
    wires = [e2e.make_query(n, "A").to_wire() for n in gnames]
    socks = []
    try:
        for x in wires:
            sk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sk.connect((LOOPBACK4, w.p.port))
            socks.append(sk)
            sk.send(x)
        for sk, x, n in zip(socks, wires, gnames):
            sk.settimeout(4.0)
            try:
                resp = sk.recv(65535)
            except socket.timeout:
                resp = None
            check_good("one of 5 queries in flight at the close (%s)" % n, resp, x, n, w)
    finally:
        for sk in socks:
            sk.close()
    c = w.counters()
    check_counter(w, c, "retried", c0.get("retried", 0) + 7, "5 more queries lost with a connection")
    w.check_alive()


@case
def upstream_oversized_length(h):
    """The upstream answers with a length prefix of 65535 followed by only 100
    bytes, then closes. The proxy survives; the query is retried on a new
    connection and answered; later queries are answered normally."""
    lock = threading.Lock()
    seen = set()

    def scenario(up, q):
        if q.qname.startswith("torn-"):
            with lock:
                first = q.qname not in seen
                seen.add(q.qname)
            if first:
                a = build_answer(q)
                up.note("torn frame (prefix 65535, %d bytes) then close for %s" % (len(a), q.label()))
                q.conn.write(struct.pack("!H", 65535) + a + b"\0" * (100 - len(a)))
                time.sleep(0.1)
                q.conn.close()
                return
        up.answer(q)

    w = World(h).start(scenario, query_timeout=2000)
    for transport in ("udp", "tcp", "udp"):
        name = names("torn-" + transport)
        qwire = e2e.make_query(name, "A").to_wire()
        fn = e2e.udp_exchange if transport == "udp" else e2e.tcp_exchange
        try:
            resp, secs = fn(w.p.port, qwire, timeout=4.0)
        except (socket.timeout, EOFError, OSError) as e:
            raise CaseFailure("%s: %r%s" % (transport, e, w.context()))
        w.check_alive("after a torn 65535-byte frame ")
        check_good("%s query answered with a torn 65535-byte frame first" % transport, resp, qwire, name, w)
    for i in range(5):
        name = names("after-torn%d" % i)
        qwire, resp, _ = udp_ask(w, name)
        check_good("normal query after the torn frames", resp, qwire, name, w)
    c = w.counters()
    check_counter(w, c, "upstream_closed", 3, "three torn-frame closes")
    check_counter(w, c, "retried", 3, "three torn-frame closes")
    w.check_alive()


@case
def upstream_oversized_length_stall(h):
    """Like upstream_oversized_length but the upstream keeps the connection open
    after the torn frame and then behaves (its later answers are swallowed by
    the 65535-byte frame). The stuck query gets SERVFAIL at the deadline, the
    proxy stays up, and correct answers resume within 15 s (the proxy must
    eventually give up on the desynchronised connection)."""
    lock = threading.Lock()
    seen = set()

    def scenario(up, q):
        if q.qname.startswith("stall-"):
            with lock:
                first = q.qname not in seen
                seen.add(q.qname)
            if first:
                up.note("torn frame (prefix 65535, 100 bytes), connection kept open, for %s" % q.label())
                q.conn.write(struct.pack("!H", 65535) + b"\0" * 100)
                return
        up.answer(q)

    w = World(h).start(scenario, query_timeout=1000)
    name = names("stall-udp")
    qwire, resp, secs = udp_ask(w, name, timeout=4.0)
    check(resp is not None, "torn frame, connection open: no reply at all%s" % w.context())
    msg = e2e.parse_or_fail("torn frame", resp)
    check(msg.rcode() == dns.rcode.SERVFAIL, "torn frame: want SERVFAIL, got\n%s" % msg.to_text())
    t0 = time.monotonic()
    ok_at = None
    tries = []
    for i in range(60):
        if time.monotonic() - t0 > 15.0:
            break
        w.check_alive("after a torn frame on an open connection ")
        n = names("resume%d" % i)
        qw, r, _ = udp_ask(w, n, timeout=1.5)
        rc = None if r is None else dns.rcode.to_text(e2e.rcode_of(r))
        tries.append("%+.1f s %s" % (time.monotonic() - t0, rc))
        if r is not None and e2e.rcode_of(r) == dns.rcode.NOERROR:
            check_good("query after the torn frame", r, qw, n, w)
            ok_at = time.monotonic() - t0
            break
        time.sleep(0.3)
    check(ok_at is not None, "correct answers did not resume within 15 s after a torn frame on an open "
          "connection: %s%s" % (", ".join(tries), w.context()))
    w.check_alive()


@case
def upstream_keepalive_zero(h):
    """The upstream's answer carries edns-tcp-keepalive 0 (RFC 7828: close the
    connection when idle). dotproxy closes that upstream connection within 1.5 s
    of the answer, counts upstream_idle_closed, and the next query opens a new
    connection and is answered. With keepalive 50 (5 s) the connection stays
    open for at least 2 s."""
    ka = {}

    def scenario(up, q):
        v = ka.get(q.conn.number)
        up.answer(q, keepalive=v) if v is not None else up.answer(q)

    w = World(h).start(scenario, query_timeout=1000, extra=["--upstream-idle-timeout", "30000"])
    check(len(w.up.conns) == 1, "expected one upstream connection after startup, got %d" % len(w.up.conns))
    c0 = w.counters()
    ka[w.up.conns[0].number] = 0
    name = names("ka0")
    qwire, resp, _ = udp_ask(w, name)
    check_good("answer with keepalive 0", resp, qwire, name, w)
    t_ans = time.monotonic()
    conn = w.up.conns[0]
    w.up.wait_for(lambda: conn.peer_closed, 3.0)
    check(conn.peer_closed and conn.peer_closed_at - t_ans < 1.5,
          "keepalive 0: dotproxy did not close the upstream connection within 1.5 s (closed: %s)%s" % (
              "no" if not conn.peer_closed else "after %.2f s" % (conn.peer_closed_at - t_ans), w.context()))
    c = w.counters()
    check_counter(w, c, "upstream_idle_closed", c0.get("upstream_idle_closed", 0) + 1, "keepalive 0")
    name = names("after-ka0")
    qwire, resp, _ = udp_ask(w, name)
    check_good("query after the keepalive-0 close", resp, qwire, name, w)
    check(len(w.up.conns) == 2, "want a second upstream connection, have %d%s" % (len(w.up.conns), w.context()))
    # keepalive 5 s on the new connection: must stay open well past 2 s.
    conn2 = w.up.conns[1]
    ka[conn2.number] = 50
    name = names("ka50")
    qwire, resp, _ = udp_ask(w, name)
    check_good("answer with keepalive 50", resp, qwire, name, w)
    w.up.wait_for(lambda: conn2.peer_closed, 2.0)
    check(not conn2.peer_closed, "keepalive 50 (5 s): dotproxy closed the connection within 2 s%s" % w.context())
    w.check_alive()


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dotproxy", help="path to the dotproxy binary")
    ap.add_argument("--case", action="append", help="case name (repeatable)")
    ap.add_argument("--list", action="store_true", help="list cases and exit")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir for inspection")
    args = ap.parse_args()
    if args.list:
        for name, fn in CASES.items():
            print("%-40s %s" % (name, " ".join((fn.__doc__ or "").split())))
        return e2e.EXIT_PASS
    if not args.case:
        ap.error("--case or --list required")
    for c in args.case:
        if c not in CASES:
            ap.error("unknown case %r (see --list)" % c)
    try:
        e2e.announce_io_backend()
    except RuntimeError as e:
        ap.error(str(e))
    signal.signal(signal.SIGTERM, e2e._on_signal)
    signal.signal(signal.SIGINT, e2e._on_signal)
    worst = e2e.EXIT_PASS
    for name in args.case:
        h = e2e.Harness(args.dotproxy, keep=args.keep)
        t0 = time.monotonic()
        status = e2e.EXIT_PASS
        try:
            CASES[name](h)
        except CaseSkip as e:
            status = e2e.EXIT_SKIP
            print("SKIP %s: %s" % (name, e))
        except CaseFailure as e:
            status = e2e.EXIT_FAIL
            print("FAIL %s: %s" % (name, e))
            print(h.report())
        except Exception:  # noqa: BLE001 - harness error: still a failure, with trace
            status = e2e.EXIT_FAIL
            print("FAIL %s: harness error\n%s" % (name, traceback.format_exc()))
            print(h.report())
        finally:
            h.close()
        if status == e2e.EXIT_PASS:
            for p in h.proxies:
                if p.proc.returncode not in (None, 0, -signal.SIGKILL, -signal.SIGTERM):
                    status = e2e.EXIT_FAIL
                    print("FAIL %s: dotproxy exited with %s\n%s" % (name, p.proc.returncode, h.report()))
                    break
        if status == e2e.EXIT_PASS:
            print("PASS %s (%.1f s)" % (name, time.monotonic() - t0))
        if args.keep:
            print("kept %s" % h.dir)
        if status == e2e.EXIT_FAIL or (status == e2e.EXIT_SKIP and worst == e2e.EXIT_PASS):
            worst = status
    sys.stdout.flush()
    return worst


if __name__ == "__main__":
    e2e.run_script(main)
