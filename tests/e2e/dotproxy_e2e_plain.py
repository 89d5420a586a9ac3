#!/usr/bin/python3
"""End-to-end cases for the plain DNS upstreams, udp:// and tcp:// (issue
11): a real Unbound listening plain on loopback is dotproxy's only upstream
(with --allow-plaintext). Answers, pipelined load (dnsperf), an upstream
restart, the TC=1 fallback of udp:// over TCP, and the opt-in refusal. Uses
the harness in dotproxy_e2e.py (loopback only, bounded waits, children
ended by PID).

    dotproxy_e2e_plain.py --dotproxy build/dotproxy --case plain_answers
"""

import os
import sys
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import (  # noqa: E402
    BIG_TXT, GOOD_QUESTIONS, LOOPBACK4, MID_TXT, CaseSkip, case, check, make_query)
import dotproxy_e2e_metrics as M  # noqa: E402

_INHERITED = set(E.CASES)
SCHEMES = ("udp", "tcp")


def plain_spec(u, scheme):
    return "%s://%s:%d" % (scheme, LOOPBACK4, u.plain_port)


def start_plain(h, u, scheme, extra=()):
    """dotproxy with the Unbound's plain port as its only upstream, and
    /metrics (p.metrics_port)."""
    return M.start_metrics_proxy(h, upstreams=[plain_spec(u, scheme)],
                                 extra=["--allow-plaintext"] + list(extra))


def start_small_udp_unbound(h):
    """An Unbound that truncates UDP answers above 512 bytes (TC=1) whatever
    the query's EDNS size; over TCP it answers in full."""
    d = os.path.join(h.dir, "unbound%d" % len(h.unbounds))
    os.mkdir(d)
    u = E.Unbound(d, h.pki)
    with open(u.conf) as f:
        text = f.read()
    text = text.replace("remote-control:", "  max-udp-size: 512\nremote-control:", 1)
    with open(u.conf, "w") as f:
        f.write(text)
    h.unbounds.append(u)
    u.start()
    return u


def txt_strings(msg):
    return sorted(b"".join(r.strings).decode() for rr in msg.answer for r in rr)


@case
def plain_answers(h):
    """udp:// and tcp:// upstreams: every test question, asked over UDP and
    TCP, gets the upstream's own answer; the start warns that the default
    zone goes unencrypted."""
    u = h.start_unbound()
    for scheme in SCHEMES:
        p = start_plain(h, u, scheme)
        for transport in ("udp", "tcp"):
            for qname, qtype in GOOD_QUESTIONS:
                E.query_and_compare(h, u, p, transport, qname, qtype, edns=0)
        _, samples = M.scrape(p)
        spec = plain_spec(u, scheme)
        answers = samples.get('dotproxy_upstream_answers_total{upstream="%s"}' % spec, 0)
        check(answers >= 2 * len(GOOD_QUESTIONS), "%s: %s upstream answers counted" % (spec, answers))
        check("plain DNS for the default zone" in open(p.stderr_path).read(),
              "%s: no plaintext warning at start" % spec)
        p.stop()
    print("udp:// and tcp://: %d questions over UDP and TCP answered as the upstream does" %
          len(GOOD_QUESTIONS))


@case
def plain_dnsperf(h):
    """Pipelined load through each plain upstream (dnsperf over UDP, 2 s at
    3000 qps, 200 outstanding): every query answered, NOERROR/NXDOMAIN only;
    tcp:// carries it on its persistent connections (few connects)."""
    if not os.access(E.DNSPERF, os.X_OK):
        raise CaseSkip("dnsperf not installed")
    u = h.start_unbound()
    for scheme in SCHEMES:
        p = start_plain(h, u, scheme)
        st, out = E.run_dnsperf(h, p.port, "udp", 2, 3000)
        check(st["Queries lost"] == 0 and st["Queries completed"] == st["Queries sent"],
              "%s: dnsperf lost queries:\n%s" % (scheme, out))
        check("SERVFAIL" not in st["rcodes"], "%s: %s" % (scheme, st["rcodes"]))
        _, samples = M.scrape(p)
        spec = plain_spec(u, scheme)
        opens = samples.get('dotproxy_upstream_connection_opens_total{upstream="%s"}' % spec, 0)
        if scheme == "tcp":
            # 2 shards x at most 4 connections: persistent, not one per query.
            check(opens <= 8, "tcp://: %s connections opened for %d queries" % (
                opens, st["Queries sent"]))
        print("%s://: %d queries, all answered (%s), %d connections/sockets opened" % (
            scheme, st["Queries sent"], st["rcodes"], opens))
        p.stop()


@case
def plain_upstream_restart(h):
    """The plain upstream stops (queries fail fast) and starts again on the
    same port: dotproxy reconnects and answers again within about 1 s."""
    u = h.start_unbound()
    for scheme in SCHEMES:
        p = start_plain(h, u, scheme)
        u.stop()
        q = make_query("a.example.test.", "A").to_wire()
        for _ in range(3):
            wire, _ = E.udp_exchange(p.port, q, timeout=3.0)
            check(wire is not None and E.rcode_of(wire) == dns.rcode.SERVFAIL,
                  "%s: upstream down: %s" % (scheme, E.describe(wire)))
        u.start()
        back = time.monotonic()
        answered = None
        for _ in range(100):
            wire, _ = E.udp_exchange(p.port, q, timeout=0.5)
            if wire is not None and E.rcode_of(wire) == dns.rcode.NOERROR:
                answered = time.monotonic() - back
                break
            if time.monotonic() - back > 5:
                break
            time.sleep(0.05)
        check(answered is not None, "%s: no answer within 5 s of the upstream's return" % scheme)
        check(answered < 1.5, "%s: answered again only after %.2f s" % (scheme, answered))
        E.query_and_compare(h, u, p, "tcp", "multi.example.test.", "A")
        print("%s://: answering again %.2f s after the upstream came back" % (scheme, answered))
        p.stop()


@case
def plain_udp_tc_fallback(h):
    """udp:// to an Unbound that truncates UDP answers above 512 bytes: a
    TC=1 answer is fetched again over TCP from the same upstream, so a TCP
    client gets the whole big answer, a UDP client with EDNS 1232 the whole
    mid-sized one (which Unbound truncated), and the fallbacks are counted."""
    u = start_small_udp_unbound(h)
    # Unbound's own UDP answer is truncated: what dotproxy has to cope with.
    r = dns.query.udp(make_query("mid.example.test.", "TXT", edns=0, payload=1232), LOOPBACK4,
                      port=u.plain_port, timeout=2.0)
    check(r.flags & dns.flags.TC, "test setup: Unbound did not truncate: %s" % r)
    p = start_plain(h, u, "udp")
    big = E.query_and_compare(h, u, p, "tcp", "big.example.test.", "TXT", edns=0)
    check(txt_strings(big) == sorted(BIG_TXT), "TCP client: big TXT strings differ")
    resp, _ = E.udp_exchange(p.port, make_query("mid.example.test.", "TXT", edns=0,
                                                payload=1232).to_wire())
    mid = E.parse_or_fail("UDP mid", resp)
    check(not mid.flags & dns.flags.TC and txt_strings(mid) == sorted(MID_TXT),
          "UDP client, EDNS 1232: mid answer not whole: %s" % mid)
    # A UDP client still gets TC=1 when the answer exceeds its own limit.
    resp, _ = E.udp_exchange(p.port, make_query("big.example.test.", "TXT", edns=0,
                                                payload=1232).to_wire())
    msg = E.parse_or_fail("UDP big", resp)
    check(msg.flags & dns.flags.TC and len(resp) <= 1232, "UDP client: big answer not truncated")
    # Small answers need no fallback.
    E.query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    _, samples = M.scrape(p)
    spec = plain_spec(u, "udp")
    total = samples.get("dotproxy_tc_fallbacks_total", 0)
    per = samples.get('dotproxy_upstream_tc_fallbacks_total{upstream="%s"}' % spec, 0)
    check(total == 3 and per == 3, "TC fallbacks counted %s (upstream %s), want 3" % (total, per))
    print("TC=1 from the UDP upstream fetched over TCP: %d fallbacks counted" % total)


@case
def plain_requires_opt_in(h):
    """A plain upstream for the default zone without allow_plaintext: the
    proxy refuses to start (non-zero exit, the message names the key); with
    allow_plaintext = true in the file the configuration is accepted."""
    exe = h.need_exe()
    port = E.free_port()
    for scheme in SCHEMES:
        spec = "%s://%s:%d" % (scheme, LOOPBACK4, E.free_port())
        rc, out, err = E.run_cmd([exe, "--listen", "%s:%d" % (LOOPBACK4, port), "--upstream", spec,
                                  "--threads", "1"], timeout=10)
        check(rc not in (0, None), "%s: started without the opt-in (rc %s)" % (spec, rc))
        check("allow_plaintext" in err and "--allow-plaintext" in err,
              "%s: message does not name the key: %r" % (spec, err))
        conf = os.path.join(h.dir, "plain-%s.toml" % scheme)
        with open(conf, "w") as f:
            f.write('listen = ["%s:%d"]\nallow_plaintext = true\n\n[[upstream]]\naddress = "%s"\n' % (
                LOOPBACK4, port, spec))
        rc, out, err = E.run_cmd([exe, "--config", conf, "--check-config"], timeout=10)
        check(rc == 0, "%s: allow_plaintext = true refused (rc %s): %s%s" % (spec, rc, out, err))
    print("plain upstreams refused without allow_plaintext, accepted with it")


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
