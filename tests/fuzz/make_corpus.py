#!/usr/bin/python3
"""Writes the seed corpora in tests/fuzz/corpus/<target>/ (committed; rerun
after changing this file). Real DNS queries and answers made with dnspython
(python3-dnspython: run with /usr/bin/python3), TOML files and value strings.

    /usr/bin/python3 tests/fuzz/make_corpus.py
"""
import base64
import hashlib
import os
import shutil
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsigkeyring

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KEEPALIVE, PADDING, COOKIE = 11, 12, 10


def opt(code, data=b""):
    return dns.edns.GenericOption(code, data)


def query(name, rdtype="A", edns=-1, payload=1232, options=None, want_dnssec=False, qid=0x1234, **kw):
    q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload, options=options,
                               want_dnssec=want_dnssec, **kw)
    q.id = qid
    return q


def queries():
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    out = {
        "a_no_edns": query("example.com", edns=-1).to_wire(),
        "aaaa_edns": query("www.example.org", "AAAA", edns=0).to_wire(),
        "mx_do_4096": query("example.net", "MX", edns=0, payload=4096, want_dnssec=True).to_wire(),
        "ecs": query("example.com", edns=0, options=[ecs]).to_wire(),
        "ecs_cookie_padding_keepalive": query(
            "example.com", edns=0, options=[ecs, opt(COOKIE, b"\x01" * 8), opt(PADDING, b"\0" * 20),
                                            opt(KEEPALIVE)]).to_wire(),
        "case_0x20": query("ExAmPlE.CoM", "TXT", edns=0).to_wire(),
        "root_ns": query(".", "NS", edns=0).to_wire(),
        "long_name": query(".".join(["a" * 63] * 3 + ["b" * 61]), edns=-1).to_wire(),
        "badvers": query("example.com", edns=1).to_wire(),
        "small_payload": query("example.com", edns=0, payload=100).to_wire(),
    }
    keyring = dns.tsigkeyring.from_text({"key.example.": base64.b64encode(b"k" * 32).decode()})
    q = query("example.com", edns=0)
    q.use_tsig(keyring, keyname="key.example.")
    out["tsig"] = q.to_wire()
    q = query("example.com", edns=-1)
    q.set_opcode(dns.opcode.NOTIFY)
    out["opcode_notify"] = q.to_wire()
    wire = bytearray(query("example.com", edns=-1).to_wire())
    wire[2] |= 0x80
    out["qr_set"] = bytes(wire)
    header = struct.pack("!HHHHHH", 0x4321, 0x0100, 1, 0, 0, 0)
    out["compressed_qname"] = header + b"\xc0\x0c\x00\x01\x00\x01"
    out["qdcount_2"] = struct.pack("!HHHHHH", 1, 0x0100, 2, 0, 0, 0) + (b"\x01a\x00\x00\x01\x00\x01" * 2)
    out["qdcount_0_opt"] = struct.pack("!HHHHHH", 1, 0x0100, 0, 0, 0, 1) + b"\x00\x00\x29\x04\xd0\0\0\0\0\0\0"
    two_opts = bytearray(query("example.com", edns=0).to_wire())
    two_opts[11] = 2
    out["two_opts"] = bytes(two_opts) + b"\x00\x00\x29\x04\xd0\0\0\0\0\0\0"
    bad_opt = bytearray(query("example.com", edns=0).to_wire())
    out["opt_option_overrun"] = bytes(bad_opt[:-2]) + b"\x00\x05" + b"\x00\x0a\x00\x09\x01"
    out["trailing_garbage"] = query("example.com", edns=-1).to_wire() + b"\xff\xff"
    out["short_header"] = b"\x12\x34\x01\x00\x00"
    q = query("example.com", edns=-1)
    q.answer.append(dns.rrset.from_text("example.com.", 60, "IN", "A", "192.0.2.1"))
    out["answer_in_query"] = q.to_wire()
    return out


def response(q, rcode=dns.rcode.NOERROR, answers=(), authority=(), additional=(), flags=0, edns=None,
             options=None):
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for rr in answers:
        r.answer.append(dns.rrset.from_text(*rr))
    for rr in authority:
        r.authority.append(dns.rrset.from_text(*rr))
    for rr in additional:
        r.additional.append(dns.rrset.from_text(*rr))
    r.flags |= flags
    if edns is not None:
        r.use_edns(edns, payload=1232, options=options or [])
    return r.to_wire(max_size=65535)


def answers():
    soa = ("example.com.", 300, "IN", "SOA", "ns1.example.com. hostmaster.example.com. 1 7200 3600 1209600 60")
    qa = query("example.com", edns=0)
    q0 = query("example.com", edns=-1)
    out = {
        "a_two": response(qa, answers=[("example.com.", 300, "IN", "A", "192.0.2.1", "192.0.2.2")], edns=0),
        "a_no_edns": response(q0, answers=[("example.com.", 60, "IN", "A", "192.0.2.1")]),
        "cname_chain": response(query("www.example.com", edns=0), answers=[
            ("www.example.com.", 300, "IN", "CNAME", "cdn.example.net."),
            ("cdn.example.net.", 30, "IN", "A", "198.51.100.7")], edns=0),
        "nxdomain_soa": response(query("nope.example.com", edns=0), dns.rcode.NXDOMAIN, authority=[soa], edns=0),
        "nodata_soa": response(query("example.com", "AAAA", edns=0), authority=[soa], edns=0),
        "nxdomain_no_soa": response(query("nope.example.com", edns=-1), dns.rcode.NXDOMAIN),
        "servfail": response(qa, dns.rcode.SERVFAIL, edns=0),
        "refused": response(q0, dns.rcode.REFUSED),
        "truncated": response(q0, flags=dns.flags.TC),
        "opt_keepalive_padding_cookie": response(qa, answers=[("example.com.", 300, "IN", "A", "192.0.2.1")],
                                                 edns=0, options=[opt(KEEPALIVE, b"\x00\x64"),
                                                                  opt(COOKIE, b"\x02" * 16),
                                                                  opt(PADDING, b"\0" * 40)]),
        "big_txt": response(query("big.example.com", "TXT", edns=0), answers=[
            ("big.example.com.", 600, "IN", "TXT", *[f'"{i:02d}{"x" * 200}"' for i in range(7)])], edns=0),
        "many_a": response(query("many.example.com", edns=0), answers=[
            ("many.example.com.", 300, "IN", "A", *[f"10.0.{i // 250}.{i % 250}" for i in range(70)])], edns=0),
        "mx_additional": response(query("example.com", "MX", edns=0), answers=[
            ("example.com.", 300, "IN", "MX", "10 mail.example.com.")], additional=[
            ("mail.example.com.", 300, "IN", "A", "192.0.2.25")], edns=0),
        "case_0x20": response(query("ExAmPlE.cOm", edns=0), answers=[("example.com.", 300, "IN", "A", "192.0.2.1")],
                              edns=0),
    }
    bad_soa = bytearray(out["nxdomain_soa"])
    out["malformed_soa_rdlength"] = bytes(bad_soa[:-5])
    out["trailing_garbage"] = out["a_no_edns"] + b"\x00\x01\x02"
    return out


def prefixed(messages, prefixes):
    out = {}
    for name, wire in messages.items():
        for i, prefix in enumerate(prefixes):
            out[f"{name}_{i}"] = prefix + wire
    return out


def stream_inputs(qs, ans):
    def frame(m):
        return struct.pack("!H", len(m)) + m

    seed = lambda n: bytes(hashlib.sha256(str(n).encode()).digest()[:8])
    up = b"".join(frame(m) for m in ans.values())
    down = b"".join(frame(m) for m in qs.values())
    return {
        "upstream_answers": b"\x01" + seed(1) + up,
        "upstream_bytewise": b"\x01" + b"\0" * 7 + b"\x01" + up,
        "tcp_queries": b"\x00" + seed(2) + down,
        "tcp_too_large": b"\x00" + seed(3) + frame(qs["a_no_edns"]) + b"\x04\x01" + b"\0" * 40,
        "upstream_partial_tail": b"\x01" + seed(4) + frame(ans["a_two"]) + frame(ans["big_txt"])[:300],
        "empty_messages": b"\x00" + seed(5) + b"\0\0" * 10,
        "upstream_max": b"\x01" + seed(6) + b"\xff\xff" + b"\x07" * 65535 + frame(ans["servfail"]),
    }


def config_files():
    out = {}
    for path in ["systemd/dotproxy.toml", "deploy/container/dotproxy.toml",
                 "deploy/kubernetes/stub-resolver/dotproxy.toml", "deploy/kubernetes/node-cache/dotproxy.toml"]:
        with open(os.path.join(ROOT, path), "rb") as f:
            out[path.replace("/", "_")] = f.read()
    pin = base64.b64encode(hashlib.sha256(b"spki").digest()).decode()
    out["pins"] = f'''listen = ["127.0.0.1:5353"]
[[upstream]]
address = "127.0.0.1:8853"
name = "localhost"
pins = ["{pin}"]
pin_only = true
'''.encode()
    out["every_kind"] = b'''listen = ["[::1]:53", "127.0.0.2:53"]
allow = ["10.0.0.0/8", "fd00::/8", "192.0.2.1"]
threads = 2
io_backend = "epoll"
log_level = "debug"
log_format = "json"
metrics_listen = "127.0.0.1:9153"
ca_file = "/etc/ssl/certs/ca-certificates.crt"
freebind = true
query_timeout_ms = 1500
cache_size = 0
edns_udp_size = 1400
[[upstream]]
address = "[2620:fe::fe]"
name = "dns.quad9.net"
priority = 5
'''
    out["errors"] = b'''listen = []
unknown_key = 1
[[upstream]]
address = "not an address"
priority = 101
'''
    out["toml_syntax"] = b'''a = { b = [1, 2.5, "x", 1979-05-27T07:32:00Z, true], c = """multi
line""" }
[t."quoted key".sub]
x = 0x1f
'''
    return out


def value_strings():
    pin = base64.b64encode(hashlib.sha256(b"spki").digest()).decode()
    return {f"s{i:02d}": s.encode() for i, s in enumerate([
        "1.1.1.1", "1.1.1.1#cloudflare-dns.com", "1.0.0.1:853#cloudflare-dns.com",
        "[2620:fe::fe]:853#dns.quad9.net", "2620:fe::fe", "[::1]", "127.0.0.1:8853#localhost^" + pin,
        "127.0.0.1#localhost^" + pin + "^" + pin, "9.9.9.9#", "1.1.1.1^notbase64", pin,
        "10.0.0.0/8", "fd00::/8", "192.0.2.1", "::ffff:192.0.2.1/128", "10.0.0.0/33", "0.0.0.0/0",
        "127.0.0.1:0", "[::1]:65535", "[::1]:65536", "1.2.3.4:-1", "2000", "auto", "uring", "json",
        "/etc/dotproxy/dotproxy.toml", "[fe80::1%eth0]:53",
    ])}


def doh_inputs(qs):
    """HTTP/2 frames a DoH client sends after the connection preface (the
    target writes that itself): SETTINGS, then requests. HPACK without
    Huffman: static-table names (RFC 7541 Appendix A), literal values."""
    def frame(ftype, flags, stream, payload=b""):
        return struct.pack("!I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack("!I", stream) + payload

    def lit(index, value):  # literal without indexing, indexed name
        value = value.encode() if isinstance(value, str) else value
        head = bytes([index]) if index < 15 else bytes([15, index - 15])
        n, length = len(value), b""
        if n < 127:
            length = bytes([n])
        else:  # a 7-bit prefix integer (RFC 7541 §5.1)
            length, n = b"\x7f", n - 127
            while n >= 128:
                length, n = length + bytes([n % 128 + 128]), n // 128
            length += bytes([n])
        return head + length + value

    def get(stream, path):
        block = b"\x82\x87" + lit(4, path) + lit(1, "dot.test")  # GET, https
        return frame(1, 0x05, stream, block)  # END_HEADERS | END_STREAM

    def post(stream, body, content_type="application/dns-message", split=False):
        block = b"\x83\x87" + lit(4, "/dns-query") + lit(1, "dot.test") + lit(31, content_type) + \
            lit(28, str(len(body)))
        if split:  # HEADERS then CONTINUATION
            return frame(1, 0x00, stream, block[:5]) + frame(9, 0x04, stream, block[5:]) + \
                frame(0, 0x00, stream, body[:3]) + frame(0, 0x01, stream, body[3:])
        return frame(1, 0x04, stream, block) + frame(0, 0x01, stream, body)

    def b64(wire):
        return base64.urlsafe_b64encode(wire).rstrip(b"=").decode()

    settings = frame(4, 0, 0, struct.pack("!HI", 3, 100) + struct.pack("!HI", 4, 65535))
    ack = frame(4, 1, 0)
    seed = lambda n: bytes(hashlib.sha256(("doh%d" % n).encode()).digest()[:8])
    a = qs["a_no_edns"]
    many = b"".join(get(1 + 2 * i, "/dns-query?dns=" + b64(w)) for i, w in enumerate(list(qs.values())[:12]))
    return {
        "get": seed(1) + settings + ack + get(1, "/dns-query?dns=" + b64(a)),
        "post": seed(2) + settings + post(1, a),
        "post_continuation": seed(3) + settings + post(3, a, split=True),
        "many_streams": seed(4) + settings + many,
        "errors": seed(5) + settings + get(1, "/other") + get(3, "/dns-query?dns=!!") +
            get(5, "/dns-query") + post(7, a, "text/plain") + post(9, b"\x00" * 2000),
        "reset_and_ping": seed(6) + settings + get(1, "/dns-query?dns=" + b64(a)) +
            frame(3, 0, 1, struct.pack("!I", 8)) + frame(6, 0, 0, b"12345678") +
            frame(8, 0, 0, struct.pack("!I", 1 << 20)),
        "goaway": seed(7) + settings + post(1, a) + frame(7, 0, 0, struct.pack("!II", 1, 0)),
    }


def write(target, files):
    directory = os.path.join(HERE, "corpus", target)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def main():
    qs = queries()
    ans = answers()
    write("query", qs)
    # answer: flags, UDP size (2), age, case pattern.
    write("answer", prefixed(ans, [b"\x05\x04\xd0\x00\x55", b"\x04\x00\x00\x3c\xaa",
                                   b"\x27\x02\x00\xff\x0f", b"\x48\x10\x00\x05\xff"]))
    # answer_edns: flags, UDP limit (2).
    write("answer_edns", prefixed(ans, [b"\x01\x02\x00", b"\x00\x00\x00"]))
    write("stream_framer", stream_inputs(qs, ans))
    write("config_file", config_files())
    write("config_text", value_strings())
    write("doh_server", doh_inputs(qs))


if __name__ == "__main__":
    main()
