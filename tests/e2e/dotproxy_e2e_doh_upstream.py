#!/usr/bin/python3
"""End-to-end cases for the DNS-over-HTTPS upstream, https:// (issue 12): a
real Unbound serving DoH (`https-port`, `http-endpoint`, HTTP/2) on loopback
with the harness's test CA is dotproxy's upstream. Answers to UDP and TCP
clients, many concurrent queries as streams of one connection, a wrong name
and a wrong pin refused, failover when the DoH server dies and reconnection
when it returns, and HTTP error statuses (a path the server does not serve)
failed over at once; dnsdist's DoH front end (addDOHLocal) for an HTTP 503
and the GOAWAY that ends its idle HTTP/2 connections. Uses the harness in dotproxy_e2e.py (loopback only,
bounded waits, children ended by PID).

    dotproxy_e2e_doh_upstream.py --dotproxy build/dotproxy --case doh_answers
"""

import os
import socket
import subprocess
import sys
import time

import dns.rcode
import dns.rdatatype

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import (  # noqa: E402
    GOOD_QUESTIONS, LOOPBACK4, TLS_NAME, CaseSkip, case, check, make_query)
import dotproxy_e2e_features as F  # noqa: E402
import dotproxy_e2e_metrics as M  # noqa: E402

_INHERITED = set(E.CASES)
CURL = "/usr/bin/curl"
# "a.example.test. A" as a base64url GET (curl's readiness probe only).
PROBE_QUERY = "AAABAAABAAAAAAAAAWEHZXhhbXBsZQR0ZXN0AAABAAE"


def start_doh_unbound(h, port=None):
    """The harness's Unbound plus a DoH listener (u.doh_port, path
    /dns-query, the same certificate as its DoT port), ready when curl gets
    a 200 over HTTP/2."""
    d = os.path.join(h.dir, "unbound%d" % len(h.unbounds))
    os.mkdir(d)
    u = E.Unbound(d, h.pki)
    add_doh(u, port)
    h.unbounds.append(u)
    start_doh(h, u)
    return u


def add_doh(u, port=None):
    """Adds a DoH listener to an Unbound's config (before it starts)."""
    u.doh_port = port or E.free_port()
    with open(u.conf) as f:
        text = f.read()
    text = text.replace(
        "  tls-port:",
        '  interface: 127.0.0.1@%d\n  https-port: %d\n  http-endpoint: "/dns-query"\n'
        "  http-max-streams: 200\n  tls-port:" % (u.doh_port, u.doh_port), 1)
    with open(u.conf, "w") as f:
        f.write(text)


class UnboundXDoh(F.UnboundX):
    """The features harness's Unbound (wild.example.test. answers any name)
    with a DoH listener."""

    def __init__(self, workdir, pki):
        super().__init__(workdir, pki)
        add_doh(self)


def start_doh(h, u, timeout=10.0):
    u.start(timeout=timeout)
    wait_doh(h, u, timeout)


def wait_doh(h, u, timeout=10.0):
    if not os.access(CURL, os.X_OK):
        return
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        r = subprocess.run([CURL, "-s", "--http2", "--max-time", "2", "--cacert", h.pki.ca_pem,
                            "--resolve", "%s:%d:127.0.0.1" % (TLS_NAME, u.doh_port),
                            "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                            "https://%s:%d/dns-query?dns=%s" % (TLS_NAME, u.doh_port, PROBE_QUERY)],
                           capture_output=True, text=True, timeout=5)
        last = r.stdout
        if r.stdout.strip() == "200 2":
            return
        time.sleep(0.1)
    raise E.CaseFailure("Unbound DoH port %d not answering over HTTP/2: %r" % (u.doh_port, last))


def doh_spec(u, name=TLS_NAME, path="", pin=None):
    spec = "https://%s:%d%s#%s" % (LOOPBACK4, u.doh_port, path, name)
    return spec + ("^" + pin if pin else "")


def counter(samples, name, spec):
    return samples.get('dotproxy_upstream_%s_total{upstream="%s"}' % (name, spec.split("^")[0]), 0)


@case
def doh_answers(h):
    """UDP and TCP clients get the upstream's own answers through an
    https:// upstream (A, AAAA, TXT, multi-record, NXDOMAIN, NODATA), the
    connection negotiated HTTP/2, and no HTTP error is counted."""
    u = start_doh_unbound(h)
    spec = doh_spec(u)
    p = M.start_metrics_proxy(h, upstreams=[spec])
    for qname, qtype in GOOD_QUESTIONS:
        for transport in ("udp", "tcp"):
            E.query_and_compare(h, u, p, transport, qname, qtype)
    # A large answer (> 1232 bytes) over TCP: one DoH body of ~1.5 KB.
    E.query_and_compare(h, u, p, "tcp", "big.example.test.", "TXT", edns=0)
    _, samples = M.scrape(p)
    answers = counter(samples, "answers", spec)
    check(answers >= 2 * len(GOOD_QUESTIONS), "answers counted %s" % answers)
    check(counter(samples, "http_errors", spec) == 0, "HTTP errors counted")
    check("HTTP/2" in p.stderr_text(), "no HTTP/2 connection logged:\n%s" % p.stderr_text())
    print("%d answers over DoH (UDP and TCP clients), 0 HTTP errors" % answers)


@case
def doh_concurrent_streams(h):
    """200 queries sent at once from UDP clients to a one-shard proxy all
    come back correct, over at most two DoH connections (many concurrent
    HTTP/2 streams on each, the per-connection cap being 100)."""
    u = start_doh_unbound(h)
    spec = doh_spec(u)
    p = M.start_metrics_proxy(h, upstreams=[spec], extra=["--threads", "1"])
    names = ["a.example.test.", "multi.example.test.", "txt.example.test.", "nonexistent.example.test."]
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        sent = {}
        for i in range(200):
            s = sockets[i % 4]
            name = names[i % len(names)]
            q = make_query(name, "TXT" if name.startswith("txt") else "A", qid=i + 1)
            sent[(i % 4, i + 1)] = q
            s.sendto(q.to_wire(), (LOOPBACK4, p.port))
        got = {}
        deadline = time.monotonic() + 10.0
        for k, s in enumerate(sockets):
            s.settimeout(0.5)
        while len(got) < 200 and time.monotonic() < deadline:
            for k, s in enumerate(sockets):
                try:
                    wire, _ = s.recvfrom(65535)
                except socket.timeout:
                    continue
                qid = int.from_bytes(wire[:2], "big")
                got[(k, qid)] = wire
        check(len(got) == 200, "%d of 200 concurrent queries answered" % len(got))
        refs = {}
        for key, q in sent.items():
            name = str(q.question[0].name)
            qtype = q.question[0].rdtype
            ref = refs.get(name) or u.reference(name, dns.rdatatype.to_text(qtype))
            refs[name] = ref
            E.check_same_answer("concurrent %s id=%d" % (name, q.id), got[key], q.to_wire(), ref)
    finally:
        for s in sockets:
            s.close()
    _, samples = M.scrape(p)
    opens = counter(samples, "connection_opens", spec)
    check(1 <= opens <= 2, "%s DoH connections opened for 200 queries" % opens)
    print("200 concurrent queries answered over %d DoH connection(s)" % opens)


@case
def doh_wrong_name_or_pin_refused(h):
    """An https:// upstream whose certificate does not carry the configured
    name, or whose key matches no pin, is never used: clients get SERVFAIL
    and the verification (and pin) failures are counted."""
    u = start_doh_unbound(h)
    wrong_name = doh_spec(u, name="other.test")
    bad_pin = doh_spec(u, pin="A" * 43 + "=")
    for spec, what in ((wrong_name, "verify_failures"), (bad_pin, "pin_failures")):
        p = M.start_metrics_proxy(h, upstreams=[spec], ready="any",
                                  extra=["--query-timeout", "800"])
        E.expect_servfail_only(h, p, rounds=3, what=spec)
        _, samples = M.scrape(p)
        check(counter(samples, what, spec) >= 1, "%s: %s not counted" % (spec, what))
        check(counter(samples, "answers", spec) == 0, "%s: answers counted" % spec)
        p.stop()
    # The right pin is accepted.
    good = doh_spec(u, pin=h.pki.spki_pin(h.pki.good_pem))
    p = M.start_metrics_proxy(h, upstreams=[good])
    E.query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    print("wrong name and wrong pin refused, the right pin accepted")


def wait_answer(p, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        wire, _ = E.udp_exchange(p.port, make_query("a.example.test.", "A").to_wire(), timeout=1.0)
        last = wire
        if wire is not None and E.rcode_of(wire) == dns.rcode.NOERROR:
            return
        time.sleep(0.2)
    raise E.CaseFailure("%s: no answer within %.0f s; last %s" % (what, timeout, E.describe(last)))


@case
def doh_failover_and_reconnect(h):
    """Two DoH upstreams: when the preferred one is killed, queries are
    answered by the other; when it returns on the same port, the proxy
    connects to it again and it takes the queries back."""
    a = start_doh_unbound(h)
    b = start_doh_unbound(h)
    conf = os.path.join(h.dir, "failover.toml")
    with open(conf, "w") as f:
        f.write('[[upstream]]\naddress = "https://%s:%d"\nname = "%s"\npriority = 0\n'
                '[[upstream]]\naddress = "https://%s:%d"\nname = "%s"\npriority = 1\n' % (
                    LOOPBACK4, a.doh_port, TLS_NAME, LOOPBACK4, b.doh_port, TLS_NAME))
    port = E.free_port()
    p = E.Proxy(h.exe, h.dir, ["--config", conf, "--listen", "%s:%d" % (LOOPBACK4, port),
                               "--ca-file", h.pki.ca_pem, "--threads", "1", "--cache-size", "0",
                               "--query-timeout", "1000",
                               "--metrics", "%s:%d" % (LOOPBACK4, E.free_port())]
                + E.io_backend_args(), "dotproxy-failover")
    p.port = port
    p.metrics_port = int(p.args[p.args.index("--metrics") + 1].split(":")[1])
    h.proxies.append(p)
    h.wait_ready(p, "answer", 10.0)
    spec_a = "https://%s:%d/dns-query#%s" % (LOOPBACK4, a.doh_port, TLS_NAME)
    spec_b = "https://%s:%d/dns-query#%s" % (LOOPBACK4, b.doh_port, TLS_NAME)
    for _ in range(5):
        E.query_and_compare(h, a, p, "udp", "a.example.test.", "A")
    _, samples = M.scrape(p)
    check(counter(samples, "answers", spec_a) >= 5, "preferred upstream not used:\n%s" % {
        k: v for k, v in samples.items() if "answers" in k})
    a.stop()
    answered = 0
    for i in range(10):
        wire, _ = E.udp_exchange(p.port, make_query("a.example.test.", "A").to_wire(), timeout=3.0)
        if wire is not None and E.rcode_of(wire) == dns.rcode.NOERROR:
            answered += 1
    check(answered >= 8, "with the preferred DoH upstream down, %d of 10 answered" % answered)
    _, samples = M.scrape(p)
    b_answers = counter(samples, "answers", spec_b)
    check(b_answers >= 8, "the second upstream answered %s" % b_answers)
    opens_before = counter(samples, "connection_opens", spec_a)
    start_doh(h, a)
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        E.udp_exchange(p.port, make_query("a.example.test.", "A").to_wire(), timeout=1.0)
        _, samples = M.scrape(p)
        if counter(samples, "connection_opens", spec_a) > opens_before:
            break
        time.sleep(0.3)
    check(counter(samples, "connection_opens", spec_a) > opens_before,
          "no reconnection to the restarted DoH upstream within 20 s")
    wait_answer(p, 10.0, "after the restart")
    print("failover: %d/10 answered by the second upstream; reconnected after the restart" % answered)


@case
def doh_http_error_fails_over(h):
    """A DoH server that answers every query with an HTTP error (a path it
    does not serve: 404) is a failure of each query, counted as an HTTP
    error: alone it yields SERVFAIL well before the query deadline, and
    beside a working upstream its queries are retried there."""
    bad = start_doh_unbound(h)
    bad_spec = doh_spec(bad, path="/not-served")
    r = subprocess.run([CURL, "-s", "--http2", "--cacert", h.pki.ca_pem, "-o", "/dev/null",
                        "--resolve", "%s:%d:127.0.0.1" % (TLS_NAME, bad.doh_port),
                        "-w", "%{http_code}", "https://%s:%d/not-served?dns=%s" % (
                            TLS_NAME, bad.doh_port, PROBE_QUERY)],
                       capture_output=True, text=True, timeout=10)
    check(r.stdout.startswith("4"), "Unbound answered a bad path with %r, not 4xx" % r.stdout)
    p = M.start_metrics_proxy(h, upstreams=[bad_spec], ready="any",
                              extra=["--query-timeout", "3000"])
    for i in range(3):
        q = make_query("a.example.test.", "A")
        wire, secs = E.udp_exchange(p.port, q.to_wire(), timeout=5.0)
        check(wire is not None and E.rcode_of(wire) == dns.rcode.SERVFAIL,
              "HTTP 404 upstream: %s" % E.describe(wire))
        check(secs < 1.5, "SERVFAIL after %.2f s: the HTTP error waited for the deadline" % secs)
    _, samples = M.scrape(p)
    errors = counter(samples, "http_errors", bad_spec)
    check(errors >= 3, "http_errors counted %s" % errors)
    check(p.alive(), "dotproxy died")
    p.stop()
    good = start_doh_unbound(h)
    good_spec = doh_spec(good)
    p = M.start_metrics_proxy(h, upstreams=[bad_spec, good_spec], ready=None,
                              extra=["--query-timeout", "3000"])
    h.wait_ready(p, "answer", 10.0)
    answered = 0
    for i in range(10):
        wire, secs = E.udp_exchange(p.port, make_query("a.example.test.", "A").to_wire(), timeout=3.0)
        if wire is not None and E.rcode_of(wire) == dns.rcode.NOERROR and secs < 1.5:
            answered += 1
    check(answered == 10, "with an HTTP-error upstream beside a good one, %d of 10 answered" % answered)
    print("HTTP 404 -> SERVFAIL in < 1.5 s alone (%d errors counted); retried on the good upstream" % errors)


@case
def doh_no_allocation_per_query(h):
    """--cache-size 1000 --threads 1 with an https:// upstream: after a
    warm-up, 10,000 queries (half cache hits, half unique misses that go
    upstream as HTTP/2 streams) make no heap allocation on the shard thread
    (operator new, nghttp2's blocks from its pool reaching malloc, and
    wolfSSL's: heap_allocations and tls_allocations unchanged)."""
    u = F.start_unbound_x(h, cls=UnboundXDoh)
    wait_doh(h, u)
    spec = doh_spec(u)
    p = h.start_proxy(upstreams=[spec], extra=["--cache-size", "1000", "--threads", "1"])
    hot = ["a.example.test.", "multi.example.test.", F.wild("hot1"), F.wild("hot2")]
    for prefix in ("warm1", "warm2"):
        ans, bad = F._mixed_loop(p.port, 3000, prefix, hot)
        check(not bad, "warm-up loop: %d bad answers, e.g. %s" % (len(bad), bad[:5]))
    time.sleep(0.3)
    c0 = F.counters(p)
    ans, bad = F._mixed_loop(p.port, 10000, "meas", hot)
    time.sleep(0.3)
    c1 = F.counters(p)
    check(not bad and ans == 10000, "measured loop: %d answered, %d bad (%s)" % (ans, len(bad), bad[:3]))
    dm = c1.get("cache_misses") - c0.get("cache_misses")
    check(dm >= 4900, "measured loop: %d misses (want ~5000)" % dm)
    conns = c1.get("upstream_connects") - c0.get("upstream_connects")
    d_heap = c1.get("heap_allocations") - c0.get("heap_allocations")
    d_tls = c1.get("tls_allocations") - c0.get("tls_allocations")
    check(conns == 0, "upstream_connects changed by %d during the measured loop" % conns)
    check(d_heap == 0 and d_tls == 0,
          "10,000 queries (%d misses over DoH) made %d heap and %d wolfSSL allocations on the "
          "shard thread\nbefore: %s\nafter: %s" % (dm, d_heap, d_tls, c0, c1))
    print("10,000 queries (%d over DoH): 0 heap, 0 wolfSSL allocations on the shard" % dm)


DNSDIST = "/usr/bin/dnsdist"


class Dnsdist:
    """dnsdist 1.7 as a DoH front end (addDOHLocal, h2o) forwarding to an
    Unbound's plain port: `idle` seconds of idle timeout (h2o ends an idle
    HTTP/2 connection with GOAWAY), and an HTTP 503 for fail.example.test."""

    def __init__(self, h, u, idle=30):
        if not os.access(DNSDIST, os.X_OK):
            raise CaseSkip("dnsdist not installed")
        self.h = h
        self.doh_port = E.free_port()
        self.plain_port = E.free_port()
        self.dir = os.path.join(h.dir, "dnsdist%d" % self.doh_port)
        os.mkdir(self.dir)
        self.conf = os.path.join(self.dir, "dnsdist.conf")
        self.log = os.path.join(self.dir, "dnsdist.log")
        with open(self.conf, "w") as f:
            f.write("\n".join([
                # No security polling (it would query an outside name).
                'setSecurityPollSuffix("")',
                'setLocal("127.0.0.1:%d")' % self.plain_port,
                'setACL({"127.0.0.0/8"})',
                'addDOHLocal("127.0.0.1:%d", "%s", "%s", "/dns-query", {idleTimeout=%d})' % (
                    self.doh_port, h.pki.good_pem, h.pki.good_key, idle),
                'newServer({address="127.0.0.1:%d"})' % u.plain_port,
                'addAction("fail.example.test.", HTTPStatusAction(503, "busy", "text/plain"))',
                ""]))
        self._logf = open(self.log, "ab")
        self.proc = E.spawn([DNSDIST, "--supervised", "--disable-syslog", "-C", self.conf],
                            self._logf, self._logf)
        h.silent.append(self)  # stopped with the harness
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            check(self.proc.poll() is None, "dnsdist exited:\n%s" % E.tail(self.log))
            r = subprocess.run([CURL, "-s", "--http2", "--max-time", "2", "--cacert", h.pki.ca_pem,
                                "--resolve", "%s:%d:127.0.0.1" % (TLS_NAME, self.doh_port),
                                "-o", "/dev/null", "-w", "%{http_code}",
                                "https://%s:%d/dns-query?dns=%s" % (TLS_NAME, self.doh_port,
                                                                    PROBE_QUERY)],
                               capture_output=True, text=True, timeout=5)
            if r.stdout.strip() == "200":
                return
            time.sleep(0.2)
        raise E.CaseFailure("dnsdist DoH not ready:\n%s" % E.tail(self.log))

    def stop(self):
        if self.proc is not None:
            E.stop_process(self.proc)
            self.proc = None
            self._logf.close()


@case
def doh_dnsdist_http_503(h):
    """dnsdist answering one name with HTTP 503: that query gets SERVFAIL at
    once (not at its deadline) and is counted as an HTTP error; the other
    names keep being answered over the same connection."""
    u = h.start_unbound()
    d = Dnsdist(h, u)
    spec = "https://%s:%d#%s" % (LOOPBACK4, d.doh_port, TLS_NAME)
    p = M.start_metrics_proxy(h, upstreams=[spec], extra=["--query-timeout", "3000"])
    for i in range(3):
        wire, secs = E.udp_exchange(p.port, make_query("fail.example.test.", "A").to_wire(),
                                    timeout=5.0)
        check(wire is not None and E.rcode_of(wire) == dns.rcode.SERVFAIL,
              "503 from dnsdist: %s" % E.describe(wire))
        check(secs < 1.5, "SERVFAIL after %.2f s: the 503 waited for the deadline" % secs)
        E.query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    _, samples = M.scrape(p)
    errors = counter(samples, "http_errors", spec)
    check(errors >= 3, "http_errors counted %s" % errors)
    check(counter(samples, "connection_opens", spec) <= 2, "connections reopened after a 503")
    print("503 -> SERVFAIL at once (%d HTTP errors counted), other names answered" % errors)


@case
def doh_dnsdist_goaway_reconnects(h):
    """dnsdist (h2o) ends idle HTTP/2 connections with GOAWAY after 1 s: the
    GOAWAY is counted, the connection closes as routine (no failure, no
    backoff) and the next queries are answered on a fresh connection."""
    u = h.start_unbound()
    d = Dnsdist(h, u, idle=1)
    spec = "https://%s:%d#%s" % (LOOPBACK4, d.doh_port, TLS_NAME)
    p = M.start_metrics_proxy(h, upstreams=[spec], extra=["--threads", "1"])
    rounds = 3
    for i in range(rounds):
        E.query_and_compare(h, u, p, "udp", "a.example.test.", "A")
        E.query_and_compare(h, u, p, "tcp", "txt.example.test.", "TXT")
        time.sleep(2.5)  # idle past dnsdist's timeout: GOAWAY
    _, samples = M.scrape(p)
    goaways = counter(samples, "goaways", spec)
    opens = counter(samples, "connection_opens", spec)
    failures = counter(samples, "connect_failures", spec)
    check(goaways >= rounds, "GOAWAYs counted %s after %d idle periods" % (goaways, rounds))
    check(opens >= rounds, "connections opened %s" % opens)
    check(failures == 0, "a GOAWAY counted as a failure (%s)" % failures)
    print("%d GOAWAYs from dnsdist, %d connections opened, 0 failures" % (goaways, opens))


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
