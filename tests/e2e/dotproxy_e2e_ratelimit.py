#!/usr/bin/python3
"""End-to-end cases for per-client rate limiting (--rate-limit and friends)
and RFC 8482 minimal ANY answers. Clients bind distinct loopback source
addresses (127.0.N.1: different /24 prefixes, so different clients). Uses
the harness in dotproxy_e2e.py (loopback only, bounded waits, children
ended by PID).

    dotproxy_e2e_ratelimit.py --dotproxy build/dotproxy --case ratelimit_flood_vs_good_client
"""

import os
import select
import socket
import struct
import sys
import threading
import time

import dns.message
import dns.rcode
import dns.rdatatype

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import (  # noqa: E402
    LOOPBACK4, case, check, make_query, tcp_read_msg)
import dotproxy_e2e_metrics as M  # noqa: E402

_INHERITED = set(E.CASES)


class UdpClient:
    """A UDP client on its own source address that sends at a fixed rate
    for a bounded time and sorts what comes back: full answers, empty TC=1
    answers (slips), and the rest. It sends from `sockets` source ports in
    turn, as a real resolver library does: without steering by prefix the
    kernel would spread them over the shards."""

    def __init__(self, port, source, qps, seconds, qname="a.example.test.", sockets=8):
        self.port, self.qps, self.seconds = port, qps, seconds
        self.socks = []
        for _ in range(sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((source, 0))
            sock.setblocking(False)
            self.socks.append(sock)
        self.sent = self.answered = self.slipped = self.other = 0
        self.wire = make_query(qname, "A").to_wire()

    def run(self):
        start = time.monotonic()
        end = start + self.seconds
        next_send = start
        while True:
            now = time.monotonic()
            if now >= end + 0.5:
                break
            if now < end:
                while next_send <= now and self.sent < self.qps * self.seconds:
                    qid = self.sent & 0xffff
                    try:
                        self.socks[self.sent % len(self.socks)].sendto(
                            struct.pack("!H", qid) + self.wire[2:], (LOOPBACK4, self.port))
                    except BlockingIOError:
                        pass
                    self.sent += 1
                    next_send += 1.0 / self.qps
            ready, _, _ = select.select(self.socks, [], [], 0.002)
            for sock in ready:
                for _ in range(256):
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        break
                    self.sort(data)
        for sock in self.socks:
            sock.close()

    def sort(self, data):
        if len(data) < 12:
            self.other += 1
            return
        flags, ancount = struct.unpack("!H", data[2:4])[0], struct.unpack("!H", data[6:8])[0]
        if flags & 0x0200 and ancount == 0:
            self.slipped += 1
        elif ancount > 0 and flags & 0x000f == 0:
            self.answered += 1
        else:
            self.other += 1


def run_clients(clients):
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)


def start(h, u, extra):
    # The cache is on: the upstream is not what limits the answers here.
    return M.start_metrics_proxy(h, upstream=u, extra=["--cache-size", "1000"] + list(extra))


@case
def ratelimit_flood_vs_good_client(h):
    """--rate-limit 100 --rate-limit-burst 20 --rate-limit-slip 2, two
    shards: a client flooding at 1000 qps (10x) for 3 s gets at most
    3*100 + 20 full answers (with 5% slack for timing), about one empty
    TC=1 answer for every two over-limit queries, and the rest dropped;
    meanwhile a client of another prefix at 50 qps gets every answer. The
    budget is per client across shards: the prefix steering sends all of a
    client's datagrams to one shard."""
    u = h.start_unbound()
    p = start(h, u, ["--rate-limit", "100", "--rate-limit-burst", "20",
                     "--rate-limit-slip", "2"])
    flooder = UdpClient(p.port, "127.0.1.1", 1000, 3)
    good = UdpClient(p.port, "127.0.2.1", 50, 3)
    run_clients([flooder, good])
    limit = 3 * 100 + 20
    check(flooder.answered <= limit * 1.05, "flooder got %d full answers, limit %d (sent %d)" % (
        flooder.answered, limit, flooder.sent))
    check(flooder.answered >= limit * 0.8, "flooder got only %d answers of its %d budget" % (
        flooder.answered, limit))
    over = flooder.sent - flooder.answered
    check(abs(flooder.slipped - over / 2) <= over * 0.1 + 5,
          "slips %d for %d over-limit queries (slip 2)" % (flooder.slipped, over))
    check(good.answered == good.sent, "good client: %d of %d answered" % (good.answered, good.sent))
    _, samples = M.scrape(p)
    check(samples.get("dotproxy_rate_limit_dropped_total", 0) > 0, "no drops counted")
    check(samples.get("dotproxy_rate_limit_slipped_total", 0) == flooder.slipped,
          "slips counted %s, seen %d" % (samples.get("dotproxy_rate_limit_slipped_total"),
                                         flooder.slipped))
    print("flooder sent %d: answered %d (limit %d), slipped %d; good %d/%d" % (
        flooder.sent, flooder.answered, limit, flooder.slipped, good.answered, good.sent))


@case
def ratelimit_exempt_never_limited(h):
    """--rate-limit 20 with --rate-limit-exempt 127.0.3.0/24: a client of
    that network sending 400 qps for 2 s gets every answer; another at the
    same rate is limited."""
    u = h.start_unbound()
    p = start(h, u, ["--rate-limit", "20", "--rate-limit-exempt", "127.0.3.0/24",
                     "--rate-limit-slip", "0"])
    exempt = UdpClient(p.port, "127.0.3.1", 400, 2)
    limited = UdpClient(p.port, "127.0.4.1", 400, 2)
    run_clients([exempt, limited])
    check(exempt.answered == exempt.sent, "exempt: %d of %d answered" % (exempt.answered, exempt.sent))
    check(limited.answered <= 2 * 20 + 20 + 5, "limited client got %d answers" % limited.answered)
    check(limited.slipped == 0, "slip 0 still slipped %d" % limited.slipped)
    print("exempt %d/%d, limited %d/%d" % (exempt.answered, exempt.sent, limited.answered,
                                           limited.sent))


@case
def ratelimit_tcp_refused(h):
    """Over TCP a query over the limit is answered REFUSED (the source is
    proven by the handshake; nothing is amplified): 40 pipelined queries
    with --rate-limit 10 --rate-limit-burst 5 get 5 or 6 answers, the rest
    REFUSED, every one answered, and the connection stays usable."""
    u = h.start_unbound()
    p = start(h, u, ["--rate-limit", "10", "--rate-limit-burst", "5"])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.5.1", 0))
    s.settimeout(3.0)
    s.connect((LOOPBACK4, p.port))
    try:
        wires = []
        for i in range(40):
            q = make_query("a.example.test.", "A", qid=i + 1)
            w = q.to_wire()
            wires.append(struct.pack("!H", len(w)) + w)
        s.sendall(b"".join(wires))
        rcodes = []
        deadline = time.monotonic() + 5.0
        for _ in range(40):
            rcodes.append(dns.message.from_wire(tcp_read_msg(s, deadline)).rcode())
    finally:
        s.close()
    ok = rcodes.count(dns.rcode.NOERROR)
    refused = rcodes.count(dns.rcode.REFUSED)
    check(5 <= ok <= 6 and ok + refused == 40, "rcodes: %d NOERROR, %d REFUSED of %d" % (
        ok, refused, len(rcodes)))
    _, samples = M.scrape(p)
    check(samples.get("dotproxy_rate_limit_refused_total") == refused, "refused counted %s" %
          samples.get("dotproxy_rate_limit_refused_total"))
    print("tcp: %d NOERROR, %d REFUSED" % (ok, refused))


@case
def minimal_any_udp(h):
    """RFC 8482: ANY over UDP is answered by the proxy with one HINFO
    "RFC8482" RR (the upstream is not asked); over TCP it is forwarded and
    the upstream's full answer comes back; --no-minimal-any forwards it over
    UDP too."""
    u = h.start_unbound()
    p = start(h, u, [])
    q = make_query("multi.example.test.", "ANY")
    resp, _ = E.udp_exchange(p.port, q.to_wire())
    check(resp is not None, "no answer to ANY over UDP")
    m = dns.message.from_wire(resp)
    check(m.rcode() == dns.rcode.NOERROR and len(m.answer) == 1 and
          m.answer[0].rdtype == dns.rdatatype.HINFO, "not a minimal ANY answer: %s" % m)
    check(m.answer[0][0].cpu == b"RFC8482", "HINFO %s" % m.answer[0][0])
    _, before = M.scrape(p)
    resp, _ = E.tcp_exchange(p.port, make_query("multi.example.test.", "ANY").to_wire())
    m = dns.message.from_wire(resp)
    _, samples = M.scrape(p)
    check(all(r.rdtype != dns.rdatatype.HINFO for r in m.answer) and
          samples["dotproxy_forwarded_total"] == before["dotproxy_forwarded_total"] + 1,
          "ANY over TCP not forwarded: %s" % m)
    check(samples.get("dotproxy_minimal_any_total") == 1, "minimal_any counted %s" %
          samples.get("dotproxy_minimal_any_total"))
    p2 = start(h, u, ["--no-minimal-any"])
    resp, _ = E.udp_exchange(p2.port, make_query("multi.example.test.", "ANY").to_wire())
    m = dns.message.from_wire(resp)
    _, samples = M.scrape(p2)
    check(all(r.rdtype != dns.rdatatype.HINFO for r in m.answer) and
          samples["dotproxy_forwarded_total"] >= 1, "--no-minimal-any still synthesized: %s" % m)
    print("ANY: UDP minimal, TCP forwarded, --no-minimal-any forwarded")


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
