#!/usr/bin/python3
"""End-to-end cases for the DNS-over-TLS listener (issue 12): real clients
(kdig +tls, dnsperf -m dot, Unbound forwarding over TLS, Python's ssl)
against `--listen-tls`, with a test CA made at test time by the harness
(openssl) and a client certificate for mutual TLS. Loopback only, every
wait bounded, children ended by PID.

    dotproxy_e2e_tls_listen.py --dotproxy build/dotproxy --case tls_listen_kdig
"""

import os
import signal
import socket
import ssl
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dns.message  # noqa: E402
import dns.rcode  # noqa: E402

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import (  # noqa: E402
    LOOPBACK4, TLS_NAME, CaseFailure, CaseSkip, case, check, free_port, make_query,
    recv_exact, run_cmd, spawn, stop_process, tail, udp_exchange, check_same_answer)
import dotproxy_e2e_metrics as M  # noqa: E402
import dotproxy_e2e_reload as R  # noqa: E402

_INHERITED = set(E.CASES)

KDIG = "/usr/bin/kdig"
UNBOUND = "/usr/sbin/unbound"


def client_cert(h, name="client", ca="ca"):
    """A clientAuth leaf signed by the harness's CA `ca` ("ca" or "evilca")."""
    pki = h.pki
    key, pem = pki._p(name + ".key"), pki._p(name + ".pem")
    if not os.path.exists(pem):
        ext = pki._p(name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=clientAuth\n")
        pki._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                     "-keyout", key, "-out", pki._p(name + ".csr"), "-subj", "/CN=client.test")
        pki._openssl("x509", "-req", "-in", pki._p(name + ".csr"), "-CA", pki._p(ca + ".pem"),
                     "-CAkey", pki._p(ca + ".key"), "-CAcreateserial", "-out", pem, "-days", "3",
                     "-extfile", ext)
    return key, pem


def start_tls_proxy(h, u, extra=(), cert=None, key=None, client_ca=None, metrics=True):
    """dotproxy with --listen-tls on a free port (p.tls_port), the harness's
    good certificate (SAN upstream.test, IP 127.0.0.1) unless given."""
    tls_port = free_port()
    args = ["--listen-tls", "%s:%d" % (LOOPBACK4, tls_port),
            "--tls-cert", cert or h.pki.good_pem, "--tls-key", key or h.pki.good_key]
    if client_ca:
        args += ["--tls-client-ca", client_ca]
    metrics_port = None
    if metrics:
        metrics_port = free_port()
        args += ["--metrics", "%s:%d" % (LOOPBACK4, metrics_port)]
    p = h.start_proxy(u, extra=args + list(extra))
    p.tls_port = tls_port
    p.metrics_port = metrics_port
    return p


def kdig(port, qname, qtype="A", extra=(), timeout=10, wait=3):
    if not os.access(KDIG, os.X_OK):
        raise CaseSkip("kdig (knot-dnsutils) not installed")
    argv = [KDIG, "@%s" % LOOPBACK4, "-p", str(port), "+tls-ca=%s" % extra[0],
            "+tls-hostname=%s" % TLS_NAME, "+retry=0", "+timeout=%d" % wait, qname, qtype] + list(extra[1:])
    return run_cmd(argv, timeout=timeout)


def tls_context(h, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=h.pki.ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["dot"])
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_connect(h, port, ctx=None, timeout=3.0):
    s = socket.create_connection((LOOPBACK4, port), timeout=timeout)
    return (ctx or tls_context(h)).wrap_socket(s, server_hostname=TLS_NAME)


def tls_read_msg(s, deadline):
    n = struct.unpack("!H", recv_exact(s, 2, deadline))[0]
    return recv_exact(s, n, deadline)


def tls_exchange(s, wire, timeout=3.0):
    s.sendall(struct.pack("!H", len(wire)) + wire)
    return tls_read_msg(s, time.monotonic() + timeout)


def counter(p, name):
    _, samples = M.scrape(p)
    return samples.get("dotproxy_%s_total" % name, 0.0)


@case
def tls_listen_kdig(h):
    """kdig +tls with CA and name verification gets the upstream's answers,
    with ALPN "dot"; the handshake is counted."""
    u = h.start_unbound()
    p = start_tls_proxy(h, u)
    for qname, qtype in [("a.example.test.", "A"), ("txt.example.test.", "TXT"),
                         ("nonexistent.example.test.", "A")]:
        rc, out, err = kdig(p.tls_port, qname, qtype, [h.pki.ca_pem])
        check(rc == 0, "kdig +tls %s %s: rc %s\n%s%s" % (qname, qtype, rc, out, err))
        ref = u.reference(qname, qtype)
        for rr in ref.answer:
            for item in rr:
                check(item.to_text() in out, "kdig %s %s: %r missing from\n%s" % (
                    qname, qtype, item.to_text(), out))
        check("TLS" in out, "kdig did not report a TLS session:\n%s" % out)
    s = tls_connect(h, p.tls_port)
    check(s.selected_alpn_protocol() == "dot", "ALPN %r" % s.selected_alpn_protocol())
    q = make_query("a.example.test.", "A")
    wire = tls_exchange(s, q.to_wire())
    check_same_answer("ssl client", wire, q.to_wire(), u.reference("a.example.test.", "A"))
    s.close()
    check(counter(p, "tls_handshakes") >= 4, "tls_handshakes %s" % counter(p, "tls_handshakes"))
    check(counter(p, "tls_queries") >= 4, "tls_queries %s" % counter(p, "tls_queries"))
    # A client that insists on another protocol is refused (RFC 7301).
    ctx = tls_context(h)
    ctx.set_alpn_protocols(["h2"])
    try:
        tls_connect(h, p.tls_port, ctx).close()
        raise CaseFailure("a client offering only ALPN h2 was served by a DoT listener")
    except (ssl.SSLError, OSError):
        pass


@case
def tls_listen_mtls(h):
    """--tls-client-ca: a client with a certificate from that CA is served;
    one without a certificate, or with one from another CA, is refused at
    the handshake and counted."""
    u = h.start_unbound()
    key, pem = client_cert(h)
    evil_key, evil_pem = client_cert(h, "evilclient", "evilca")
    p = start_tls_proxy(h, u, client_ca=h.pki.ca_pem)
    rc, out, err = kdig(p.tls_port, "a.example.test.", "A",
                        [h.pki.ca_pem, "+tls-certfile=%s" % pem, "+tls-keyfile=%s" % key])
    check(rc == 0 and "192.0.2.1" in out, "kdig with a client cert: rc %s\n%s%s" % (rc, out, err))
    rc, out, err = kdig(p.tls_port, "a.example.test.", "A", [h.pki.ca_pem])
    check("192.0.2.1" not in out, "kdig without a client cert got an answer:\n%s" % out)
    # Python: without a certificate, with a foreign one, with the right one.
    for cert, ok in [(None, False), (evil_pem, False), (pem, True)]:
        ctx = tls_context(h, cert, {pem: key, evil_pem: evil_key}.get(cert))
        try:
            s = tls_connect(h, p.tls_port, ctx)
            wire = tls_exchange(s, make_query("a.example.test.", "A").to_wire())
            s.close()
            got = rcode_ok(wire)
        except (ssl.SSLError, OSError, CaseFailure, EOFError):
            got = False
        check(got == ok, "client cert %s: served=%s" % (cert, got))
    refused = counter(p, "tls_client_cert_refused")
    check(refused >= 3, "tls_client_cert_refused %s (3 refused handshakes)" % refused)


def rcode_ok(wire):
    return dns.message.from_wire(wire).rcode() == dns.rcode.NOERROR


@case
def tls_listen_pipelined(h):
    """A burst of queries written at once on one TLS connection is answered
    completely, each by its ID, and out of order: a cached answer overtakes
    a query that goes upstream."""
    u = h.start_unbound()
    tls_port = free_port()
    p = h.start_proxy(u, default_cache=True, extra=[
        "--listen-tls", "%s:%d" % (LOOPBACK4, tls_port), "--tls-cert", h.pki.good_pem,
        "--tls-key", h.pki.good_key])
    s = tls_connect(h, tls_port)
    tls_exchange(s, make_query("txt.example.test.", "TXT", qid=1).to_wire())  # cached now
    queries = [make_query("multi.example.test.", "A", qid=100)]
    queries += [make_query("txt.example.test.", "TXT", qid=200 + i) for i in range(20)]
    s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
    deadline = time.monotonic() + 5
    ids = []
    for _ in queries:
        wire = tls_read_msg(s, deadline)
        check(rcode_ok(wire), "rcode of %r" % wire[:12])
        ids.append(struct.unpack("!H", wire[:2])[0])
    s.close()
    check(sorted(ids) == sorted(q.id for q in queries), "answers %r" % ids)
    check(ids[0] != 100, "answers in query order %r: the upstream query was not overtaken" % ids)
    print("answer order: %r" % ids)


@case
def tls_listen_rate_limit(h):
    """--rate-limit over TLS, two shards: a client's budget is one, whatever
    shard its connections land on (the TLS listeners are steered by client
    prefix like TCP's). 8 connections from 127.0.6.1, 5 queries each, with
    --rate-limit 1 --rate-limit-burst 5: at most burst + 1 NOERROR in all,
    the rest REFUSED (without steering the connections spread over both
    shards, each with its own budget: up to twice as many)."""
    u = h.start_unbound()
    p = start_tls_proxy(h, u, extra=["--threads", "2", "--cache-size", "1000",
                                     "--rate-limit", "1", "--rate-limit-burst", "5"])
    rcodes = []
    conns = []
    try:
        for c in range(8):
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.bind(("127.0.6.1", 0))
            raw.settimeout(3.0)
            raw.connect((LOOPBACK4, p.tls_port))
            conns.append(tls_context(h).wrap_socket(raw, server_hostname=TLS_NAME))
        for c, s in enumerate(conns):
            wires = [make_query("a.example.test.", "A", qid=100 * c + i + 1).to_wire()
                     for i in range(5)]
            s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in wires))
            deadline = time.monotonic() + 5
            for _ in wires:
                rcodes.append(dns.message.from_wire(tls_read_msg(s, deadline)).rcode())
    finally:
        for s in conns:
            s.close()
    ok = rcodes.count(dns.rcode.NOERROR)
    refused = rcodes.count(dns.rcode.REFUSED)
    check(len(rcodes) == 40 and ok + refused == 40, "rcodes %r" % rcodes)
    check(5 <= ok <= 7, "%d NOERROR of 40 (budget: burst 5 + 1 qps, one for the client)" % ok)
    check(counter(p, "rate_limit_refused") == refused, "refused counted %s, seen %d" % (
        counter(p, "rate_limit_refused"), refused))
    print("tls rate limit: %d NOERROR, %d REFUSED over 8 connections" % (ok, refused))


@case
def tls_listen_dnsperf(h):
    """dnsperf -m dot: a short bounded run, every query answered."""
    if not os.access(E.DNSPERF, os.X_OK):
        raise CaseSkip("dnsperf not installed")
    u = h.start_unbound()
    p = start_tls_proxy(h, u)
    stats, out = E.run_dnsperf(h, p.tls_port, "dot", 3, 500)
    sent, done = stats.get("Queries sent", 0), stats.get("Queries completed", 0)
    check(sent > 500 and done == sent, "dnsperf -m dot: %s of %s completed\n%s" % (done, sent, out))
    print("dnsperf -m dot: %d queries completed" % done)


@case
def tls_listen_unbound_client(h):
    """Unbound as a DoT client (forward-tls-upstream) forwarding to the
    listener, verifying its certificate by name."""
    u = h.start_unbound()
    p = start_tls_proxy(h, u)
    d = os.path.join(h.dir, "unbound-client")
    os.mkdir(d)
    port = free_port()
    conf = os.path.join(d, "unbound.conf")
    log = os.path.join(d, "unbound.log")
    with open(conf, "w") as f:
        f.write("\n".join([
            "server:", "  verbosity: 1", "  num-threads: 1", "  do-daemonize: no",
            '  username: ""', '  chroot: ""', '  directory: "%s"' % d,
            '  pidfile: "%s"' % os.path.join(d, "unbound.pid"), "  use-syslog: no",
            '  logfile: ""', "  do-ip6: no", "  interface: 127.0.0.1@%d" % port,
            "  outgoing-interface: 127.0.0.1", "  access-control: 127.0.0.0/8 allow",
            '  module-config: "iterator"', '  tls-cert-bundle: "%s"' % h.pki.ca_pem,
            '  do-not-query-localhost: no', '  local-zone: "test." nodefault',
            "forward-zone:", '  name: "."', "  forward-tls-upstream: yes",
            "  forward-addr: 127.0.0.1@%d#%s" % (p.tls_port, TLS_NAME),
            "remote-control:", "  control-enable: no", ""]))
    logf = open(log, "ab")
    proc = spawn([UNBOUND, "-d", "-c", conf], logf, logf)
    try:
        got = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and got is None:
            check(proc.poll() is None, "unbound exited:\n%s" % tail(log))
            wire, _ = udp_exchange(port, make_query("a.example.test.", "A").to_wire(), timeout=1.0)
            if wire is not None and rcode_ok(wire) and dns.message.from_wire(wire).answer:
                got = wire
            else:
                time.sleep(0.2)
        check(got is not None, "no answer through Unbound over TLS:\n%s" % tail(log))
        check(counter(p, "tls_queries") >= 1, "the answer did not come through the listener")
    finally:
        stop_process(proc)
        logf.close()


@case
def tls_listen_reload(h):
    """SIGHUP with a new certificate and key: an established TLS connection
    keeps working, new handshakes see the new certificate; a reload with a
    bad key keeps the running certificate."""
    u = h.start_unbound()
    d = os.path.join(h.dir, "live")
    os.mkdir(d)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")

    def install(pem, k):
        for src, dst in ((pem, cert), (k, key)):
            with open(src, "rb") as f:
                data = f.read()
            with open(dst + ".tmp", "wb") as f:
                f.write(data)
            os.replace(dst + ".tmp", dst)

    install(h.pki.good_pem, h.pki.good_key)
    p = start_tls_proxy(h, u, cert=cert, key=key)
    old = tls_connect(h, p.tls_port)
    q = make_query("a.example.test.", "A")
    check(rcode_ok(tls_exchange(old, q.to_wire())), "before reload")

    def served_cert():
        s = tls_connect(h, p.tls_port)
        der = s.getpeercert(binary_form=True)
        s.close()
        return der

    def pem_der(path):
        with open(path) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())

    check(served_cert() == pem_der(h.pki.good_pem), "not the first certificate")
    install(h.pki.noip_pem, h.pki.noip_key)
    p.proc.send_signal(signal.SIGHUP)
    R.wait_log(p, "reload applied")
    time.sleep(0.3)  # the shards take the configuration between iterations
    check(rcode_ok(tls_exchange(old, make_query("txt.example.test.", "TXT").to_wire())),
          "the established connection failed after the reload")
    check(served_cert() == pem_der(h.pki.noip_pem), "new handshakes still see the old certificate")
    # A key that does not match: logged, the running certificate stays.
    install(h.pki.good_pem, h.pki.evil_key)
    p.proc.send_signal(signal.SIGHUP)
    R.wait_log(p, "TLS certificate kept")
    R.wait_log(p, "reload applied", count=2)
    time.sleep(0.3)
    check(served_cert() == pem_der(h.pki.noip_pem), "a bad key replaced the running certificate")
    check(rcode_ok(tls_exchange(old, q.to_wire())), "the established connection after a bad reload")
    old.close()


@case
def tls_listen_handshake_flood(h):
    """Hundreds of connections that never finish (or never start) a
    handshake do not stop UDP or TLS queries: at the per-shard cap on
    handshakes in progress accepting pauses, stalled handshakes (> 1 s) are
    closed to let newcomers in, and a real TLS client is served."""
    u = h.start_unbound()
    p = start_tls_proxy(h, u, extra=["--tcp-message-timeout", "2000"])
    hello = None
    flood = []
    try:
        for i in range(300):
            try:
                c = socket.create_connection((LOOPBACK4, p.tls_port), timeout=1.0)
            except OSError:
                break
            if i % 2 == 0:
                # Half a ClientHello header: the record never completes.
                c.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            flood.append(c)
        check(len(flood) >= 200, "only %d flood connections opened" % len(flood))
        for i in range(10):
            wire, secs = udp_exchange(p.port, make_query("a.example.test.", "A").to_wire(),
                                      timeout=2.0)
            check(wire is not None and rcode_ok(wire),
                  "UDP query %d during the flood (shed at intake so far: %d)"
                  % (i, counter(p, "shed_intake")))
        # A real TLS client gets through while the flood holds its slots
        # (its connection may wait in the backlog until stragglers time out).
        t0 = time.monotonic()
        rc, out, err = kdig(p.tls_port, "a.example.test.", "A", [h.pki.ca_pem], timeout=15)
        print("kdig answered in %.2f s during the flood" % (time.monotonic() - t0))
        check(rc == 0 and "192.0.2.1" in out, "kdig during the flood: rc %s\n%s%s" % (rc, out, err))
        time.sleep(1.5)  # the remaining stragglers stall past 1 s / time out
        paused, evicted = counter(p, "tls_accept_paused"), counter(p, "tls_handshake_evicted")
        timeouts = counter(p, "tls_timeout_closed")
        print("accept paused %d times, %d stalled handshakes evicted, %d closed at the timeout"
              % (paused, evicted, timeouts))
        check(paused >= 1, "the handshake cap never paused accepting")
        check(evicted + timeouts >= 100, "stalled handshakes were not closed")
    finally:
        for c in flood:
            c.close()


def _closed_by_peer(sock):
    """True when the proxy has closed `sock` (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@case
def tls_listen_silent_evicted_first(h):
    """At the cap on handshakes in progress (64 per shard), a newcomer takes
    the slot of a connection that never sent a byte (silent for 250 ms)
    before one that began its handshake, even an older one, as long as none
    has stalled for 1 s: the heard connections stay open, a silent one is
    closed, and the newcomer is served."""
    u = h.start_unbound()
    p = start_tls_proxy(h, u, extra=["--threads", "1", "--tcp-message-timeout", "10000",
                                     "--tcp-idle-timeout", "10000"])
    heard, silent = [], []
    try:
        t0 = time.monotonic()
        for i in range(32):
            c = socket.create_connection((LOOPBACK4, p.tls_port), timeout=1.0)
            # Half a ClientHello header: begun, never completed.
            c.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            heard.append(c)
        for i in range(32):
            silent.append(socket.create_connection((LOOPBACK4, p.tls_port), timeout=1.0))
        time.sleep(0.4)  # the silent ones pass 250 ms; the heard ones stay under 1 s
        ready = time.monotonic() - t0
        if ready >= 0.75:
            raise CaseSkip("too slow here: the flood took %.2f s to open" % ready)
        s = tls_connect(h, p.tls_port)
        q = make_query("a.example.test.", "A")
        wire = tls_exchange(s, q.to_wire())
        elapsed = time.monotonic() - t0
        s.close()
        check_same_answer("newcomer at the cap", wire, q.to_wire(), u.reference("a.example.test.", "A"))
        closed_heard = sum(_closed_by_peer(c) for c in heard)
        closed_silent = sum(_closed_by_peer(c) for c in silent)
        evicted = counter(p, "tls_handshake_evicted")
        print("newcomer served %.2f s after the first flood connection; closed: %d of 32 silent, "
              "%d of 32 heard; tls_handshake_evicted %d" % (elapsed, closed_silent, closed_heard, evicted))
        check(evicted >= 1, "no handshake was evicted for the newcomer")
        check(closed_silent >= 1, "no silent connection was closed")
        check(closed_heard == 0, "%d connections that had begun their handshake were closed "
              "before the silent ones" % closed_heard)
    finally:
        for c in heard + silent:
            c.close()


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
