#!/usr/bin/python3
"""End-to-end cases for the DNS-over-HTTPS listener (RFC 8484, issue 12):
dotproxy with --listen-https and the test PKI's server certificate, real
clients: curl --http2 (GET ?dns= and POST, headers checked: status,
content-type, cache-control max-age from the answer's TTLs, the error
statuses), kdig +https and +https-get, dnsperf -m doh, and a raw TLS client
that breaks the HTTP/2 framing. Uses the harness in dotproxy_e2e.py
(loopback only, bounded waits, children ended by PID).

    dotproxy_e2e_doh_listen.py --dotproxy build/dotproxy --case doh_curl_get_post
"""

import base64
import os
import re
import shutil
import socket
import ssl
import sys
import time

import dns.message
import dns.rcode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import LOOPBACK4, TLS_NAME, CaseSkip, case, check, make_query  # noqa: E402

_INHERITED = set(E.CASES)
CURL = "/usr/bin/curl"
KDIG = "/usr/bin/kdig"
DNSPERF = "/usr/bin/dnsperf"


def need(tool):
    if not os.access(tool, os.X_OK):
        raise CaseSkip("%s not installed" % tool)


def start_doh(h, u, extra=()):
    """dotproxy with UDP/TCP on p.port and DoH on p.https_port, the Unbound
    `u` as its upstream; ready when UDP answers and the HTTPS port accepts."""
    https_port = E.free_port()
    p = h.start_proxy(u, extra=["--listen-https", "%s:%d" % (LOOPBACK4, https_port),
                                "--tls-cert", h.pki.good_pem, "--tls-key", h.pki.good_key]
                      + list(extra))
    p.https_port = https_port
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection((LOOPBACK4, https_port), timeout=1).close()
            break
        except OSError:
            check(time.monotonic() < deadline, "DoH port %d never accepted" % https_port)
            time.sleep(0.1)
    return p


def url(p, path="/dns-query", query=""):
    # The certificate names upstream.test; curl resolves it to loopback.
    return "https://%s:%d%s%s" % (TLS_NAME, p.https_port, path, query)


def curl(h, p, args, body_path=None):
    """Runs curl --http2 against the listener; returns (status, headers dict
    (lower-case names), body bytes, http_version)."""
    need(CURL)
    head = os.path.join(h.dir, "curl.head")
    out = os.path.join(h.dir, "curl.body")
    for path in (head, out):
        if os.path.exists(path):
            os.unlink(path)
    argv = [CURL, "--http2", "--silent", "--show-error", "--max-time", "5",
            "--cacert", h.pki.ca_pem, "--resolve", "%s:%d:%s" % (TLS_NAME, p.https_port, LOOPBACK4),
            "--dump-header", head, "--output", out, "--write-out", "%{http_version}"] + args
    rc, stdout, stderr = E.run_cmd(argv, timeout=10)
    check(rc == 0, "curl %s: rc %d: %s" % (" ".join(args), rc, stderr))
    status, headers = 0, {}
    with open(head) as f:
        for line in f:
            line = line.strip()
            m = re.match(r"HTTP/(\S+) (\d+)", line)
            if m:
                status = int(m.group(2))
            elif ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
    with open(out, "rb") as f:
        body = f.read()
    return status, headers, body, stdout.strip()


def b64url(wire):
    return base64.urlsafe_b64encode(wire).rstrip(b"=").decode()


def expect_answer(what, status, headers, body, query_wire, ref):
    check(status == 200, "%s: status %d, headers %s" % (what, status, headers))
    check(headers.get("content-type") == "application/dns-message",
          "%s: content-type %r" % (what, headers.get("content-type")))
    check(headers.get("content-length") == str(len(body)),
          "%s: content-length %r for %d bytes" % (what, headers.get("content-length"), len(body)))
    return E.check_same_answer(what, body, query_wire, ref)


def max_age(headers):
    m = re.fullmatch(r"max-age=(\d+)", headers.get("cache-control", ""))
    check(m is not None, "cache-control %r is not max-age=N" % headers.get("cache-control"))
    return int(m.group(1))


@case
def doh_curl_get_post(h):
    """curl --http2: GET ?dns= and POST answer like the upstream, over h2, with
    content-type, content-length and cache-control max-age = the smallest
    answer TTL (300), the SOA's negative TTL for NXDOMAIN, and ID 0 kept."""
    u = h.start_unbound()
    p = start_doh(h, u)
    query = make_query("a.example.test.", "A", qid=0)
    wire = query.to_wire()
    ref = u.reference("a.example.test.", "A")
    status, headers, body, version = curl(h, p, ["--header", "accept: application/dns-message",
                                                url(p, query="?dns=" + b64url(wire))])
    check(version == "2", "GET used HTTP/%s, not 2" % version)
    msg = expect_answer("GET", status, headers, body, wire, ref)
    check(max_age(headers) == min(r.ttl for r in msg.answer),
          "GET: %s for answer TTLs %s" % (headers.get("cache-control"), [r.ttl for r in msg.answer]))
    query_path = os.path.join(h.dir, "query.bin")
    with open(query_path, "wb") as f:
        f.write(wire)
    status, headers, body, version = curl(h, p, [
        "--header", "content-type: application/dns-message", "--data-binary", "@" + query_path,
        url(p)])
    check(version == "2", "POST used HTTP/%s, not 2" % version)
    msg = expect_answer("POST", status, headers, body, wire, ref)
    check(max_age(headers) == 300, "POST: cache-control %r" % headers.get("cache-control"))

    nx = make_query("nonexistent.example.test.", "A", qid=0).to_wire()
    ref = u.reference("nonexistent.example.test.", "A")
    status, headers, body, _ = curl(h, p, [url(p, query="?dns=" + b64url(nx))])
    msg = expect_answer("GET NXDOMAIN", status, headers, body, nx, ref)
    check(msg.rcode() == dns.rcode.NXDOMAIN, "NXDOMAIN expected:\n%s" % msg.to_text())
    soa = msg.authority[0]
    expected = min(soa.ttl, soa[0].minimum)
    check(max_age(headers) == expected, "NXDOMAIN: %s, SOA TTL %d MINIMUM %d" % (
        headers.get("cache-control"), soa.ttl, soa[0].minimum))
    print("curl GET and POST over h2: 200, max-age %d (answer), %d (NXDOMAIN)" % (300, expected))


@case
def doh_curl_errors(h):
    """The error statuses curl sees: 404 other path, 405 PUT, 415 wrong
    content type, 413 body over 1024 bytes, 400 bad base64 / no dns= / a
    message shorter than a header; the connection keeps serving after."""
    u = h.start_unbound()
    p = start_doh(h, u)
    wire = make_query("a.example.test.", "A", qid=0).to_wire()
    query_path = os.path.join(h.dir, "query.bin")
    with open(query_path, "wb") as f:
        f.write(wire)
    big_path = os.path.join(h.dir, "big.bin")
    with open(big_path, "wb") as f:
        f.write(wire + b"\0" * 2000)
    post = ["--data-binary", "@" + query_path]
    cases = [
        (404, [url(p, "/other", "?dns=" + b64url(wire))]),
        (405, ["--request", "PUT", "--header", "content-type: application/dns-message"] + post
         + [url(p)]),
        (415, ["--header", "content-type: text/plain"] + post + [url(p)]),
        (413, ["--header", "content-type: application/dns-message", "--data-binary",
               "@" + big_path, url(p)]),
        (400, [url(p, query="?dns=not*base64")]),
        (400, [url(p, query="?other=1")]),
        (400, [url(p, query="?dns=" + b64url(b"\0\0\1\0"))]),
    ]
    for want, args in cases:
        status, headers, _, _ = curl(h, p, args)
        check(status == want, "%s: status %d, want %d (%s)" % (" ".join(args), status, want, headers))
    status, headers, body, _ = curl(h, p, [url(p, query="?dns=" + b64url(wire))])
    expect_answer("GET after the errors", status, headers, body, wire,
                  u.reference("a.example.test.", "A"))
    print("404, 405, 415, 413, 400 x3 as expected; still answering")


def kdig(h, p, extra):
    need(KDIG)
    argv = [KDIG, "@%s" % LOOPBACK4, "-p", str(p.https_port), "+tls-ca=%s" % h.pki.ca_pem,
            "+tls-hostname=%s" % TLS_NAME, "+timeout=3", "+retry=0"] + extra + [
            "a.example.test.", "A"]
    rc, out, err = E.run_cmd(argv, timeout=15)
    check(rc == 0, "%s: rc %d\n%s%s" % (" ".join(argv), rc, out, err))
    return out


@case
def doh_kdig(h):
    """kdig +https (POST) and +https-get: NOERROR with the upstream's A record."""
    u = h.start_unbound()
    p = start_doh(h, u)
    for mode in (["+https"], ["+https", "+https-get"]):
        out = kdig(h, p, mode)
        check("status: NOERROR" in out and "192.0.2.1" in out,
              "kdig %s: unexpected answer:\n%s" % (" ".join(mode), out))
    print("kdig +https and +https-get answered")


@case
def doh_dnsperf(h):
    """dnsperf -m doh, GET then POST, 3 s each: every query answered (no loss,
    all 200). One query in flight: dnsperf 2.10's DoH mode loses answers past
    that against any server (dnsdist 1.7 too: all HTTP 200, most never
    matched), so concurrency is load-tested with h2load in bench/load."""
    need(DNSPERF)
    u = h.start_unbound()
    p = start_doh(h, u, extra=["--cache-size", "1000"])
    data = os.path.join(h.dir, "queries.txt")
    with open(data, "w") as f:
        f.write("a.example.test. A\ntxt.example.test. TXT\nmulti.example.test. A\n"
                "nonexistent.example.test. A\n")
    # dnsperf's DoH pacing varies run to run (26 to 1000 queries a second
    # at one in flight, with answers in well under a millisecond: it waits
    # on its own sockets), so the floor is low; loss and statuses are exact.
    for method, least in (("GET", 10), ("POST", 5)):
        argv = [DNSPERF, "-m", "doh", "-s", LOOPBACK4, "-p", str(p.https_port), "-d", data,
                "-l", "3", "-c", "1", "-q", "1", "-t", "2",
                "-O", "doh-uri=https://%s:%d/dns-query" % (TLS_NAME, p.https_port),
                "-O", "doh-method=" + method]
        rc, out, err = E.run_cmd(argv, timeout=20)
        check(rc == 0, "dnsperf %s: rc %d\n%s%s" % (method, rc, out, err))
        done = re.search(r"Queries completed:\s+(\d+)", out)
        lost = re.search(r"Queries lost:\s+(\d+)", out)
        codes = re.search(r"HTTP/2 return codes:\s+(.*)", out)
        check(done and lost and codes, "dnsperf %s output not understood:\n%s" % (method, out))
        check(int(done.group(1)) >= least, "dnsperf %s: only %s queries completed\n%s" % (
            method, done.group(1), out))
        check(int(lost.group(1)) == 0, "dnsperf %s: %s queries lost\n%s" % (method, lost.group(1), out))
        check(re.fullmatch(r"200: \d+", codes.group(1).strip()), "dnsperf %s: statuses %s" % (
            method, codes.group(1)))
        qps = re.search(r"Queries per second:\s+([\d.]+)", out)
        print("dnsperf -m doh %s: %s completed, none lost, %s qps" % (
            method, done.group(1), qps.group(1) if qps else "?"))


def tls_h2(p):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((LOOPBACK4, p.https_port), timeout=3)
    return ctx.wrap_socket(raw, server_hostname=TLS_NAME)


def read_until_closed(s, limit=5.0):
    deadline = time.monotonic() + limit
    got = b""
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(4096)
        except (ssl.SSLError, ConnectionResetError):
            return got, True
        except socket.timeout:
            return got, False
        if not chunk:
            return got, True
        got += chunk
    return got, False


def frame_types(data):
    """The HTTP/2 frame types in `data` (9-byte headers: length, type, ...)."""
    types, at = [], 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at:at + 3], "big")
        types.append(data[at + 3])
        at += 9 + length
    return types


def h2_frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def hpack_literal(index, value):
    """A header field, literal without indexing, name from HPACK's static
    table (RFC 7541 §6.2.2; indexes below 15), value not Huffman-coded."""
    value = value.encode()
    return bytes([index, len(value)]) + value


def frames_of(data):
    """(type, flags, stream, payload) of each whole HTTP/2 frame in `data`."""
    frames, at = [], 0
    while at + 9 <= len(data):
        length = int.from_bytes(data[at:at + 3], "big")
        if at + 9 + length > len(data):
            break
        frames.append((data[at + 3], data[at + 4], int.from_bytes(data[at + 5:at + 9], "big") & 0x7fffffff,
                       data[at + 9:at + 9 + length]))
        at += 9 + length
    return frames


@case
def doh_garbage_closes(h):
    """ALPN h2 is agreed; a client that sends HTTP/1.1 (not the HTTP/2
    preface) or breaks the framing after it (DATA on stream 0) is
    disconnected, the latter after a GOAWAY with PROTOCOL_ERROR, and the
    proxy keeps serving others."""
    u = h.start_unbound()
    p = start_doh(h, u)
    s = tls_h2(p)
    check(s.selected_alpn_protocol() == "h2", "ALPN %r, not h2" % s.selected_alpn_protocol())
    s.sendall(b"GET /dns-query HTTP/1.1\r\nHost: x\r\n\r\n")
    _, closed = read_until_closed(s)
    check(closed, "HTTP/1.1 bytes on an h2 connection did not close it")
    s.close()
    s = tls_h2(p)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\0\0\0\x04\0\0\0\0\0"
    # then a DATA frame on stream 0: a connection error (RFC 9113 §6.1)
    s.sendall(preface + b"\0\0\4\0\0\0\0\0\0abcd")
    got, closed = read_until_closed(s)
    check(closed, "bad framing did not close the connection (frames seen: %s)" % frame_types(got))
    # RFC 9113 §5.4.1: a connection error is first told in a GOAWAY.
    goaway = [f for f in frames_of(got) if f[0] == 7]
    check(goaway and int.from_bytes(goaway[0][3][4:8], "big") == 1,
          "no GOAWAY(PROTOCOL_ERROR) before the close (frames seen: %s)" % frame_types(got))
    s.close()
    wire = make_query("a.example.test.", "A", qid=0).to_wire()
    status, headers, body, _ = curl(h, p, [url(p, query="?dns=" + b64url(wire))])
    expect_answer("GET after garbage", status, headers, body, wire,
                  u.reference("a.example.test.", "A"))
    check(p.alive(), "dotproxy died")
    print("HTTP/1.1 and bad framing closed; the listener still answers")


@case
def doh_goaway_answers_in_flight(h):
    """A client that sends a GET and then GOAWAY in the same write (RFC 9113
    §6.8: streams it opened may still complete) gets its answer, a
    HEADERS and a DATA frame on stream 1 carrying Unbound's answer, and then
    the connection is closed by the proxy. Frames are written by hand: no
    HTTP/2 client sends GOAWAY with a request in flight on demand."""
    u = h.start_unbound()
    p = start_doh(h, u)
    wire = make_query("a.example.test.", "A", qid=0).to_wire()
    s = tls_h2(p)
    check(s.selected_alpn_protocol() == "h2", "ALPN %r, not h2" % s.selected_alpn_protocol())
    headers = (bytes([0x82, 0x87])  # :method GET, :scheme https (static 2, 7)
               + hpack_literal(4, "/dns-query?dns=" + b64url(wire))  # :path
               + hpack_literal(1, TLS_NAME)  # :authority
               + bytes([0x0f, 0x04, len("application/dns-message")]) + b"application/dns-message")  # accept (19)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0, b"")
              + h2_frame(1, 0x5, 1, headers)  # HEADERS, END_STREAM | END_HEADERS
              + h2_frame(7, 0, 0, bytes(8)))  # GOAWAY: last stream 0, NO_ERROR
    got, closed = read_until_closed(s)
    s.close()
    frames = frames_of(got)
    kinds = [(f[0], f[2]) for f in frames]
    check((1, 1) in kinds, "no HEADERS on stream 1 after the GOAWAY (frames: %s)" % kinds)
    body = b"".join(f[3] for f in frames if f[0] == 0 and f[2] == 1)
    check(body, "no DATA on stream 1 after the GOAWAY (frames: %s)" % kinds)
    E.check_same_answer("answer after GOAWAY", body, wire, u.reference("a.example.test.", "A"))
    check(closed, "the connection stayed open once its stream was answered (frames: %s)" % kinds)
    import dotproxy_e2e_metrics as M
    goaways = M.sigusr1_counters(p).get("doh_goaways", 0)
    check(goaways == 1, "doh_goaways = %s" % goaways)
    print("GET then GOAWAY: answered on stream 1 (%d bytes), then closed; frames %s" % (len(body), kinds))


@case
def doh_mtls(h):
    """--tls-client-ca on the DoH listener: curl with a client certificate
    from that CA gets its answer; without one (or with one from another CA)
    the handshake fails, counted in tls_client_cert_refused."""
    import dotproxy_e2e_metrics as M
    import dotproxy_e2e_tls_listen as T  # here: its cases must not become ours
    u = h.start_unbound()
    key, pem = T.client_cert(h)
    evil_key, evil_pem = T.client_cert(h, "evilclient", "evilca")
    p = start_doh(h, u, extra=["--tls-client-ca", h.pki.ca_pem])
    wire = make_query("a.example.test.", "A", qid=0).to_wire()
    status, headers, body, _ = curl(h, p, ["--cert", pem, "--key", key,
                                         url(p, query="?dns=" + b64url(wire))])
    expect_answer("GET with a client certificate", status, headers, body, wire,
                  u.reference("a.example.test.", "A"))
    for what, extra in (("no client certificate", []),
                        ("a certificate from another CA", ["--cert", evil_pem, "--key", evil_key])):
        argv = [CURL, "--http2", "--silent", "--max-time", "5", "--cacert", h.pki.ca_pem,
                "--resolve", "%s:%d:%s" % (TLS_NAME, p.https_port, LOOPBACK4), "--output", "/dev/null",
                "--write-out", "%{http_code}"] + extra + [url(p, query="?dns=" + b64url(wire))]
        rc, out, _ = E.run_cmd(argv, timeout=10)
        check(rc != 0 and out.strip() in ("", "000"), "%s: curl rc %d, status %s" % (what, rc, out))
    refused = M.sigusr1_counters(p).get("tls_client_cert_refused", 0)
    check(refused >= 2, "tls_client_cert_refused %d after 2 refused handshakes" % refused)
    print("DoH with mTLS: served with a client certificate, %d refused without" % refused)


H2LOAD = "/usr/bin/h2load"


def h2load(p, query_path, connections, requests):
    need(H2LOAD)
    argv = [H2LOAD, "-c", str(connections), "-m", "10", "-n", str(requests), "-d", query_path,
            "-H", "content-type: application/dns-message",
            "https://%s:%d/dns-query" % (LOOPBACK4, p.https_port)]
    rc, out, err = E.run_cmd(argv, timeout=60)
    check(rc == 0, "h2load: rc %d\n%s%s" % (rc, out, err))
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    check(m and int(m.group(1)) == requests, "h2load: not all %d requests succeeded:\n%s" % (
        requests, out))
    check(re.search(r"status codes: %d 2xx" % requests, out), "h2load: statuses:\n%s" % out)


@case
def doh_no_allocation_per_query(h):
    """--threads 1, cache hits over DoH (h2load POST, 2 connections x 10
    streams): 1,000 and then 9,000 queries on new connections each leave the
    shard's heap and wolfSSL allocation counters grown by the same amount,
    what two connections cost (accept, handshake): the per-query path,
    nghttp2 included (its bounded per-connection pool), allocates nothing.
    The doh_* counters show the queries in the SIGUSR1 report."""
    import dotproxy_e2e_metrics as M
    u = h.start_unbound()
    p = start_doh(h, u, extra=["--cache-size", "1000", "--threads", "1"])
    query_path = os.path.join(h.dir, "query.bin")
    with open(query_path, "wb") as f:
        f.write(make_query("a.example.test.", "A", qid=0).to_wire())
    for _ in range(2):
        h2load(p, query_path, 2, 1000)  # warm-up: the cache entry, every lazy init
    deltas = []
    for requests in (1000, 9000, 1000, 9000):
        c0 = M.sigusr1_counters(p)
        h2load(p, query_path, 2, requests)
        c1 = M.sigusr1_counters(p)
        deltas.append((requests, c1.get("heap_allocations", 0) - c0.get("heap_allocations", 0),
                       c1.get("tls_allocations", 0) - c0.get("tls_allocations", 0),
                       c1.get("doh_answers", 0) - c0.get("doh_answers", 0)))
    print("DoH, per run of 2 new connections: (queries, heap allocations, wolfSSL allocations, "
          "doh_answers) %s" % deltas)
    for requests, _, _, answers in deltas:
        check(answers == requests, "doh_answers grew by %d for %d queries" % (answers, requests))
    small = [d for d in deltas if d[0] == 1000]
    big = [d for d in deltas if d[0] == 9000]
    # 8,000 more queries may not cost more than a few allocations (they do
    # not all land on connections in the same state when h2load stops).
    for (_, heap_s, tls_s, _), (_, heap_b, tls_b, _) in zip(small, big):
        check(heap_b - heap_s <= 8 and tls_b - tls_s <= 8,
              "8,000 more DoH queries made %d more heap and %d more wolfSSL allocations: %s" % (
                  heap_b - heap_s, tls_b - tls_s, deltas))


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
