#!/usr/bin/python3
"""End-to-end cases for local answers and blocklists (hosts_file, [[local]],
[[blocklist]], allowlist): the real binary with a real Unbound upstream over
DoT, queried with dnspython over UDP and TCP. Whether a query reached the
upstream is read from dotproxy's own counters (forwarded, per-upstream
queries) with the cache off, so a cached answer cannot hide a forward.
Uses the harness in dotproxy_e2e.py (loopback only, bounded waits, children
ended by PID).

    dotproxy_e2e_policy.py --dotproxy build/dotproxy --case policy_hosts_file
"""

import os
import signal
import sys

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import LOOPBACK4, case, check, make_query  # noqa: E402
import dotproxy_e2e_metrics as M  # noqa: E402
import dotproxy_e2e_reload as R  # noqa: E402

_INHERITED = set(E.CASES)


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # a reload never reads half a file


def start(h, u, config_text):
    """dotproxy with --config (the policy part) and --metrics, cache off."""
    path = os.path.join(h.dir, "policy%d.toml" % len(h.proxies))
    write(path, config_text)
    p = M.start_metrics_proxy(h, u, extra=["--config", path])
    p.config_path = path
    return p


def ask(p, qname, qtype, transport="udp", edns=0, payload=1232):
    q = make_query(qname, qtype, edns=edns, payload=payload)
    exchange = E.udp_exchange if transport == "udp" else E.tcp_exchange
    wire, _ = exchange(p.port, q.to_wire())
    check(wire is not None, "no %s answer to %s %s" % (transport, qname, qtype))
    m = dns.message.from_wire(wire)
    check(m.id == q.id, "ID %d, asked %d" % (m.id, q.id))
    check(m.question[0].name.to_text() == dns.name.from_text(qname).to_text(),
          "question not echoed: %s" % m.question)
    return m, wire


def forwarded(p):
    _, samples = M.scrape(p)
    return samples.get("dotproxy_forwarded_total", 0), samples


def addresses(m, rdtype):
    out = set()
    for rrset in m.answer:
        if rrset.rdtype == rdtype:
            out |= {r.to_text() for r in rrset}
    return out


def no_allocation(p, questions, rounds=4):
    """Policy answers allocate nothing on the shard threads: after a warm-up
    round, `rounds` more over UDP and TCP leave heap_allocations unchanged."""
    def one_round():
        for qname, qtype in questions:
            for transport in ("udp", "tcp"):
                ask(p, qname, qtype, transport)
    one_round()
    _, before = M.scrape(p)
    for _ in range(rounds):
        one_round()
    _, after = M.scrape(p)
    d = after["dotproxy_heap_allocations_total"] - before["dotproxy_heap_allocations_total"]
    check(d == 0, "%d heap allocations for %d policy answers" % (d, rounds * 2 * len(questions)))


def nodata_with_soa(m, what):
    check(m.rcode() == dns.rcode.NOERROR and not m.answer, "%s: not NODATA: %s" % (what, m))
    check(len(m.authority) == 1 and m.authority[0].rdtype == dns.rdatatype.SOA,
          "%s: no SOA in authority: %s" % (what, m))


@case
def policy_hosts_file(h):
    """hosts_file: A, AAAA (aliases too) and PTR answered by dotproxy over UDP
    and TCP with AA set, the client's case echoed; another type of a hosts
    name is NODATA with a SOA; none of it reaches the upstream
    (dotproxy_forwarded_total and the upstream's queries unchanged), while
    other names still are forwarded."""
    u = h.start_unbound()
    hosts = os.path.join(h.dir, "hosts")
    write(hosts, "# test hosts\n127.0.0.1 localhost\n192.0.2.77 nas.lan nas  # storage\n"
                 "2001:db8::77 nas.lan\n")
    p = start(h, u, 'hosts_file = "%s"\n' % hosts)
    before, samples = forwarded(p)
    upstream_before = samples.get("dotproxy_upstream_queries_total" + M.up_label(p), 0)
    for transport in ("udp", "tcp"):
        m, wire = ask(p, "NaS.LAN.", "A", transport)
        check(addresses(m, dns.rdatatype.A) == {"192.0.2.77"}, "A: %s" % m)
        check(m.flags & dns.flags.AA, "AA not set: %s" % m)
        check(b"\x03NaS\x03LAN\x00" in wire, "client's case not echoed")
        m, _ = ask(p, "nas.lan.", "AAAA", transport)
        check(addresses(m, dns.rdatatype.AAAA) == {"2001:db8::77"}, "AAAA: %s" % m)
        m, _ = ask(p, "nas.", "A", transport)
        check(addresses(m, dns.rdatatype.A) == {"192.0.2.77"}, "alias: %s" % m)
        m, _ = ask(p, "77.2.0.192.in-addr.arpa.", "PTR", transport)
        check(addresses(m, dns.rdatatype.PTR) == {"nas.lan."}, "PTR: %s" % m)
        m, _ = ask(p, dns.reversename.from_address("2001:db8::77").to_text(), "PTR", transport)
        check(addresses(m, dns.rdatatype.PTR) == {"nas.lan."}, "PTR6: %s" % m)
        m, _ = ask(p, "nas.lan.", "MX", transport)
        nodata_with_soa(m, "MX of a hosts name")
    after, samples = forwarded(p)
    check(after == before, "local answers were forwarded: %d -> %d" % (before, after))
    check(samples.get("dotproxy_upstream_queries_total" + M.up_label(p), 0) == upstream_before,
          "the upstream got queries")
    check(samples.get("dotproxy_local_answers_total") == 12, "local answers counted %s" %
          samples.get("dotproxy_local_answers_total"))
    m, _ = ask(p, "a.example.test.", "A")
    check(addresses(m, dns.rdatatype.A) == {"192.0.2.1"}, "forwarded name: %s" % m)
    check(forwarded(p)[0] == before + 1, "other names not forwarded")
    no_allocation(p, [("nas.lan.", "A"), ("nas.lan.", "MX"), ("77.2.0.192.in-addr.arpa.", "PTR")])
    print("hosts: A/AAAA/PTR/NODATA local over UDP and TCP; %d forwarded before, %d after" % (
        before, after))


@case
def policy_local_records(h):
    """[[local]]: an RRset of two A records, a CNAME chain to a local name,
    TXT and MX; EDNS echoed when asked; a TXT RRset larger than 512 bytes
    truncates (TC=1) over UDP without EDNS and comes whole over TCP."""
    u = h.start_unbound()
    big = "".join('[[local]]\nname = "big.lan"\ntype = "TXT"\ndata = "%s"\n' % (
        "%02d" % i + "x" * 60) for i in range(12))
    p = start(h, u, """
[[local]]
name = "svc.lan"
type = "A"
ttl = 30
data = "192.0.2.1"
[[local]]
name = "svc.lan"
type = "A"
data = "192.0.2.2"
[[local]]
name = "www.lan"
type = "CNAME"
data = "svc.lan"
[[local]]
name = "svc.lan"
type = "TXT"
data = "\\"v=spf1 -all\\""
[[local]]
name = "mail.lan"
type = "MX"
data = "10 svc.lan"
""" + big)
    before, _ = forwarded(p)
    m, _ = ask(p, "svc.lan.", "A")
    check(addresses(m, dns.rdatatype.A) == {"192.0.2.1", "192.0.2.2"} and len(m.answer) == 1,
          "one A RRset: %s" % m)
    check(m.edns == 0 and m.answer[0].ttl == 30, "EDNS or TTL: %s" % m)
    m, _ = ask(p, "svc.lan.", "A", edns=-1)
    check(m.edns == -1, "an OPT for a query without one: %s" % m)
    m, _ = ask(p, "www.lan.", "A", "tcp")
    check([r.rdtype for r in m.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A] and
          addresses(m, dns.rdatatype.A) == {"192.0.2.1", "192.0.2.2"}, "CNAME chain: %s" % m)
    m, _ = ask(p, "svc.lan.", "TXT")
    check(addresses(m, dns.rdatatype.TXT) == {'"v=spf1 -all"'}, "TXT: %s" % m)
    m, _ = ask(p, "mail.lan.", "MX")
    check(addresses(m, dns.rdatatype.MX) == {"10 svc.lan."}, "MX: %s" % m)
    m, _ = ask(p, "big.lan.", "TXT", edns=-1)
    check(m.flags & dns.flags.TC and not m.answer, "not truncated: %s" % m)
    m, _ = ask(p, "big.lan.", "TXT", "tcp", edns=-1)
    check(not m.flags & dns.flags.TC and len(list(m.answer[0])) == 12, "TCP not whole: %s" % m)
    m, _ = ask(p, "big.lan.", "TXT", edns=0, payload=1232)
    check(not m.flags & dns.flags.TC, "fits 1232 but truncated: %s" % m)
    check(forwarded(p)[0] == before, "local records were forwarded")
    print("local: RRset, CNAME chain, TXT, MX, EDNS, TC=1 then TCP")


@case
def policy_blocklist_actions(h):
    """[[blocklist]] actions: nxdomain (default, with SOA), nodata, refused,
    an IPv4 and an IPv6 address (A/AAAA answered, the other type NODATA);
    a '*.' entry blocks the subtree, a plain one only its name, 'badads'
    is not 'ads'; the allowlist wins over every list; hits counted per list
    and never forwarded."""
    u = h.start_unbound()
    lists = {}
    for name, text in {
            "nx": "ads.example.test\n*.track.example.test\n",
            "nodata": "0.0.0.0 quiet.example.test  # hosts format\n",
            "refused": ".refused.example.test\n",
            "sink4": "sink.example.test\n",
            "sink6": "sink6.example.test\n"}.items():
        lists[name] = os.path.join(h.dir, name + ".list")
        write(lists[name], text)
    allow = os.path.join(h.dir, "allow.list")
    write(allow, "ok.track.example.test\n")
    tables = "".join('[[blocklist]]\nname = "%s"\nfile = "%s"\n%s' % (
        name, lists[name], "" if action is None else 'action = "%s"\n' % action)
        for name, action in (("nx", None), ("nodata", "nodata"), ("refused", "refused"),
                             ("sink4", "0.0.0.0"), ("sink6", "::")))
    p = start(h, u, 'allowlist = ["%s"]\n' % allow + tables)
    before, _ = forwarded(p)
    m, _ = ask(p, "ads.example.test.", "A")
    check(m.rcode() == dns.rcode.NXDOMAIN and m.authority and
          m.authority[0].rdtype == dns.rdatatype.SOA, "nxdomain: %s" % m)
    for qname in ("track.example.test.", "x.y.TRACK.example.test."):
        check(ask(p, qname, "A")[0].rcode() == dns.rcode.NXDOMAIN, "subtree %s" % qname)
    nodata_with_soa(ask(p, "quiet.example.test.", "A", "tcp")[0], "nodata action")
    check(ask(p, "a.b.refused.example.test.", "A")[0].rcode() == dns.rcode.REFUSED, "refused")
    m, _ = ask(p, "sink.example.test.", "A")
    check(addresses(m, dns.rdatatype.A) == {"0.0.0.0"}, "sink A: %s" % m)
    nodata_with_soa(ask(p, "sink.example.test.", "AAAA")[0], "sink AAAA")
    m, _ = ask(p, "sink6.example.test.", "AAAA")
    check(addresses(m, dns.rdatatype.AAAA) == {"::"}, "sink6 AAAA: %s" % m)
    nodata_with_soa(ask(p, "sink6.example.test.", "A")[0], "sink6 A")
    check(forwarded(p)[0] == before, "blocked names were forwarded")
    # Not blocked: forwarded, answered by Unbound (NXDOMAIN from its zone).
    for qname in ("sub.ads.example.test.", "badads.example.test.", "ok.track.example.test."):
        m, _ = ask(p, qname, "A")
        check(m.rcode() == dns.rcode.NXDOMAIN and m.authority and
              m.authority[0].name.to_text() == "example.test.", "%s not from upstream: %s" % (
                  qname, m))
    after, samples = forwarded(p)
    check(after == before + 3, "forwarded %d, want 3" % (after - before))
    got = {name: samples.get('dotproxy_blocklist_hits_total{list="%s"}' % name)
           for name in lists}
    check(got == {"nx": 3, "nodata": 1, "refused": 1, "sink4": 2, "sink6": 2}, "hits %s" % got)
    check(samples.get("dotproxy_blocked_total") == sum(got.values()),
          "blocked %s" % samples.get("dotproxy_blocked_total"))
    check(samples.get("dotproxy_allowlist_overrides_total") == 1, "allowlist overrides %s" %
          samples.get("dotproxy_allowlist_overrides_total"))
    no_allocation(p, [("ads.example.test.", "A"), ("a.track.example.test.", "AAAA"),
                      ("sink.example.test.", "A"), ("quiet.example.test.", "A")])
    print("actions: %s" % got)


@case
def policy_reload_lists(h):
    """A list is replaced whole on SIGHUP: a newly listed name is blocked
    after the reload; a list with a bad line is refused (the log names
    FILE:LINE), the old list stays in force; a bad line at start exits
    non-zero naming FILE:LINE."""
    u = h.start_unbound()
    block = os.path.join(h.dir, "reload.list")
    write(block, "ads.example.test\n")
    p = start(h, u, '[[blocklist]]\nfile = "%s"\n' % block)
    check(ask(p, "ads.example.test.", "A")[0].rcode() == dns.rcode.NXDOMAIN, "not blocked")
    check(ask(p, "a.example.test.", "A")[0].answer, "a.example.test blocked before the reload")
    write(block, "ads.example.test\na.example.test\n")
    p.proc.send_signal(signal.SIGHUP)
    R.wait_log(p, "reload applied", 1)
    check(ask(p, "a.example.test.", "A")[0].rcode() == dns.rcode.NXDOMAIN,
          "a newly listed name is not blocked after the reload")
    write(block, "ads.example.test\nbad name.example.test\n")
    p.proc.send_signal(signal.SIGHUP)
    refused = R.wait_log(p, "reload refused", 1)
    check("%s:2:" % block in refused[0], "no FILE:LINE in %r" % refused[0])
    check(ask(p, "a.example.test.", "A")[0].rcode() == dns.rcode.NXDOMAIN,
          "the old list is not in force after a refused reload")
    check(p.alive(), "dotproxy died on a refused reload")
    # At start: exit non-zero, naming FILE:LINE.
    config = os.path.join(h.dir, "bad.toml")
    write(config, '[[blocklist]]\nfile = "%s"\n' % block)
    rc, _, err = E.run_cmd([h.need_exe(), "--config", config, "--listen", "%s:%d" % (
        LOOPBACK4, E.free_port()), "--upstream", "%s:%d#%s" % (LOOPBACK4, u.dot_port, E.TLS_NAME),
        "--ca-file", h.pki.ca_pem, "--check-config"])
    check(rc != 0 and ("%s:2:" % block) in err, "bad list at start: rc=%s %r" % (rc, err))
    print("reload: new name blocked; broken list refused: %s" % refused[0].split("refused", 1)[1][:100])


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
