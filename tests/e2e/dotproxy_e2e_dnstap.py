#!/usr/bin/python3
"""End-to-end cases for dnstap (--dnstap, --dnstap-messages): the real
binary writes Frame Streams to a file or to fstrm_capture's Unix socket,
and dnstap-read (bind9-dnsutils) reads it back; the messages logged must be
exactly the queries sent (names, types, counts per message type) with the
right addresses and ports. Uses the harness in dotproxy_e2e.py (loopback
only, bounded waits, children ended by PID).

    dotproxy_e2e_dnstap.py --dotproxy build/dotproxy --case dnstap_file
"""

import collections
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import dns.message
import dns.opcode
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import LOOPBACK4, case, check, make_query  # noqa: E402

_INHERITED = set(E.CASES)

CONTENT_TYPE = "protobuf:dnstap.Dnstap"


def need_tools():
    for tool in ("dnstap-read", "fstrm_capture"):
        if shutil.which(tool) is None:
            raise E.CaseSkip("%s not installed" % tool)


def read_tap(path):
    """The messages of a dnstap file as dicts: type, protocol, question
    ("name TYPE"), query/response address and port."""
    check(os.path.exists(path), "no dnstap file at %s" % path)
    out = subprocess.run(["dnstap-read", "-y", path], capture_output=True, text=True,
                         timeout=20)
    check(out.returncode == 0, "dnstap-read failed: %s" % out.stderr[-500:])
    messages = []
    for doc in yaml.safe_load_all(out.stdout):
        if not doc:
            continue
        m = doc["message"]
        data = m.get("query_message_data") or m.get("response_message_data") or {}
        questions = data.get("QUESTION_SECTION") or []
        question = " ".join(questions[0].split()[::2]) if questions else None  # "name TYPE"
        messages.append({
            "identity": doc.get("identity"), "version": doc.get("version"),
            "type": m["type"], "protocol": m.get("socket_protocol"),
            "question": question,
            "query_address": m.get("query_address"), "query_port": m.get("query_port"),
            "response_address": m.get("response_address"),
            "response_port": m.get("response_port"),
        })
    return messages


def counts(messages):
    """{(question, type): count}"""
    return collections.Counter((m["question"], m["type"]) for m in messages)


def udp_ask(port, qname, qtype, opcode=None):
    """One query from a socket of our own; returns (answer, our source port)."""
    q = make_query(qname, qtype)
    if opcode is not None:
        q.set_opcode(opcode)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((LOOPBACK4, 0))
        s.settimeout(2.0)
        s.sendto(q.to_wire(), (LOOPBACK4, port))
        data, _ = s.recvfrom(65535)
        return data, s.getsockname()[1]
    finally:
        s.close()


def tcp_ask(port, questions):
    """The questions pipelined on one TCP connection, answered in turn;
    returns our source port."""
    s = E.tcp_connect(port)
    try:
        for qname, qtype in questions:
            wire = make_query(qname, qtype).to_wire()
            s.sendall(struct.pack("!H", len(wire)) + wire)
            E.tcp_read_msg(s, time.monotonic() + 2.0)
        return s.getsockname()[1]
    finally:
        s.close()


def exit_counters(p):
    """dotproxy's counters line at exit, as a dict."""
    text = open(p.stderr_path, errors="replace").read()
    lines = [line for line in text.splitlines() if " counters: " in line]
    check(lines, "no counters line at exit")
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1].split(" counters: ")[1])}


def expect_exact(messages, expected, what):
    got = counts(messages)
    for key, n in expected.items():
        check(got.get(key, 0) == n, "%s: %s logged %d times, expected %d; all: %s" % (
            what, key, got.get(key, 0), n, dict(got)))
    unexpected = {k: v for k, v in got.items() if k not in expected}
    check(not unexpected, "%s: messages nobody asked for: %s" % (what, unexpected))


def miss(question):
    return {(question, t): 1 for t in
            ("CLIENT_QUERY", "FORWARDER_QUERY", "FORWARDER_RESPONSE", "CLIENT_RESPONSE")}


def add(total, more):
    for k, v in more.items():
        total[k] = total.get(k, 0) + v
    return total


def run_query_set(p, u):
    """UDP and TCP, cache misses and hits, a locally answered NOTIMP. Returns
    (expected counts, {question: (protocol, client port)})."""
    ports = collections.defaultdict(set)
    ports["txt.example.test. TXT"].add(udp_ask(p.port, "txt.example.test.", "TXT")[1])
    # A cache hit, from another source port.
    ports["txt.example.test. TXT"].add(udp_ask(p.port, "txt.example.test.", "TXT")[1])
    ports["nonexistent.example.test. A"].add(
        udp_ask(p.port, "nonexistent.example.test.", "A")[1])
    resp, port = udp_ask(p.port, "notimp.example.test.", "SOA", opcode=dns.opcode.NOTIFY)
    ports["notimp.example.test. SOA"].add(port)
    check(dns.message.from_wire(resp).rcode() == 4, "NOTIFY not answered NOTIMP")
    tcp_port = tcp_ask(p.port, [("multi.example.test.", "A"), ("multi.example.test.", "A"),
                                ("a.example.test.", "AAAA")])
    expected = {}
    add(expected, miss("txt.example.test. TXT"))
    add(expected, {("txt.example.test. TXT", "CLIENT_QUERY"): 1,
                   ("txt.example.test. TXT", "CLIENT_RESPONSE"): 1})
    add(expected, miss("nonexistent.example.test. A"))
    add(expected, {("notimp.example.test. SOA", "CLIENT_QUERY"): 1,
                   ("notimp.example.test. SOA", "CLIENT_RESPONSE"): 1})
    add(expected, miss("multi.example.test. A"))
    add(expected, {("multi.example.test. A", "CLIENT_QUERY"): 1,
                   ("multi.example.test. A", "CLIENT_RESPONSE"): 1})
    add(expected, miss("a.example.test. AAAA"))
    ports = {q: ("UDP", used) for q, used in ports.items()}
    ports["multi.example.test. A"] = ("TCP", {tcp_port})
    ports["a.example.test. AAAA"] = ("TCP", {tcp_port})
    return expected, ports


def check_addresses(messages, ports, p, u):
    for m in messages:
        if m["question"] not in ports:
            continue
        protocol, client_ports = ports[m["question"]]
        what = "%s %s" % (m["type"], m["question"])
        if m["type"].startswith("CLIENT_"):
            check(m["protocol"] == protocol, "%s: protocol %s, sent over %s" % (
                what, m["protocol"], protocol))
            check(m["query_address"] == LOOPBACK4 and m["query_port"] in client_ports,
                  "%s: client %s:%s, expected %s:%s" % (
                      what, m["query_address"], m["query_port"], LOOPBACK4, client_ports))
            check(m["response_address"] == LOOPBACK4 and m["response_port"] == p.port,
                  "%s: proxy side %s:%s, expected %s:%d" % (
                      what, m["response_address"], m["response_port"], LOOPBACK4, p.port))
        else:
            check(m["protocol"] == "TCP", "%s: protocol %s (DoT runs on TCP)" % (
                what, m["protocol"]))
            check(m["response_address"] == LOOPBACK4 and m["response_port"] == u.dot_port,
                  "%s: upstream %s:%s, expected %s:%d" % (
                      what, m["response_address"], m["response_port"], LOOPBACK4, u.dot_port))
            # This proxy's end of the upstream connection: loopback, an
            # ephemeral port (not the upstream's, not the listener's).
            check(m.get("query_address") == LOOPBACK4 and m.get("query_port") not in (
                None, 0, u.dot_port, p.port),
                  "%s: proxy side of the upstream connection %s:%s" % (
                      what, m.get("query_address"), m.get("query_port")))


def without_readiness(messages):
    """The harness's readiness probe asks a.example.test. A: not ours."""
    return [m for m in messages if m["question"] != "a.example.test. A"]


@case
def dnstap_file(h):
    """--dnstap file:PATH, one shard, cache on: UDP and TCP queries, misses
    and hits and a local NOTIMP are logged exactly once per message type
    that applies (a hit: client query and response only), with the client's
    and the proxy's address and port, the upstream's for forwarder
    messages, identity and version; the exit counters match the file."""
    need_tools()
    u = h.start_unbound()
    path = os.path.join(h.dir, "tap.fstrm")
    p = h.start_proxy(u, default_cache=True,
                      extra=["--threads", "1", "--cache-size", "1000", "--dnstap", "file:" + path,
                             "--dnstap-identity", "e2e-proxy"])
    expected, ports = run_query_set(p, u)
    rc, _ = p.stop()
    check(rc == 0, "dotproxy exit %s" % rc)
    messages = read_tap(path)
    expect_exact(without_readiness(messages), expected, "file")
    check_addresses(messages, ports, p, u)
    check(all(m["identity"] == "e2e-proxy" and str(m["version"]).startswith("dotproxy ")
              for m in messages), "identity/version: %s" % messages[0])
    c = exit_counters(p)
    check(c.get("dnstap_written", 0) == len(messages) and c.get("dnstap_dropped", 0) == 0,
          "counters %s, %d messages in the file" % (c, len(messages)))
    print("file: %d messages, exactly the queries sent" % len(messages))


def _varint(buf, i):
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _fields(buf):
    """(field number, value) of one protobuf message: ints for varints,
    bytes for length-delimited fields (enough for dnstap's)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire_type = key & 7
        if wire_type == 0:
            value, i = _varint(buf, i)
        elif wire_type == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire_type in (1, 5):
            n = 8 if wire_type == 1 else 4
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError("wire type %d" % wire_type)
        yield key >> 3, value


def tap_protocols(path):
    """[(Message.type, Message.socket_protocol)] of a Frame Streams file,
    read without dnstap-read (Debian 12's prints DOT and DOH as UDP)."""
    with open(path, "rb") as f:
        data = f.read()
    out, i = [], 0
    while i + 4 <= len(data):
        n = struct.unpack("!I", data[i:i + 4])[0]
        i += 4
        if n == 0:  # a control frame: its length, then the frame
            n = struct.unpack("!I", data[i:i + 4])[0]
            i += 4 + n
            continue
        frame, i = data[i:i + n], i + n
        for number, value in _fields(frame):
            if number == 14:  # Dnstap.message
                m = dict(_fields(value))
                out.append((m.get(1), m.get(3)))
    return out


@case
def dnstap_encrypted_clients(h):
    """Client messages of a DoT client (kdig +tls) are tagged DOT (3), a DoH
    client's (kdig +https) DOH (4), a UDP client's UDP (1): read from the
    file's protobuf itself."""
    need_tools()
    kdig = "/usr/bin/kdig"
    if not os.access(kdig, os.X_OK):
        raise E.CaseSkip("kdig (knot-dnsutils) not installed")
    u = h.start_unbound()
    path = os.path.join(h.dir, "tap.fstrm")
    tls_port, https_port = E.free_port(), E.free_port()
    p = h.start_proxy(u, extra=[
        "--threads", "1", "--dnstap", "file:" + path, "--dnstap-messages", "client-query",
        "--listen-tls", "%s:%d" % (LOOPBACK4, tls_port),
        "--listen-https", "%s:%d" % (LOOPBACK4, https_port),
        "--tls-cert", h.pki.good_pem, "--tls-key", h.pki.good_key])
    udp_ask(p.port, "a.example.test.", "A")
    for port, mode in ((tls_port, "+tls"), (https_port, "+https")):
        argv = [kdig, "@%s" % LOOPBACK4, "-p", str(port), "+tls-ca=%s" % h.pki.ca_pem,
                "+tls-hostname=%s" % E.TLS_NAME, "+timeout=3", "+retry=1", mode,
                "a.example.test.", "A"]
        rc, out, err = E.run_cmd(argv, timeout=15)
        check(rc == 0 and "NOERROR" in out, "%s: rc %d\n%s%s" % (mode, rc, out, err))
    rc, _ = p.stop()
    check(rc == 0, "dotproxy exit %s" % rc)
    CLIENT_QUERY = 5
    # (the harness's readiness probes are UDP client queries too)
    protocols = sorted(proto for kind, proto in tap_protocols(path) if kind == CLIENT_QUERY)
    check(set(protocols) == {1, 3, 4} and protocols.count(3) == 1 and protocols.count(4) == 1,
          "client-query socket protocols %r, want UDP, one DOT, one DOH" % protocols)
    print("client queries tagged %r (UDP, DOT, DOH)" % protocols)


class Capture:
    """fstrm_capture on a Unix socket writing `path`."""

    def __init__(self, h, sock, path, name):
        self.path = path
        self.err = open(os.path.join(h.dir, name + ".stderr"), "ab")
        self.proc = E.spawn(["fstrm_capture", "-t", CONTENT_TYPE, "-u", sock, "-w", path],
                            self.err, self.err)
        deadline = time.monotonic() + 5
        while not os.path.exists(sock) and time.monotonic() < deadline:
            check(self.proc.poll() is None, "fstrm_capture exited")
            time.sleep(0.02)
        check(os.path.exists(sock), "fstrm_capture made no socket")

    def stop(self):
        E.stop_process(self.proc, signal.SIGTERM, 3.0)
        self.err.close()


@case
def dnstap_unix_reconnect(h):
    """--dnstap unix:SOCKET to fstrm_capture: the query set arrives exactly;
    with the reader gone queries are still answered and their messages are
    dropped or lost and counted; a new reader on the same socket is
    reconnected (within the 1 s retry) and gets the next queries."""
    need_tools()
    u = h.start_unbound()
    sock = os.path.join(h.dir, "tap.sock")
    first = Capture(h, sock, os.path.join(h.dir, "first.fstrm"), "capture1")
    p = h.start_proxy(u, default_cache=True,
                      extra=["--threads", "1", "--cache-size", "1000", "--dnstap", "unix:" + sock])
    expected, ports = run_query_set(p, u)
    time.sleep(0.3)  # the writer polls every 0.5 ms; give the reader time to write
    first.stop()
    if os.path.exists(sock):
        os.unlink(sock)
    first_messages = read_tap(first.path)
    expect_exact(without_readiness(first_messages), expected, "first reader")
    check_addresses(first_messages, ports, p, u)

    # No reader: answers keep coming.
    for i in range(5):
        resp, _ = udp_ask(p.port, "gone%d.example.test." % i, "A")
        check(resp is not None, "no answer while the dnstap reader is gone")
    second = Capture(h, sock, os.path.join(h.dir, "second.fstrm"), "capture2")
    time.sleep(1.5)  # the writer retries every second
    for i in range(3):
        tcp_ask(p.port, [("back%d.example.test." % i, "A")])
    time.sleep(0.3)
    rc, _ = p.stop()
    check(rc == 0, "dotproxy exit %s" % rc)
    second.stop()
    second_messages = read_tap(second.path)
    got = counts(second_messages)
    for i in range(3):
        for t in ("CLIENT_QUERY", "FORWARDER_QUERY", "FORWARDER_RESPONSE", "CLIENT_RESPONSE"):
            key = ("back%d.example.test. A" % i, t)
            check(got.get(key) == 1, "second reader: %s logged %s times" % (key, got.get(key)))
    # The outage's messages were dropped, lost in the failed write, or kept
    # in the ring and written after the reconnection: all accounted for.
    c = exit_counters(p)
    outage_in_second = sum(v for (q, _), v in got.items() if q and q.startswith("gone"))
    check(c.get("dnstap_written", 0) == len(first_messages) + len(second_messages),
          "written %s, read %d + %d" % (c.get("dnstap_written"), len(first_messages),
                                        len(second_messages)))
    check(outage_in_second + c.get("dnstap_dropped", 0) + c.get("dnstap_lost", 0) == 5 * 4,
          "outage: %d written after reconnect, counters %s" % (outage_in_second, c))
    print("unix: %d + %d messages; outage: %d written later, %d lost, %d dropped" % (
        len(first_messages), len(second_messages), outage_in_second, c.get("dnstap_lost", 0),
        c.get("dnstap_dropped", 0)))


@case
def dnstap_messages_reload(h):
    """dnstap_messages in the file chooses the types written, and a reload
    (SIGHUP) changes them; the destination is restart-only and says so."""
    need_tools()
    u = h.start_unbound()
    path = os.path.join(h.dir, "tap.fstrm")
    conf = os.path.join(h.dir, "dotproxy.toml")
    with open(conf, "w") as f:
        f.write('dnstap = "file:%s"\ndnstap_messages = ["client-query", "forwarder-response"]\n'
                % path)
    p = h.start_proxy(u, extra=["--threads", "1", "--config", conf])
    udp_ask(p.port, "txt.example.test.", "TXT")
    with open(conf, "w") as f:
        f.write('dnstap = "file:%s.other"\ndnstap_messages = ["client-response"]\n' % path)
    os.kill(p.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "reload applied" not in open(p.stderr_path).read():
        time.sleep(0.05)
    log = open(p.stderr_path).read()
    check("reload applied" in log, "no reload logged")
    check(re.search(r"not applied until restart: [^\n]*dnstap", log) is not None,
          "the destination change is not reported as restart-only")
    udp_ask(p.port, "multi.example.test.", "A")
    rc, _ = p.stop()
    check(rc == 0, "dotproxy exit %s" % rc)
    expect_exact(without_readiness(read_tap(path)), {
        ("txt.example.test. TXT", "CLIENT_QUERY"): 1,
        ("txt.example.test. TXT", "FORWARDER_RESPONSE"): 1,
        ("multi.example.test. A", "CLIENT_RESPONSE"): 1,
    }, "reload")
    check(not os.path.exists(path + ".other"), "the new destination was opened before a restart")
    print("types before and after the reload as configured")


@case
def dnstap_silent_reader_does_not_hang_exit(h):
    """A Unix "reader" that accepts the connection and never answers the
    Frame Streams handshake: queries are still answered (their messages
    dropped and counted), and SIGTERM still ends dotproxy within a few
    seconds (the writer is given 2 s, then left behind with a warning)."""
    import socket as socketlib
    u = h.start_unbound()
    sock = os.path.join(h.dir, "silent.sock")
    listener = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    listener.bind(sock)
    listener.listen(4)
    try:
        p = h.start_proxy(u, extra=["--threads", "1", "--dnstap", "unix:" + sock])
        for i in range(5):
            resp, _ = udp_ask(p.port, "silent%d.example.test." % i, "A")
            check(resp is not None, "no answer while the dnstap reader is silent")
        rc, seconds = p.stop(grace=6.0)
        check(rc == 0, "dotproxy exited %s" % rc)
        check(seconds < 5.0, "exit took %.1f s with a silent dnstap reader" % seconds)
        text = open(p.stderr_path, errors="replace").read()
        check("did not finish within 2 s" in text, "no warning about the stuck writer:\n%s" % text[-2000:])
        print("exit in %.2f s with a silent reader" % seconds)
    finally:
        listener.close()


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
