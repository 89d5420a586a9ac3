#!/usr/bin/python3
"""End-to-end cases for forward zones ([[zone]]): two Unbound instances on
loopback serving different data, `corp.example` (and `nocache.example`)
routed to the first, everything else to the second. Checks that answers
come from the right one (suffix match on whole labels, any letter case),
that NXDOMAIN from the zone is cached, that failover stays inside the
zone's group (its only upstream stopped: its queries SERVFAIL promptly
while the default zone keeps answering), and that a reload adds and
removes a zone. Uses the harness in dotproxy_e2e.py (loopback only,
bounded waits, children ended by PID).

    dotproxy_e2e_zones.py --dotproxy build/dotproxy --case zones_route_by_suffix

The zone's upstream is DNS over TLS here; zone_spec() is the one line to
change for a plain udp:// or tcp:// variant (Unbound also listens for
plain DNS on u.plain_port).
"""

import os
import signal
import sys
import time

import dns.message
import dns.rcode
import dns.rdatatype

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import LOOPBACK4, TLS_NAME, case, check, free_port, make_query  # noqa: E402
import dotproxy_e2e_reload as R  # noqa: E402

_INHERITED = set(E.CASES)

# The internal resolver's data: only it knows corp.example and nocache.example.
CORP_LINES = [
    '  local-zone: "corp.example." static',
    "  local-data: 'corp.example. 300 IN SOA ns.corp.example. h.corp.example. 1 3600 600 86400 300'",
    "  local-data: 'db.corp.example. 300 IN A 10.1.1.1'",
    "  local-data: 'a.b.c.corp.example. 300 IN A 10.1.1.2'",
    "  local-data: 'gone.corp.example. 300 IN A 10.1.1.3'",
    '  local-zone: "nocache.example." static',
    "  local-data: 'nocache.example. 300 IN SOA ns.nocache.example. h.nocache.example. 1 3600 600 86400 300'",
    "  local-data: 'x.nocache.example. 300 IN A 10.3.3.3'",
    "  local-data: 'whoami.test. 300 IN TXT \"corp\"'",
]
# The default resolver's: a name next to the zone (label boundary check).
DEFAULT_LINES = [
    "  local-data: 'xcorp.example. 300 IN A 10.2.2.2'",
    "  local-data: 'whoami.test. 300 IN TXT \"default\"'",
]


def start_unbound_with(h, lines):
    """An Unbound of the harness with `lines` added to its server: clause."""
    d = os.path.join(h.dir, "unbound%d" % len(h.unbounds))
    os.mkdir(d)
    u = E.Unbound(d, h.pki)
    with open(u.conf) as f:
        text = f.read()
    text = text.replace("remote-control:", "\n".join(lines) + "\nremote-control:", 1)
    with open(u.conf, "w") as f:
        f.write(text)
    h.unbounds.append(u)
    u.start()
    return u


def zone_spec(u, scheme=None):
    """The zone's upstream spec: DoT, or plain DNS ("udp", "tcp") to the
    same Unbound's plain port."""
    if scheme:
        return "%s://%s:%d" % (scheme, LOOPBACK4, u.plain_port)
    return "%s:%d#%s" % (LOOPBACK4, u.dot_port, TLS_NAME)


def zones_toml(corp, nocache=True, scheme=None):
    lines = []
    if corp is not None:
        lines += ["[[zone]]", 'name = "Corp.Example."',
                  'upstreams = ["%s"]' % zone_spec(corp, scheme), ""]
        if nocache:
            lines += ["[[zone]]", 'name = "nocache.example"',
                      'upstreams = ["%s"]' % zone_spec(corp, scheme), "cache = false", ""]
    return "\n".join(lines) + "\n"


def write_file(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def start(h, corp, default, cache=True, extra=(), scheme=None):
    path = os.path.join(h.dir, "zones%d.toml" % len(h.proxies))
    write_file(path, zones_toml(corp, scheme=scheme))
    p = h.start_proxy(default, default_cache=cache,
                      extra=["--config", path, "--query-timeout", "1000"] + list(extra))
    p.config_path = path
    return p


def ask(p, qname, qtype="A", timeout=2.0):
    """(message, seconds) of a UDP query; message None on timeout."""
    start_time = time.monotonic()
    wire, _ = E.udp_exchange(p.port, make_query(qname, qtype).to_wire(), timeout=timeout)
    elapsed = time.monotonic() - start_time
    return (dns.message.from_wire(wire) if wire is not None else None), elapsed


def first_rdata(m):
    if m is None or not m.answer:
        return None
    return m.answer[0][0].to_text()


def expect(p, qname, rdata=None, rcode=dns.rcode.NOERROR, qtype="A", what=""):
    m, _ = ask(p, qname, qtype)
    check(m is not None, "%s: no answer to %s" % (what or qname, qname))
    check(m.rcode() == rcode, "%s: %s got %s, want %s" % (
        what or qname, qname, dns.rcode.to_text(m.rcode()), dns.rcode.to_text(rcode)))
    if rdata is not None:
        check(first_rdata(m) == rdata, "%s: %s answered %s, want %s (from the wrong upstream?)" % (
            what or qname, qname, first_rdata(m), rdata))
    return m


@case
def zones_route_by_suffix(h):
    """corp.example and its subdomains go to the internal Unbound, in any
    letter case; the rest (whoami.test, xcorp.example next to the zone)
    to the default one; the client's question case comes back."""
    corp = start_unbound_with(h, CORP_LINES)
    default = start_unbound_with(h, DEFAULT_LINES)
    p = start(h, corp, default, cache=False)
    expect(p, "db.corp.example.", "10.1.1.1")
    expect(p, "corp.example.", None, qtype="SOA", what="zone apex")
    expect(p, "a.b.c.corp.example.", "10.1.1.2", what="deep subdomain")
    m = expect(p, "Db.CORP.exaMple.", "10.1.1.1", what="mixed case")
    check(m.question[0].name.to_text() == "Db.CORP.exaMple.",
          "question case not restored: %s" % m.question[0].name)
    expect(p, "whoami.test.", '"default"', qtype="TXT", what="default zone")
    expect(p, "xcorp.example.", "10.2.2.2", what="label boundary")
    expect(p, "nothere.corp.example.", None, rcode=dns.rcode.NXDOMAIN, what="NXDOMAIN in the zone")
    # The default resolver knows nothing of corp.example: had the query gone
    # there, db.corp.example would be NXDOMAIN, not 10.1.1.1.
    m, _ = E.udp_exchange(default.plain_port, make_query("db.corp.example.", "A").to_wire())
    check(m is not None and E.rcode_of(m) == dns.rcode.NXDOMAIN,
          "the default Unbound answers corp.example itself: the case proves nothing")
    print("corp.example -> internal Unbound (any case, subdomains); rest -> default")


@case
def zones_plain_internal(h):
    """The datacenter layout: corp.example served by an internal Unbound
    over plain DNS (udp://, then tcp://) while "." goes over DoT to the
    default one, without allow_plaintext (forward zones may use plain
    upstreams). Answers come from the right Unbound, and dotproxy's
    per-upstream counters show the internal queries on the plain upstream
    and the rest on the DoT one."""
    corp = start_unbound_with(h, CORP_LINES)
    default = start_unbound_with(h, DEFAULT_LINES)
    import dotproxy_e2e_features as F
    for scheme in ("udp", "tcp"):
        p = start(h, corp, default, cache=False, scheme=scheme)
        for _ in range(3):
            expect(p, "db.corp.example.", "10.1.1.1", what="%s:// zone" % scheme)
        expect(p, "whoami.test.", '"default"', qtype="TXT", what="default zone over DoT")
        c = F.counters(p, n_upstreams=2)
        plain = c.up.get(zone_spec(corp, scheme))
        check(plain is not None, "no counters for %s in:\n%s" % (zone_spec(corp, scheme), c.text))
        check(int(plain.get("queries", 0)) >= 3, "%s upstream: %s" % (scheme, plain))
        dot = c.upstream(default.dot_port)
        check(int(dot.get("queries", 0)) >= 1, "DoT upstream: %s" % dot)
        p.stop()
    print("corp.example over udp:// and tcp:// to the internal Unbound, the rest over DoT")


@case
def zones_failover_stays_in_group(h):
    """The zone's only upstream stops: its uncached queries SERVFAIL
    promptly (never sent to the default zone's upstream, which would say
    NXDOMAIN), its cached answers and NXDOMAIN keep being served, a
    cache = false zone is not served from the cache, and the default zone
    keeps answering."""
    corp = start_unbound_with(h, CORP_LINES)
    default = start_unbound_with(h, DEFAULT_LINES)
    # One shard: the cache is per shard, and every query must find it.
    p = start(h, corp, default, cache=True, extra=["--threads", "1"])
    expect(p, "db.corp.example.", "10.1.1.1")
    expect(p, "nothere.corp.example.", None, rcode=dns.rcode.NXDOMAIN)
    expect(p, "x.nocache.example.", "10.3.3.3")
    corp.stop()
    time.sleep(0.3)  # the proxy sees its connections close
    expect(p, "db.corp.example.", "10.1.1.1", what="cached answer of the zone")
    expect(p, "nothere.corp.example.", None, rcode=dns.rcode.NXDOMAIN, what="cached NXDOMAIN")
    for qname in ("gone.corp.example.", "x.nocache.example."):
        m, elapsed = ask(p, qname, timeout=3.0)
        check(m is not None, "no answer to %s with the zone's upstream down" % qname)
        check(m.rcode() == dns.rcode.SERVFAIL, "%s: %s with the zone's upstream down (sent to "
              "another group?)" % (qname, dns.rcode.to_text(m.rcode())))
        check(elapsed < 1.5, "%s: SERVFAIL after %.2f s, not promptly" % (qname, elapsed))
    expect(p, "whoami.test.", '"default"', qtype="TXT", what="default zone with the zone down")
    expect(p, "a.example.test.", None, what="default zone with the zone down")
    check(p.alive(), "dotproxy died")
    print("zone down: SERVFAIL promptly inside the zone, cache kept, default zone answers")


@case
def zones_reload_adds_and_removes(h):
    """SIGHUP with a [[zone]] added routes its names to the new upstream;
    removing it sends them back to the default zone."""
    corp = start_unbound_with(h, CORP_LINES)
    default = start_unbound_with(h, DEFAULT_LINES)
    path = os.path.join(h.dir, "zones-reload.toml")
    write_file(path, zones_toml(None))
    p = h.start_proxy(default, extra=["--config", path, "--query-timeout", "1000"])
    p.config_path = path
    expect(p, "db.corp.example.", None, rcode=dns.rcode.NXDOMAIN, what="before the zone")
    for step, (text, rcode, rdata) in enumerate([
            (zones_toml(corp), dns.rcode.NOERROR, "10.1.1.1"),
            (zones_toml(None), dns.rcode.NXDOMAIN, None)]):
        write_file(path, text)
        p.proc.send_signal(signal.SIGHUP)
        R.wait_log(p, "reload applied", step + 1)
        m = None
        deadline = time.monotonic() + 3.0
        for _ in range(30):  # the shards apply it within 100 ms
            m, _ = ask(p, "db.corp.example.")
            if m is not None and m.rcode() == rcode and first_rdata(m) == rdata:
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        check(m is not None and m.rcode() == rcode and first_rdata(m) == rdata,
              "after reload %d: db.corp.example %s %s" % (
                  step + 1, m and dns.rcode.to_text(m.rcode()), first_rdata(m)))
        expect(p, "whoami.test.", '"default"', qtype="TXT", what="default zone after reload")
    check(p.alive(), "dotproxy died")
    print("reload added the zone, then removed it")


@case
def zones_config_errors(h):
    """--check-config names FILE:LINE for a duplicate zone and for a plain
    upstream in the default zone."""
    exe = h.need_exe()
    for text, needle in [
            ('[[zone]]\nname = "a.example"\nupstreams = ["127.0.0.2"]\n'
             '[[zone]]\nname = "A.EXAMPLE."\nupstreams = ["127.0.0.3"]\n',
             ":5: zone 'a.example' is already defined at line 1"),
            ('[[zone]]\nname = "."\nupstreams = ["udp://127.0.0.1"]\n',
             "plain DNS upstreams are not allowed for the default zone")]:
        path = os.path.join(h.dir, "bad%d.toml" % len(needle))
        write_file(path, text)
        rc, out, err = E.run_cmd([exe, "--config", path, "--listen", "127.0.0.1:%d" % free_port(),
                                  "--check-config"])
        check(rc != 0 and needle in err, "rc=%s stderr=%r, wanted %r" % (rc, err, needle))
    print("config errors name the line")


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
