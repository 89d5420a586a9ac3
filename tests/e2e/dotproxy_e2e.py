#!/usr/bin/python3
"""End-to-end tests: the real dotproxy binary against a real DoT upstream (Unbound).

Every case builds its own world in a fresh temp dir: a test PKI (openssl CLI), an
Unbound that serves only static local data over DNS-over-TLS on loopback, and a
dotproxy pointed at it. Nothing leaves 127.0.0.1 / ::1: Unbound has
`local-zone: "." static` so it can never recurse, and its outgoing interface is
pinned to loopback as a second guard.

    dotproxy_e2e.py --list
    dotproxy_e2e.py --dotproxy build/dotproxy --case udp_answers [--keep]

Exit status: 0 pass, 1 fail (with what differed, and dotproxy's stderr), 77 skip.
Needs Debian's /usr/bin/python3 (python3-dnspython); stdlib + dnspython only.
"""

import argparse
import atexit
import os
import random
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype

UNBOUND = "/usr/sbin/unbound"
OPENSSL = "/usr/bin/openssl"
LOOPBACK4 = "127.0.0.1"
LOOPBACK6 = "::1"
TLS_NAME = "upstream.test"

EXIT_PASS, EXIT_FAIL, EXIT_SKIP = 0, 1, 77


class CaseFailure(Exception):
    """A behaviour the case asserts did not hold."""


class CaseSkip(Exception):
    """The machine cannot run this case (e.g. no IPv6 loopback)."""


def check(cond, msg):
    if not cond:
        raise CaseFailure(msg)


# --------------------------------------------------------------------------
# Child processes: every process we start is registered here and killed by PID
# on exit, whatever happens.

_children = []  # subprocess.Popen
_tempdirs = []


def _cleanup():
    for p in list(_children):
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=3)
            except Exception:
                pass
    _children.clear()
    for d in list(_tempdirs):
        shutil.rmtree(d, ignore_errors=True)
    _tempdirs.clear()


atexit.register(_cleanup)


def _on_signal(signum, _frame):
    # meson sends SIGTERM on timeout: turn it into an exception so finally
    # blocks and atexit run.
    raise SystemExit(128 + signum)


def child_env():
    # DOTPROXY_LISTEN / DOTPROXY_UPSTREAMS would override the config; our flags
    # win anyway, but keep the children's view of the world to what we pass.
    # The harness's own settings (DOTPROXY_E2E_*) are read from os.environ and
    # go the same way: a child never sees them.
    return {k: v for k, v in os.environ.items() if not k.startswith("DOTPROXY_")}


# --------------------------------------------------------------------------
# I/O backend. meson registers every case twice: as is (dotproxy picks its
# backend, io_uring here) and with DOTPROXY_E2E_IO_BACKEND=epoll (suite
# e2e_epoll). Every dotproxy a case starts to serve gets `--io-backend VALUE`
# from io_backend_args(); runs that stop at --check-config, --help or
# --version need not. Unset or empty: no flag, exactly as before the variable
# existed. The variable is a harness setting, never forwarded (child_env).

IO_BACKEND_ENV = "DOTPROXY_E2E_IO_BACKEND"
IO_BACKENDS = ("auto", "uring", "epoll")
FROM_ENV = "<from %s>" % IO_BACKEND_ENV  # io_backend_args(): use the variable


def io_backend():
    """The backend DOTPROXY_E2E_IO_BACKEND names, or "" when it is unset/empty."""
    value = os.environ.get(IO_BACKEND_ENV, "").strip()
    if value and value not in IO_BACKENDS:
        raise RuntimeError("%s=%r: want one of %s (or unset)" % (
            IO_BACKEND_ENV, value, ", ".join(IO_BACKENDS)))
    return value


def io_backend_args(backend=FROM_ENV):
    """["--io-backend", B] for B = `backend`, or the variable's value by
    default; [] when that is "" or None (dotproxy's own default)."""
    if backend == FROM_ENV:
        backend = io_backend()
    return ["--io-backend", backend] if backend else []


def announce_io_backend():
    """One stdout line saying which backend the cases force (meson's log)."""
    if io_backend():
        print("io backend: every dotproxy started with --io-backend %s (%s)" % (
            io_backend(), IO_BACKEND_ENV))


def spawn(argv, stdout, stderr):
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                         env=child_env())
    _children.append(p)
    return p


def stop_process(p, sig=signal.SIGTERM, grace=3.0):
    """Signal p by PID; SIGKILL after `grace` s. Returns (returncode, seconds to exit)."""
    if p.poll() is not None:
        return p.returncode, 0.0
    t0 = time.monotonic()
    os.kill(p.pid, sig)
    try:
        rc = p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        rc = p.wait(timeout=5)
    if p in _children:
        _children.remove(p)
    return rc, time.monotonic() - t0


def run_cmd(argv, timeout=10.0, env_extra=None):
    """Run a short-lived command (with `env_extra` added to the scrubbed
    environment); a hang is killed and reported as rc None."""
    env = child_env()
    env.update(env_extra or {})
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    _children.append(p)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=5)
        rc = None
    finally:
        if p in _children:
            _children.remove(p)
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


_PORTS_GIVEN = set()


def free_port(host=LOOPBACK4):
    """A port free for both TCP and UDP on host (bind port 0, then claim UDP
    too), and not one this process was given before: the kernel may hand
    out the same ephemeral port to two binds in a row once the first socket
    is closed (CI saw one Unbound get the same port for DoT and plain DNS)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        t = socket.socket(fam, socket.SOCK_STREAM)
        u = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            t.bind((host, 0))
            port = t.getsockname()[1]
            if port in _PORTS_GIVEN:
                continue
            u.bind((host, port))
            _PORTS_GIVEN.add(port)
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free TCP+UDP port found on " + host)


def tail(path, n=80):
    try:
        with open(path, "r", errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        return "<cannot read %s: %s>" % (path, e)
    return "".join(lines[-n:])


# --------------------------------------------------------------------------
# Test PKI


class Pki:
    """CA + server cert (SAN DNS:upstream.test, IP:127.0.0.1), an untrusted CA with
    an identically named server cert, and a trusted cert lacking the IP SAN."""

    def __init__(self, d):
        self.dir = d
        self.ca_pem = self._ca("ca", "dotproxy e2e test CA")
        self.good_key, self.good_pem = self._leaf(
            "good", "ca", "DNS:%s,IP:127.0.0.1" % TLS_NAME)
        self.noip_key, self.noip_pem = self._leaf("noip", "ca", "DNS:%s" % TLS_NAME)
        self.evil_ca_pem = self._ca("evilca", "dotproxy e2e untrusted CA")
        self.evil_key, self.evil_pem = self._leaf(
            "evil", "evilca", "DNS:%s,IP:127.0.0.1" % TLS_NAME)

    def _p(self, name):
        return os.path.join(self.dir, name)

    def _openssl(self, *args):
        rc, out, err = run_cmd([OPENSSL] + list(args), timeout=30)
        if rc != 0:
            raise RuntimeError("openssl %s failed: %s%s" % (" ".join(args), out, err))

    def _ca(self, name, cn):
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-nodes", "-keyout", self._p(name + ".key"), "-out", self._p(name + ".pem"),
                      "-days", "3", "-subj", "/CN=" + cn,
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return self._p(name + ".pem")

    def _leaf(self, name, ca, san):
        ext = self._p(name + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n" % san)
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-keyout", self._p(name + ".key"), "-out", self._p(name + ".csr"),
                      "-subj", "/CN=" + TLS_NAME)
        self._openssl("x509", "-req", "-in", self._p(name + ".csr"), "-CA", self._p(ca + ".pem"),
                      "-CAkey", self._p(ca + ".key"), "-CAcreateserial",
                      "-out", self._p(name + ".pem"), "-days", "3", "-extfile", ext)
        return self._p(name + ".key"), self._p(name + ".pem")

    def spki_pin(self, cert_pem):
        """base64(SHA-256(SubjectPublicKeyInfo DER)), RFC 7469 / RFC 7858 pin."""
        import base64
        import hashlib
        rc, out, err = run_cmd([OPENSSL, "x509", "-in", cert_pem, "-noout", "-pubkey"])
        if rc != 0:
            raise RuntimeError("openssl x509 -pubkey: %s" % err)
        b64 = "".join(l for l in out.splitlines() if not l.startswith("-----"))
        return base64.b64encode(hashlib.sha256(base64.b64decode(b64)).digest()).decode()

    def client_context(self, cafile=None):
        ctx = ssl.create_default_context(cafile=cafile or self.ca_pem)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


# --------------------------------------------------------------------------
# Unbound: the DoT upstream

# Test data. big.example.test is > 1232 bytes (so it truncates without EDNS and
# at EDNS 1232) but < 3000; mid.example.test is between 512 and 1232 bytes.
BIG_TXT = ["big-%02d-%s" % (i, "x" * 44) for i in range(24)]
MID_TXT = ["mid-%02d-%s" % (i, "y" * 44) for i in range(11)]

ZONE_DATA = [
    'a.example.test. 300 IN A 192.0.2.1',
    'a.example.test. 300 IN AAAA 2001:db8::1',
    'txt.example.test. 300 IN TXT "hello from the e2e upstream"',
    'multi.example.test. 300 IN A 192.0.2.10',
    'multi.example.test. 300 IN A 192.0.2.11',
    'multi.example.test. 300 IN A 192.0.2.12',
    'short.example.test. 5 IN A 192.0.2.5',
    'example.test. 3600 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60',
    'example.test. 3600 IN NS ns.example.test.',
] + ['big.example.test. 300 IN TXT "%s"' % t for t in BIG_TXT] \
  + ['mid.example.test. 300 IN TXT "%s"' % t for t in MID_TXT]

# Names a case can query, with the type; the expected data is whatever Unbound says.
GOOD_QUESTIONS = [
    ("a.example.test.", "A"),
    ("a.example.test.", "AAAA"),
    ("txt.example.test.", "TXT"),
    ("multi.example.test.", "A"),
    ("nonexistent.example.test.", "A"),      # NXDOMAIN + SOA
    ("a.example.test.", "MX"),                # NODATA + SOA
    ("nowhere.test.", "A"),                   # NXDOMAIN from the "." static zone
]


class Unbound:
    def __init__(self, workdir, pki, cert="good"):
        self.dir = workdir
        self.pki = pki
        self.dot_port = free_port()
        self.plain_port = free_port()
        key, pem = {"good": (pki.good_key, pki.good_pem),
                    "noip": (pki.noip_key, pki.noip_pem),
                    "evil": (pki.evil_key, pki.evil_pem)}[cert]
        self.conf = os.path.join(workdir, "unbound.conf")
        self.log = os.path.join(workdir, "unbound.log")
        lines = [
            "server:",
            "  verbosity: 1",
            "  num-threads: 1",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            '  directory: "%s"' % workdir,
            '  pidfile: "%s"' % os.path.join(workdir, "unbound.pid"),
            "  use-syslog: no",
            '  logfile: ""',
            "  do-ip4: yes",
            "  do-ip6: no",
            "  do-udp: yes",
            "  do-tcp: yes",
            "  interface: 127.0.0.1@%d" % self.dot_port,
            "  interface: 127.0.0.1@%d" % self.plain_port,
            "  tls-port: %d" % self.dot_port,
            '  tls-service-key: "%s"' % key,
            '  tls-service-pem: "%s"' % pem,
            # Never talk to anything but loopback, and never need to.
            "  outgoing-interface: 127.0.0.1",
            "  access-control: 127.0.0.0/8 allow",
            '  module-config: "iterator"',
            "  incoming-num-tcp: 128",
            "  tcp-idle-timeout: 120000",
            "  minimal-responses: yes",
            "  qname-minimisation: no",
            '  local-zone: "." static',
            '  local-zone: "example.test." static',
        ] + ["  local-data: '%s'" % rr for rr in ZONE_DATA] + [
            "remote-control:",
            "  control-enable: no",
            "",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines))
        self.proc = None
        self._logf = None

    def start(self, timeout=10.0):
        check_conf = run_cmd(["/usr/sbin/unbound-checkconf", self.conf], timeout=10)
        if check_conf[0] != 0:
            raise RuntimeError("unbound-checkconf failed: %s%s" % (check_conf[1], check_conf[2]))
        self._logf = open(self.log, "ab")
        self.proc = spawn([UNBOUND, "-d", "-c", self.conf], self._logf, self._logf)
        deadline = time.monotonic() + timeout
        q = dns.message.make_query("a.example.test.", "A")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("unbound exited rc=%s:\n%s" % (self.proc.returncode, tail(self.log)))
            try:
                r = dns.query.udp(q, LOOPBACK4, port=self.plain_port, timeout=0.3)
                if r.rcode() == dns.rcode.NOERROR and r.answer:
                    # The DoT port must be up too (its socket is opened at the
                    # same time, but check the handshake once, bounded).
                    self._probe_tls(deadline)
                    return
            except (dns.exception.Timeout, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError("unbound not ready within %.0f s:\n%s" % (timeout, tail(self.log)))

    def _probe_tls(self, deadline):
        # With the evil/noip certs, verify against the cert's own CA and name.
        ctx = ssl.create_default_context(cafile=self.pki.ca_pem)
        ctx.load_verify_locations(cafile=self.pki.evil_ca_pem)
        last = None
        while time.monotonic() < deadline:
            try:
                dns.query.tls(dns.message.make_query("a.example.test.", "A"), LOOPBACK4,
                              port=self.dot_port, timeout=1.0, ssl_context=ctx,
                              server_hostname=TLS_NAME)
                return
            except Exception as e:  # noqa: BLE001 - reported below
                last = e
                time.sleep(0.1)
        raise RuntimeError("unbound DoT port %d not answering: %r" % (self.dot_port, last))

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self._logf is not None:
            self._logf.close()
            self._logf = None

    def reference(self, qname, qtype):
        """The upstream's own answer, fetched over DoT with the test CA."""
        q = dns.message.make_query(qname, qtype, use_edns=0, payload=4096)
        return dns.query.tls(q, LOOPBACK4, port=self.dot_port, timeout=3.0,
                             ssl_context=self.pki.client_context(), server_hostname=TLS_NAME)


# --------------------------------------------------------------------------
# A DoT "upstream" that completes the TLS handshake and then never answers.


def open_tls_listener(pki, backlog=16):
    """The base of every fake DoT upstream: a loopback TCP listener (0.2 s
    accept timeout, so accept loops notice stop()) on a free port, and a
    server TLS context with the trusted test certificate. Returns
    (port, context, listening socket)."""
    port = free_port()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.good_pem, pki.good_key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK4, port))
    sock.listen(backlog)
    sock.settimeout(0.2)
    return port, ctx, sock


def tls_accept(ctx, c, addr, note):
    """Server-side TLS handshake on an accepted socket (5 s budget). Returns
    the TLS socket, or None after noting the failure and closing `c`."""
    try:
        c.settimeout(5.0)
        return ctx.wrap_socket(c, server_side=True)
    except (ssl.SSLError, OSError) as e:
        note("handshake with %s:%d failed: %r" % (addr + (e,)))
        c.close()
        return None


class SilentTlsServer:
    """Accepts DoT connections, completes each TLS handshake in its own thread
    (so one slow client cannot hold up another shard's handshake), then reads
    and discards everything. Threads end within 0.2 s of stop()."""

    def __init__(self, pki):
        self.port, self.ctx, self.sock = open_tls_listener(pki, 16)
        self.lock = threading.Lock()
        self.bytes_received = 0
        self.handshakes = 0
        self.events = []  # (monotonic time, what) for failure reports
        self._stop = threading.Event()
        self.threads = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _note(self, what):
        with self.lock:
            self.events.append((time.monotonic(), what))

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                c, addr = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self._note("accepted %s:%d" % addr)
            t = threading.Thread(target=self._serve, args=(c, addr), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, c, addr):
        s = tls_accept(self.ctx, c, addr, self._note)
        if s is None:
            return
        with self.lock:
            self.handshakes += 1
        self._note("handshake done %s:%d" % addr)
        s.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    data = s.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
                if not data:
                    self._note("closed by %s:%d" % addr)
                    return
                with self.lock:
                    self.bytes_received += len(data)
        except (ssl.SSLError, OSError) as e:
            self._note("error from %s:%d: %r" % (addr + (e,)))
        finally:
            s.close()

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=3)
        for t in self.threads:
            t.join(timeout=3)
        self.sock.close()


# --------------------------------------------------------------------------
# DNS wire helpers


def question_end(wire):
    """Offset just past the first question (qname + qtype + qclass); no compression
    expected in queries we build ourselves."""
    off = 12
    for _ in range(128):
        n = wire[off]
        if n == 0:
            return off + 1 + 4
        off += 1 + n
    raise ValueError("qname too long")


def make_query(qname, qtype="A", qid=None, edns=None, payload=1232, rd=True):
    q = dns.message.make_query(qname, qtype, use_edns=edns, payload=payload)
    q.id = random.randrange(0, 65536) if qid is None else qid
    if not rd:
        q.flags &= ~dns.flags.RD
    return q


def udp_exchange(port, wire, timeout=2.0, host=LOOPBACK4, expect_id=None):
    """Send one datagram, return (response bytes, seconds) or (None, seconds).
    Datagrams with another ID than expect_id (default: the query's) are skipped."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    want = expect_id if expect_id is not None else (wire[:2] if len(wire) >= 2 else None)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.connect((host, port))
        t0 = time.monotonic()
        s.send(wire)
        deadline = t0 + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, time.monotonic() - t0
            s.settimeout(left)
            try:
                data = s.recv(65535)
            except socket.timeout:
                return None, time.monotonic() - t0
            except ConnectionRefusedError:
                # ICMP port unreachable: the proxy is not listening.
                return None, time.monotonic() - t0
            if want is None or data[:2] == want:
                return data, time.monotonic() - t0
    finally:
        s.close()


def recv_exact(s, n, deadline):
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out after %d of %d bytes" % (len(buf), n))
        s.settimeout(left)
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def tcp_read_msg(s, deadline):
    (ln,) = struct.unpack("!H", recv_exact(s, 2, deadline))
    return recv_exact(s, ln, deadline)


def tcp_connect(port, host=LOOPBACK4, timeout=2.0):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def tcp_exchange(port, wire, timeout=2.0, host=LOOPBACK4):
    """One query on a fresh TCP connection; returns (response bytes, seconds)."""
    s = tcp_connect(port, host, timeout)
    try:
        t0 = time.monotonic()
        s.sendall(struct.pack("!H", len(wire)) + wire)
        data = tcp_read_msg(s, t0 + timeout)
        return data, time.monotonic() - t0
    finally:
        s.close()


def describe(wire):
    if wire is None:
        return "<no response>"
    try:
        return dns.message.from_wire(wire).to_text()
    except Exception as e:  # noqa: BLE001
        return "<unparseable %d bytes (%s): %s>" % (len(wire), e, wire[:64].hex())


def rrset_key(rrset):
    # Canonical (RFC 4034 6.2) rdata: names inside SOA/NS/... compare without
    # case, since a 0x20-preserving proxy may compress them against the
    # client's question spelling.
    return (rrset.name.canonicalize(), rrset.rdclass, rrset.rdtype,
            tuple(sorted(r.to_digestable() for r in rrset)))


def section_keys(section):
    return sorted((rrset_key(r) for r in section if r.rdtype != dns.rdatatype.OPT), key=repr)


def check_same_answer(what, wire, query_wire, ref):
    """The proxy's response `wire` to `query_wire` must carry the upstream's
    answer `ref`: rcode, answer and authority records equal, TTLs not above the
    upstream's, the client's ID and question bytes echoed exactly."""
    check(wire is not None, "%s: no response" % what)
    check(len(wire) >= 12, "%s: response of %d bytes" % (what, len(wire)))
    check(wire[:2] == query_wire[:2], "%s: ID %s != query ID %s" % (
        what, wire[:2].hex(), query_wire[:2].hex()))
    qend = question_end(query_wire)
    check(wire[12:qend] == query_wire[12:qend],
          "%s: question not echoed exactly: sent %r got %r" % (what, query_wire[12:qend], wire[12:qend]))
    try:
        msg = dns.message.from_wire(wire)
    except Exception as e:  # noqa: BLE001
        raise CaseFailure("%s: response does not parse: %s (%s)" % (what, e, wire.hex()))
    check(msg.flags & dns.flags.QR, "%s: QR not set" % what)
    check(not msg.flags & dns.flags.TC, "%s: unexpected TC=1:\n%s" % (what, msg.to_text()))
    check(msg.opcode() == dns.opcode.QUERY, "%s: opcode %s" % (what, msg.opcode()))
    check(len(msg.question) == 1, "%s: %d questions" % (what, len(msg.question)))
    check(msg.rcode() == ref.rcode(), "%s: rcode %s, upstream said %s\nproxy:\n%s" % (
        what, dns.rcode.to_text(msg.rcode()), dns.rcode.to_text(ref.rcode()), msg.to_text()))
    for sec in ("answer", "authority"):
        got, want = section_keys(getattr(msg, sec)), section_keys(getattr(ref, sec))
        check(got == want, "%s: %s section differs\nproxy:\n%s\nupstream:\n%s" % (
            what, sec, msg.to_text(), ref.to_text()))
        ref_ttl = {rrset_key(r): r.ttl for r in getattr(ref, sec)}
        for r in getattr(msg, sec):
            if r.rdtype == dns.rdatatype.OPT:
                continue
            check(r.ttl <= ref_ttl[rrset_key(r)], "%s: TTL %d above upstream's %d for %s" % (
                what, r.ttl, ref_ttl[rrset_key(r)], r.name))
    q_rd = bool(struct.unpack("!H", query_wire[2:4])[0] & dns.flags.RD)
    check(bool(msg.flags & dns.flags.RD) == q_rd, "%s: RD not echoed" % what)
    # RFC 6891 7: OPT in the response iff the query had one.
    q_edns = dns.message.from_wire(query_wire).edns >= 0
    check((msg.edns >= 0) == q_edns, "%s: query %s OPT but response %s:\n%s" % (
        what, "has" if q_edns else "has no", "has" if msg.edns >= 0 else "has none", msg.to_text()))
    return msg


def parse_or_fail(what, wire):
    check(wire is not None, "%s: no response" % what)
    try:
        return dns.message.from_wire(wire)
    except Exception as e:  # noqa: BLE001
        raise CaseFailure("%s: response does not parse: %s (%d bytes: %s)" % (
            what, e, len(wire), wire[:80].hex()))


def rcode_of(wire):
    """Rcode from the header (works on messages dnspython refuses to parse)."""
    return wire[3] & 0x0F


# --------------------------------------------------------------------------
# dotproxy


class Proxy:
    """dotproxy `exe` with `args`, run through `prefix` if given (a wrapper
    such as deny_io_uring: argv = prefix + [exe] + args)."""

    def __init__(self, exe, workdir, args, name="dotproxy", prefix=()):
        self.exe = exe
        self.args = args
        self.prefix = list(prefix)
        self.stderr_path = os.path.join(workdir, name + ".stderr")
        self.stdout_path = os.path.join(workdir, name + ".stdout")
        self._err = open(self.stderr_path, "ab")
        self._out = open(self.stdout_path, "ab")
        self.proc = spawn(self.prefix + [exe] + args, self._out, self._err)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, grace=3.0):
        rc, secs = stop_process(self.proc, sig, grace)
        self._err.close()
        self._out.close()
        return rc, secs

    def stderr_text(self):
        return tail(self.stderr_path, 120)


class Harness:
    def __init__(self, exe, keep=False):
        self.exe = os.path.abspath(exe) if exe else None
        self.dir = tempfile.mkdtemp(prefix="dotproxy-e2e-")
        if not keep:
            _tempdirs.append(self.dir)
        self._pki = None
        self.unbounds = []
        self.proxies = []
        self.silent = []

    @property
    def pki(self):
        if self._pki is None:
            d = os.path.join(self.dir, "pki")
            os.mkdir(d)
            self._pki = Pki(d)
        return self._pki

    def need_exe(self):
        if not self.exe or not os.access(self.exe, os.X_OK):
            raise CaseFailure("dotproxy binary not found or not executable: %s" % self.exe)
        return self.exe

    def start_unbound(self, cert="good"):
        d = os.path.join(self.dir, "unbound%d" % len(self.unbounds))
        os.mkdir(d)
        u = Unbound(d, self.pki, cert)
        self.unbounds.append(u)
        u.start()
        return u

    def start_silent_upstream(self):
        s = SilentTlsServer(self.pki)
        self.silent.append(s)
        return s

    def base_args(self, port, upstreams, threads=2, default_cache=False, io_backend=FROM_ENV):
        """The cache is on by default in dotproxy; cases about upstream
        behaviour turn it off (--cache-size 0) unless `default_cache`, so a
        cached answer cannot hide what the upstream did. Cases about the
        cache pass their own --cache-size after these (the last one wins).
        Ends with io_backend_args(io_backend): `--io-backend epoll` in the
        e2e_epoll suite, nothing otherwise."""
        args = ["--listen", "%s:%d" % (LOOPBACK4, port)]
        for up in upstreams:
            args += ["--upstream", up]
        args += ["--ca-file", self.pki.ca_pem, "--threads", str(threads)]
        if not default_cache:
            args += ["--cache-size", "0"]
        return args + io_backend_args(io_backend)

    def start_proxy(self, upstream=None, upstreams=None, extra=(), ready="answer",
                    listen_args=None, port=None, ready_timeout=10.0, default_cache=False,
                    io_backend=FROM_ENV, prefix=()):
        """Start dotproxy against `upstream` (an Unbound; #upstream.test) or the
        explicit `upstreams` strings. ready: "answer" waits for a correct NOERROR
        answer, "any" for any response (bad-upstream cases), None for nothing.
        io_backend: see base_args; prefix: a wrapper to run it under (Proxy)."""
        exe = self.need_exe()
        self.proxy_port = port or free_port()
        if upstreams is None:
            upstreams = ["%s:%d#%s" % (LOOPBACK4, upstream.dot_port, TLS_NAME)]
        args = self.base_args(self.proxy_port, upstreams, default_cache=default_cache,
                              io_backend=io_backend)
        if listen_args is not None:
            args = listen_args + args[2:]
        args += list(extra)
        p = Proxy(exe, self.dir, args, "dotproxy%d" % len(self.proxies), prefix=prefix)
        p.port = self.proxy_port
        self.proxies.append(p)
        if ready:
            self.wait_ready(p, ready, ready_timeout)
        return p

    def wait_ready(self, p, mode, timeout, host=LOOPBACK4, port=None):
        port = port or p.port
        deadline = time.monotonic() + timeout
        last = None
        for _ in range(1000):
            if time.monotonic() >= deadline:
                break
            check(p.alive(), "dotproxy exited (rc=%s) during startup" % p.proc.returncode)
            q = make_query("a.example.test.", "A").to_wire()
            # "any" waits out a SERVFAIL that only comes at the query deadline.
            wire, _ = udp_exchange(port, q, timeout=0.5 if mode == "answer" else 3.0, host=host)
            if wire is not None:
                last = wire
                if mode == "any":
                    return wire
                if rcode_of(wire) == dns.rcode.NOERROR and struct.unpack("!H", wire[6:8])[0] > 0:
                    return wire
            time.sleep(0.1)
        raise CaseFailure("dotproxy not ready within %.0f s (mode %s); last response: %s" % (
            timeout, mode, describe(last)))

    def report(self):
        out = []
        for i, p in enumerate(self.proxies):
            out.append("---- dotproxy%d %s\n---- exit: %s\n---- stderr (tail):\n%s" % (
                i, " ".join((p.prefix + [p.exe] if getattr(p, "prefix", None) else []) + p.args),
                p.proc.returncode, p.stderr_text()))
        for i, u in enumerate(self.unbounds):
            out.append("---- unbound%d log (tail):\n%s" % (i, tail(u.log, 30)))
        return "\n".join(out)

    def close(self):
        for p in self.proxies:
            if p.proc.poll() is None:
                p.stop(signal.SIGKILL)
        for s in self.silent:
            s.stop()
        for u in self.unbounds:
            u.stop()


# --------------------------------------------------------------------------
# Cases

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def query_and_compare(h, u, p, transport, qname, qtype, edns=None, qid=None):
    q = make_query(qname, qtype, qid=qid, edns=edns)
    wire = q.to_wire()
    if transport == "udp":
        resp, _ = udp_exchange(p.port, wire)
    else:
        resp, _ = tcp_exchange(p.port, wire)
    ref = u.reference(qname, qtype)
    return check_same_answer("%s %s %s id=%d" % (transport.upper(), qname, qtype, q.id), resp, wire, ref)


@case
def udp_answers(h):
    """UDP answers equal the upstream's: A, AAAA, TXT, multi-record A, NXDOMAIN,
    NODATA; ID (including 0 and 0xffff) and question bytes echoed."""
    u = h.start_unbound()
    p = h.start_proxy(u)
    ids = [0, 0xFFFF, 0x1234] + [None] * (len(GOOD_QUESTIONS) - 3)
    for (qname, qtype), qid in zip(GOOD_QUESTIONS, ids):
        query_and_compare(h, u, p, "udp", qname, qtype, qid=qid)
        query_and_compare(h, u, p, "udp", qname, qtype, edns=0)


@case
def tcp_answers(h):
    """TCP answers equal the upstream's, on fresh connections and sequentially on
    one kept-open connection."""
    u = h.start_unbound()
    p = h.start_proxy(u)
    for qname, qtype in GOOD_QUESTIONS:
        query_and_compare(h, u, p, "tcp", qname, qtype)
        query_and_compare(h, u, p, "tcp", qname, qtype, edns=0)
    s = tcp_connect(p.port)
    try:
        for qname, qtype in GOOD_QUESTIONS * 2:
            q = make_query(qname, qtype)
            wire = q.to_wire()
            s.sendall(struct.pack("!H", len(wire)) + wire)
            resp = tcp_read_msg(s, time.monotonic() + 2.0)
            check_same_answer("TCP (reused conn) %s %s" % (qname, qtype), resp, wire,
                              u.reference(qname, qtype))
    finally:
        s.close()


@case
def udp_truncation(h):
    """UDP responses larger than the client's limit (512 without EDNS, else the
    advertised size, at most --max-udp-size 1232) come back TC=1, valid, question echoed; those that fit come
    back whole."""
    u = h.start_unbound()
    p = h.start_proxy(u)
    ref_big = u.reference("big.example.test.", "TXT")
    ref_mid = u.reference("mid.example.test.", "TXT")
    check(len(ref_big.to_wire()) > 1232, "test data: big answer only %d bytes" % len(ref_big.to_wire()))
    check(512 < len(ref_mid.to_wire()) < 1232, "test data: mid answer %d bytes" % len(ref_mid.to_wire()))

    def expect_tc(qname, edns, payload, limit):
        q = make_query(qname, "TXT", edns=edns, payload=payload)
        wire = q.to_wire()
        what = "UDP %s edns=%s payload=%s" % (qname, edns, payload)
        resp, _ = udp_exchange(p.port, wire)
        msg = parse_or_fail(what, resp)
        check(len(resp) <= limit, "%s: %d-byte response exceeds client limit %d" % (what, len(resp), limit))
        check(msg.flags & dns.flags.TC, "%s: TC not set on %d-byte response:\n%s" % (
            what, len(resp), msg.to_text()))
        check(msg.flags & dns.flags.QR, "%s: QR not set" % what)
        check(resp[:2] == wire[:2], "%s: ID not echoed" % what)
        qend = question_end(wire)
        check(struct.unpack("!H", resp[4:6])[0] == 1, "%s: QDCOUNT != 1" % what)
        check(resp[12:qend] == wire[12:qend], "%s: question not echoed: %r vs %r" % (
            what, resp[12:qend], wire[12:qend]))
        check(msg.rcode() == dns.rcode.NOERROR, "%s: rcode %s" % (what, dns.rcode.to_text(msg.rcode())))

    def expect_full(qname, edns, payload, ref):
        q = make_query(qname, "TXT", edns=edns, payload=payload)
        wire = q.to_wire()
        resp, _ = udp_exchange(p.port, wire)
        check_same_answer("UDP %s edns=%s payload=%s" % (qname, edns, payload), resp, wire, ref)
        check(len(resp) <= max(payload, 512), "UDP %s: %d bytes > payload %d" % (qname, len(resp), payload))

    expect_tc("big.example.test.", None, 0, 512)
    expect_tc("mid.example.test.", None, 0, 512)
    expect_tc("big.example.test.", 0, 1232, 1232)
    expect_tc("big.example.test.", 0, 800, 800)
    expect_full("mid.example.test.", 0, 1232, ref_mid)
    # EDNS 4096 is capped by --max-udp-size (1232 by default): TC=1. The
    # whole answer over UDP with --max-udp-size 4096: protect_udp_size_cap.
    expect_tc("big.example.test.", 0, 4096, 1232)
    # A small answer is never truncated.
    query_and_compare(h, u, p, "udp", "a.example.test.", "A")


@case
def tcp_large(h):
    """Over TCP the full large answer comes back (with and without EDNS)."""
    u = h.start_unbound()
    p = h.start_proxy(u)
    for qname in ("big.example.test.", "mid.example.test."):
        for edns in (None, 0):
            msg = query_and_compare(h, u, p, "tcp", qname, "TXT", edns=edns)
            want = BIG_TXT if qname.startswith("big") else MID_TXT
            got = sorted(b"".join(r.strings).decode() for rr in msg.answer for r in rr)
            check(got == sorted(want), "TCP %s: TXT strings differ" % qname)


@case
def case_0x20(h):
    """Mixed-case qnames are echoed byte for byte, over UDP and TCP, including on
    a repeat of the same name in another case (cache hit path)."""
    u = h.start_unbound()
    p = h.start_proxy(u)
    spellings = ["a.ExAmPlE.TeSt.", "A.EXAMPLE.test.", "a.eXaMpLe.tEsT.", "A.example.TEST."]
    for transport in ("udp", "tcp"):
        for sp in spellings:
            for qtype in ("A", "AAAA"):
                q = make_query(sp, qtype)
                wire = q.to_wire()
                check(sp.split(".")[1].encode() in wire, "harness: case not preserved in query")
                resp, _ = (udp_exchange if transport == "udp" else tcp_exchange)(p.port, wire)
                check_same_answer("%s %s %s" % (transport.upper(), sp, qtype), resp, wire,
                                  u.reference("a.example.test.", qtype))
    # NXDOMAIN with mixed case, too.
    q = make_query("NoSuCh.ExAmple.TEST.", "A")
    wire = q.to_wire()
    resp, _ = udp_exchange(p.port, wire)
    check_same_answer("UDP NoSuCh.ExAmple.TEST.", resp, wire, u.reference("nosuch.example.test.", "A"))


@case
def tcp_pipelined(h):
    """200 queries written back to back on one TCP connection before reading:
    all answered (any order), each with its own ID and the right data."""
    u = h.start_unbound()
    p = h.start_proxy(u)
    refs = {(n, t): u.reference(n, t) for n, t in GOOD_QUESTIONS}
    ids = random.sample(range(65536), 200)
    pending = {}
    blob = b""
    for i, qid in enumerate(ids):
        n, t = GOOD_QUESTIONS[i % len(GOOD_QUESTIONS)]
        wire = make_query(n, t, qid=qid).to_wire()
        pending[qid] = (n, t, wire)
        blob += struct.pack("!H", len(wire)) + wire
    s = tcp_connect(p.port)
    try:
        s.sendall(blob)
        deadline = time.monotonic() + 15.0
        got = 0
        for _ in range(len(ids)):
            try:
                resp = tcp_read_msg(s, deadline)
            except (socket.timeout, EOFError, OSError) as e:
                raise CaseFailure("pipelined: %d of %d answered, then %r; missing IDs %s" % (
                    got, len(ids), e, sorted(pending)[:20]))
            qid = struct.unpack("!H", resp[:2])[0]
            check(qid in pending, "pipelined: response with unknown or duplicate ID %d" % qid)
            n, t, wire = pending.pop(qid)
            check_same_answer("pipelined %s %s id=%d" % (n, t, qid), resp, wire, refs[(n, t)])
            got += 1
    finally:
        s.close()
    check(not pending, "pipelined: unanswered IDs %s" % sorted(pending))


def udp_udp_snmp():
    """(InErrors, RcvbufErrors) from /proc/net/snmp, for diagnosing drops."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [l.split() for l in f if l.startswith("Udp:")]
        hdr, vals = rows[0], rows[1]
        d = dict(zip(hdr[1:], map(int, vals[1:])))
        return d.get("InErrors"), d.get("RcvbufErrors")
    except Exception:  # noqa: BLE001
        return None, None


@case
def udp_concurrent(h):
    """500 UDP queries in flight at once from 5 sockets, unique IDs: all answered
    with their own IDs and the right data."""
    u = h.start_unbound()
    p = h.start_proxy(u)
    refs = {(n, t): u.reference(n, t) for n, t in GOOD_QUESTIONS}
    n_socks, total = 5, 500
    socks = []
    for _ in range(n_socks):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.connect((LOOPBACK4, p.port))
        s.setblocking(False)
        socks.append(s)
    ids = random.sample(range(65536), total)
    pending = {}
    snmp0 = udp_udp_snmp()
    try:
        # All 500 are sent before any answer is read, so all are outstanding
        # at once. Sends go in bursts of 50 every 5 ms (about 10k queries/s)
        # so the test measures the proxy, not how many datagrams a kernel
        # socket buffer holds when 500 arrive within a few microseconds.
        for i, qid in enumerate(ids):
            n, t = GOOD_QUESTIONS[i % len(GOOD_QUESTIONS)]
            wire = make_query(n, t, qid=qid).to_wire()
            sidx = i % n_socks
            pending[qid] = (n, t, wire, sidx)
            socks[sidx].send(wire)
            if i % 50 == 49:
                time.sleep(0.005)
        answered = 0
        deadline = time.monotonic() + 15.0
        for _ in range(100000):
            if not pending or time.monotonic() >= deadline:
                break
            r, _, _ = select.select(socks, [], [], max(0.0, deadline - time.monotonic()))
            for s in r:
                for _ in range(1000):
                    try:
                        resp = s.recv(65535)
                    except BlockingIOError:
                        break
                    qid = struct.unpack("!H", resp[:2])[0]
                    check(qid in pending, "concurrent: unknown or duplicate ID %d" % qid)
                    n, t, wire, sidx = pending.pop(qid)
                    check(socks[sidx] is s, "concurrent: ID %d answered to another socket" % qid)
                    check_same_answer("concurrent %s %s id=%d" % (n, t, qid), resp, wire, refs[(n, t)])
                    answered += 1
    finally:
        for s in socks:
            s.close()
    snmp1 = udp_udp_snmp()
    check(not pending, "concurrent: %d of %d answered within 15 s; %d missing (e.g. %s). "
          "Host UDP InErrors/RcvbufErrors before %s after %s" % (
              answered, total, len(pending), sorted(pending)[:10], snmp0, snmp1))


def expect_servfail_only(h, p, rounds=5, what=""):
    """Every query gets SERVFAIL with no records; never the upstream's data."""
    for i in range(rounds):
        for transport, fn in (("udp", udp_exchange), ("tcp", tcp_exchange)):
            q = make_query("a.example.test.", "A")
            wire = q.to_wire()
            try:
                resp, secs = fn(p.port, wire, timeout=5.0)
            except (socket.timeout, EOFError, OSError) as e:
                raise CaseFailure("%s %s: no response (%r)" % (what, transport, e))
            msg = parse_or_fail("%s %s" % (what, transport), resp)
            check(resp[:2] == wire[:2], "%s: ID not echoed" % what)
            check(msg.rcode() == dns.rcode.SERVFAIL, "%s %s: expected SERVFAIL, got %s:\n%s" % (
                what, transport, dns.rcode.to_text(msg.rcode()), msg.to_text()))
            check(not msg.answer, "%s %s: SERVFAIL carries answer records:\n%s" % (
                what, transport, msg.to_text()))
            check(b"\xc0\x00\x02\x01" not in resp, "%s: upstream's A data leaked" % what)
    check(p.alive(), "%s: dotproxy died" % what)


@case
def tls_wrong_name(h):
    """An upstream whose certificate does not match the configured name
    (#wrong.name) yields SERVFAIL, never its data."""
    u = h.start_unbound()
    p = h.start_proxy(upstreams=["%s:%d#wrong.name" % (LOOPBACK4, u.dot_port)], ready="any")
    expect_servfail_only(h, p, what="wrong name")


@case
def tls_untrusted_ca(h):
    """An upstream whose certificate is signed by a CA not in --ca-file yields
    SERVFAIL, never its data (the name and IP SANs do match)."""
    u = h.start_unbound(cert="evil")
    p = h.start_proxy(u, ready="any")
    expect_servfail_only(h, p, what="untrusted CA (with #name)")
    p.stop()
    p2 = h.start_proxy(upstreams=["%s:%d" % (LOOPBACK4, u.dot_port)], ready="any")
    expect_servfail_only(h, p2, what="untrusted CA (IP, no name)")


@case
def tls_ip_san(h):
    """An upstream given without #NAME is verified against its IP: a cert with
    IP:127.0.0.1 is accepted; a trusted cert without that IP SAN yields SERVFAIL."""
    u = h.start_unbound()
    p = h.start_proxy(upstreams=["%s:%d" % (LOOPBACK4, u.dot_port)])
    for qname, qtype in GOOD_QUESTIONS[:3]:
        query_and_compare(h, u, p, "udp", qname, qtype)
    p.stop()
    u2 = h.start_unbound(cert="noip")
    p2 = h.start_proxy(upstreams=["%s:%d" % (LOOPBACK4, u2.dot_port)], ready="any")
    expect_servfail_only(h, p2, what="cert without IP SAN, no #NAME")


@case
def tls_spki_pin(h):
    """SPKI pins (IP:PORT#NAME^PIN): the upstream's own key pin is accepted (also
    as the second of two pins); a pin of another key yields SERVFAIL even though
    the chain and name verify."""
    u = h.start_unbound()
    good, other = h.pki.spki_pin(h.pki.good_pem), h.pki.spki_pin(h.pki.evil_pem)
    check(good != other, "harness: pins equal")
    up = "%s:%d#%s" % (LOOPBACK4, u.dot_port, TLS_NAME)
    p = h.start_proxy(upstreams=[up + "^" + good])
    query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    p.stop()
    p = h.start_proxy(upstreams=[up + "^" + other + "^" + good])
    query_and_compare(h, u, p, "tcp", "a.example.test.", "AAAA")
    p.stop()
    p = h.start_proxy(upstreams=[up + "^" + other], ready="any")
    expect_servfail_only(h, p, what="wrong SPKI pin")


@case
def upstream_restart(h):
    """Killing the upstream yields SERVFAIL within the deadline (--query-timeout
    1000: under 2 s), the proxy stays up, and answers resume after the upstream
    restarts on the same port."""
    u = h.start_unbound()
    p = h.start_proxy(u, extra=["--query-timeout", "1000"])
    query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    ref = u.reference("a.example.test.", "A")
    u.stop()
    for i, name in enumerate(["txt.example.test.", "a.example.test.", "multi.example.test."]):
        for transport, fn in (("udp", udp_exchange), ("tcp", tcp_exchange)):
            q = make_query(name, "TXT" if name.startswith("txt") else "A")
            wire = q.to_wire()
            try:
                resp, secs = fn(p.port, wire, timeout=4.0)
            except (socket.timeout, EOFError, OSError) as e:
                raise CaseFailure("upstream down, %s %s: no response within 4 s (%r)" % (transport, name, e))
            msg = parse_or_fail("upstream down %s %s" % (transport, name), resp)
            check(msg.rcode() == dns.rcode.SERVFAIL, "upstream down, %s %s: expected SERVFAIL, got %s" % (
                transport, name, dns.rcode.to_text(msg.rcode())))
            check(secs < 2.0, "upstream down, %s %s: SERVFAIL after %.2f s (deadline 1 s)" % (
                transport, name, secs))
            check(resp[:2] == wire[:2], "upstream down: ID not echoed")
    check(p.alive(), "dotproxy died while the upstream was down")
    u.start()
    deadline = time.monotonic() + 15.0
    last = None
    for _ in range(200):
        if time.monotonic() >= deadline:
            break
        wire = make_query("a.example.test.", "A").to_wire()
        resp, _ = udp_exchange(p.port, wire, timeout=1.5)
        last = resp
        if resp is not None and rcode_of(resp) == dns.rcode.NOERROR:
            check_same_answer("after upstream restart", resp, wire, ref)
            break
        time.sleep(0.25)
    check(last is not None and rcode_of(last) == dns.rcode.NOERROR,
          "answers did not resume within 15 s of the upstream restart; last: %s" % describe(last))
    query_and_compare(h, u, p, "tcp", "txt.example.test.", "TXT")


@case
def upstream_silent(h):
    """An upstream that completes TLS but never answers: with --query-timeout
    1000 the client gets SERVFAIL within 2 s, the first ones at the deadline
    (~1 s). After 3 timeouts on the connection dotproxy closes it as broken;
    while it backs off before reconnecting, SERVFAIL may come at once."""
    s = h.start_silent_upstream()
    t_start = time.monotonic()
    p = h.start_proxy(upstreams=["%s:%d#%s" % (LOOPBACK4, s.port, TLS_NAME)],
                      extra=["--query-timeout", "1000"], ready="any")
    # Each query comes from a new socket, so the kernel spreads them over both
    # shards (SO_REUSEPORT); the deadline must hold on each.
    results = []
    for transport, fn in (("udp", udp_exchange), ("tcp", tcp_exchange)) * 4:
        wire = make_query("a.example.test.", "A").to_wire()
        t_sent = time.monotonic() - t_start
        try:
            resp, secs = fn(p.port, wire, timeout=4.0)
        except (socket.timeout, EOFError, OSError) as e:
            resp, secs = None, None
            results.append((transport, t_sent, None, "no response within 4 s (%r)" % e))
            continue
        rcode = None if resp is None else dns.rcode.to_text(rcode_of(resp))
        results.append((transport, t_sent, secs, rcode))
    bad = [r for r in results if r[3] != "SERVFAIL" or r[2] is None or not r[2] < 2.0]
    bad += [r for r in results[:2] if r[2] is not None and not 0.8 <= r[2]]
    events = ["  %+.3f s %s" % (t - t_start, what) for t, what in s.events]
    check(not bad, "silent upstream with --query-timeout 1000: want SERVFAIL within 2.0 s each, "
          "the first two after >= 0.8 s;\n"
          "  %s\n silent upstream events:\n%s" % (
              "\n  ".join("%s sent at %+.3f s -> %s after %s s" % (
                  t, sent, rc, "-" if secs is None else "%.2f" % secs)
                  for t, sent, secs, rc in results), "\n".join(events)))
    check(s.handshakes > 0, "dotproxy never completed a TLS handshake with the silent upstream")
    check(s.bytes_received > 0, "dotproxy never sent a query to the silent upstream")


@case
def upstream_handshake_stall(h):
    """An upstream whose TCP port accepts connections (kernel backlog) but never
    speaks TLS: with --query-timeout 1000 (connect timeout left at its default,
    longer than that) each client still gets SERVFAIL within 2 s. The query
    deadline holds while the connection is stuck in its handshake."""
    port = free_port()
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        lst.bind((LOOPBACK4, port))
        lst.listen(64)  # never accept(): the kernel completes TCP, nobody answers
        p = h.start_proxy(upstreams=["%s:%d#%s" % (LOOPBACK4, port, TLS_NAME)],
                          extra=["--query-timeout", "1000"], ready=None)
        time.sleep(0.2)
        results = []
        for transport, fn in (("udp", udp_exchange), ("tcp", tcp_exchange)) * 3:
            wire = make_query("a.example.test.", "A").to_wire()
            try:
                resp, secs = fn(p.port, wire, timeout=5.0)
            except (socket.timeout, EOFError, OSError) as e:
                resp, secs = None, None
            rc = None if resp is None else dns.rcode.to_text(rcode_of(resp))
            results.append((transport, rc, secs))
        bad = [r for r in results if r[1] != "SERVFAIL" or r[2] is None or r[2] >= 2.0]
        check(not bad, "upstream stuck before TLS, --query-timeout 1000: want SERVFAIL < 2 s each; got\n  "
              + "\n  ".join("%s -> %s after %s" % (t, rc, "-" if secs is None else "%.2f s" % secs)
                             for t, rc, secs in results))
        check(p.alive(), "dotproxy died")
    finally:
        lst.close()


def malformed_packets():
    """(label, bytes, expectation) where expectation is 'none', 'formerr',
    'formerr_or_none', 'notimp', or 'any' (survival only)."""
    rng = random.Random(7858)
    good = make_query("a.example.test.", "A", qid=0x4242).to_wire()
    out = []
    for i in range(150):
        out.append(("random#%d" % i, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), "any"))
    for n in range(0, 12):
        out.append(("short%d" % n, good[:n], "none_or_formerr"))
    resp_bit = bytearray(good)
    resp_bit[2] |= 0x80
    out.append(("qr=1", bytes(resp_bit), "none"))
    qd0 = bytearray(good[:12])
    qd0[4:6] = b"\x00\x00"
    out.append(("qdcount=0", bytes(qd0), "formerr"))
    qd2 = bytearray(good)
    qd2[4:6] = b"\x00\x02"
    qd2 += good[12:]
    out.append(("qdcount=2", bytes(qd2), "formerr"))
    # qname is a pointer to itself, and a two-pointer loop.
    loop1 = good[:12] + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    out.append(("ptr-self-loop", loop1, "formerr_or_none"))
    loop2 = good[:12] + b"\x01a\xc0\x12" + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    out.append(("ptr-two-loop", loop2, "formerr_or_none"))
    status = bytearray(good)
    status[2] = (status[2] & 0x87) | (2 << 3)
    out.append(("opcode=STATUS", bytes(status), "notimp"))
    out.append(("truncated-question", good[:12] + good[12:20], "formerr_or_none"))
    out.append(("no-qtype", good[:question_end(good) - 4], "formerr_or_none"))
    bad_label = good[:12] + b"\x3fabc" + b"\x00\x01\x00\x01"
    out.append(("label-past-end", bad_label, "formerr_or_none"))
    return out


def check_malformed_reply(label, pkt, resp, expect):
    if expect == "any":
        return
    if expect == "none":
        check(resp is None, "%s: expected no reply, got %s" % (label, describe(resp)))
        return
    if resp is None:
        check(expect in ("formerr_or_none", "none_or_formerr"),
              "%s: expected %s, got no reply" % (label, expect))
        return
    check(len(resp) >= 12, "%s: reply of %d bytes" % (label, len(resp)))
    check(resp[:2] == pkt[:2], "%s: reply ID %s != %s" % (label, resp[:2].hex(), pkt[:2].hex()))
    check(resp[2] & 0x80, "%s: reply without QR" % label)
    want = {"formerr": dns.rcode.FORMERR, "formerr_or_none": dns.rcode.FORMERR,
            "none_or_formerr": dns.rcode.FORMERR, "notimp": dns.rcode.NOTIMP}[expect]
    check(rcode_of(resp) == want, "%s: expected rcode %s, got %s (%s)" % (
        label, dns.rcode.to_text(want), dns.rcode.to_text(rcode_of(resp)), resp.hex()))
    check(struct.unpack("!H", resp[6:8])[0] == 0, "%s: error reply carries %d answers" % (
        label, struct.unpack("!H", resp[6:8])[0]))


@case
def malformed_burst(h):
    """A burst of malformed datagrams (random bytes, short headers, QR=1,
    QDCOUNT 0/2, pointer loops, opcode STATUS, truncated questions) does not
    crash or stall the proxy; valid queries are answered afterwards."""
    u = h.start_unbound()
    p = h.start_proxy(u)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((LOOPBACK4, p.port))
        for _ in range(3):
            for _label, pkt, _e in malformed_packets():
                if pkt:
                    s.send(pkt)
            s.send(b"")  # a zero-length datagram, too
    finally:
        s.close()
    time.sleep(0.3)
    check(p.alive(), "dotproxy died after the malformed burst (rc=%s)" % p.proc.returncode)
    for qname, qtype in GOOD_QUESTIONS:
        query_and_compare(h, u, p, "udp", qname, qtype)
        query_and_compare(h, u, p, "tcp", qname, qtype)


def _malformed_case(h, labels):
    u = h.start_unbound()
    p = h.start_proxy(u)
    pkts = [m for m in malformed_packets() if m[0] in labels]
    check(len(pkts) == len(labels), "harness: unknown labels")
    problems = []
    for label, pkt, expect in pkts:
        # "No reply" is judged after 1 s (replies normally take < 10 ms); a
        # required reply gets 2 s.
        wait = 2.0 if expect in ("formerr", "notimp") else 1.0
        resp, secs = udp_exchange(p.port, pkt, timeout=wait, expect_id=pkt[:2] if len(pkt) >= 2 else None)
        try:
            check_malformed_reply("UDP " + label, pkt, resp, expect)
        except CaseFailure as e:
            msg = str(e)
            if resp is None:
                # Tell "lost once" from "never answered".
                again, secs2 = udp_exchange(p.port, pkt, timeout=wait)
                msg += "; a resend got %s after %.0f ms" % (
                    "no reply" if again is None else "rcode %s" % dns.rcode.to_text(rcode_of(again)),
                    secs2 * 1000)
            problems.append(msg)
        check(p.alive(), "dotproxy died after %s" % label)
    query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    check(not problems, "\n  ".join(["malformed queries handled wrongly:"] + problems))


@case
def malformed_qr_dropped(h):
    """A datagram with QR=1 (a response) gets no reply at all."""
    _malformed_case(h, ["qr=1"])


@case
def malformed_qdcount(h):
    """QDCOUNT=0 and QDCOUNT=2 get FORMERR with the client's ID."""
    _malformed_case(h, ["qdcount=0", "qdcount=2"])


@case
def malformed_opcode(h):
    """Opcode 2 (STATUS) gets NOTIMP with the client's ID."""
    _malformed_case(h, ["opcode=STATUS"])


@case
def malformed_names(h):
    """Compression-pointer loops, truncated questions and labels running past the
    end get FORMERR or no reply, never a crash; short headers get no reply or
    FORMERR."""
    _malformed_case(h, ["ptr-self-loop", "ptr-two-loop", "truncated-question", "no-qtype",
                        "label-past-end"] + ["short%d" % n for n in range(2, 12)])


@case
def tcp_malformed(h):
    """Malformed messages over TCP (QDCOUNT=0, pointer loop, a zero-length
    frame) get FORMERR or a closed connection; the proxy keeps answering."""
    u = h.start_unbound()
    p = h.start_proxy(u)
    cases = [m for m in malformed_packets() if m[0] in ("qdcount=0", "ptr-self-loop", "qr=1")]
    cases.append(("zero-length-frame", b"", "formerr_or_none"))
    for label, pkt, expect in cases:
        s = tcp_connect(p.port)
        try:
            s.sendall(struct.pack("!H", len(pkt)) + pkt)
            try:
                resp = tcp_read_msg(s, time.monotonic() + 1.5)
            except (EOFError, ConnectionResetError):
                resp = None  # closed: acceptable for all of these
            except socket.timeout:
                resp = None
            if resp is not None:
                check(expect != "none", "TCP %s: expected no reply, got %s" % (label, describe(resp)))
                check_malformed_reply("TCP " + label, pkt, resp, "formerr_or_none" if pkt else "any")
        finally:
            s.close()
        check(p.alive(), "dotproxy died after TCP %s" % label)
    query_and_compare(h, u, p, "tcp", "a.example.test.", "A")
    query_and_compare(h, u, p, "udp", "a.example.test.", "A")


def _signal_exit(h, sig):
    u = h.start_unbound()
    p = h.start_proxy(u)
    query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    # An open, idle client connection and one with a query in flight must not hold the exit.
    idle = tcp_connect(p.port)
    busy = tcp_connect(p.port)
    busy.sendall(b"\x00\x40abc")
    try:
        time.sleep(0.2)
        rc, secs = p.stop(sig, grace=2.0)
    finally:
        idle.close()
        busy.close()
    name = signal.Signals(sig).name
    check(rc == 0, "%s: exit code %s (want 0) after %.2f s (-9 = we had to SIGKILL after 2 s)" % (name, rc, secs))
    check(secs < 2.0, "%s: exit took %.2f s" % (name, secs))


@case
def sigterm_exit(h):
    """SIGTERM: exit code 0 within 2 s, even with client connections open."""
    _signal_exit(h, signal.SIGTERM)


@case
def sigint_exit(h):
    """SIGINT: exit code 0 within 2 s, even with client connections open."""
    _signal_exit(h, signal.SIGINT)


def wait_closed(s, limit):
    """Seconds until the peer closes s (EOF or reset), or None if still open
    after `limit` s. Any data received is returned as an error string."""
    t0 = time.monotonic()
    s.settimeout(limit)
    try:
        data = s.recv(4096)
    except socket.timeout:
        return None
    except (ConnectionResetError, OSError):
        return time.monotonic() - t0
    if data:
        raise CaseFailure("idle connection received unexpected %d bytes: %s" % (len(data), data.hex()))
    return time.monotonic() - t0


@case
def tcp_idle_timeout(h):
    """With --tcp-idle-timeout 1000, an idle client connection is closed after
    about a second: one that never sent anything, and one idle after an answer."""
    u = h.start_unbound()
    p = h.start_proxy(u, extra=["--tcp-idle-timeout", "1000"])
    silent = tcp_connect(p.port)
    t_silent_open = time.monotonic()
    used = tcp_connect(p.port)
    try:
        wire = make_query("a.example.test.", "A").to_wire()
        used.sendall(struct.pack("!H", len(wire)) + wire)
        check_same_answer("TCP before idling", tcp_read_msg(used, time.monotonic() + 2), wire,
                          u.reference("a.example.test.", "A"))
        t_used_last = time.monotonic()
        closed_silent = wait_closed(silent, 4.0)
        t_silent = None if closed_silent is None else time.monotonic() - t_silent_open
        closed_used = wait_closed(used, 4.0)
        t_used = None if closed_used is None else time.monotonic() - t_used_last
    finally:
        silent.close()
        used.close()
    check(t_silent is not None, "never-used connection still open after ~4 s (idle timeout 1 s)")
    check(t_used is not None, "used connection still open after ~4 s idle (idle timeout 1 s)")
    # Closing long before the timeout is as wrong as never closing. (Upper
    # bounds: wait_closed gave up after 4 s.)
    check(t_silent >= 0.8, "never-used connection closed after only %.2f s (idle timeout 1 s)" % t_silent)
    check(t_used >= 0.8, "used connection closed %.2f s after its answer (idle timeout 1 s)" % t_used)
    # A connection that keeps sending is not closed: 6 queries 0.5 s apart.
    s = tcp_connect(p.port)
    try:
        for i in range(6):
            wire = make_query("a.example.test.", "A").to_wire()
            try:
                s.sendall(struct.pack("!H", len(wire)) + wire)
                resp = tcp_read_msg(s, time.monotonic() + 2)
            except (EOFError, OSError) as e:
                raise CaseFailure("active connection closed at query %d (%.1f s in): %r" % (i, i * 0.5, e))
            check(resp[:2] == wire[:2], "active connection: ID mismatch")
            time.sleep(0.5)
    finally:
        s.close()


@case
def tcp_stalled_client(h):
    """TCP clients that stall mid-message (one byte of the length prefix; a length
    prefix and half a message) do not block other clients, UDP or TCP."""
    u = h.start_unbound()
    p = h.start_proxy(u)
    ref = u.reference("a.example.test.", "A")
    stalled = []
    try:
        a = tcp_connect(p.port)
        a.sendall(b"\x00")
        stalled.append(a)
        wire = make_query("a.example.test.", "A").to_wire()
        b = tcp_connect(p.port)
        b.sendall(struct.pack("!H", len(wire)) + wire[: len(wire) // 2])
        stalled.append(b)
        c = tcp_connect(p.port)
        c.sendall(struct.pack("!H", 4000) + b"\x00" * 100)  # promises more than it sends
        stalled.append(c)
        time.sleep(0.2)
        for i in range(10):
            for transport, fn in (("udp", udp_exchange), ("tcp", tcp_exchange)):
                q = make_query("a.example.test.", "A").to_wire()
                try:
                    resp, secs = fn(p.port, q, timeout=2.0)
                except (socket.timeout, EOFError, OSError) as e:
                    raise CaseFailure("with stalled TCP clients, %s query %d got no answer: %r" % (transport, i, e))
                check_same_answer("%s query %d beside stalled clients" % (transport, i), resp, q, ref)
                check(secs < 1.0, "%s query %d beside stalled clients took %.2f s" % (transport, i, secs))
        # Finishing the half-sent message still gets it answered.
        b.sendall(wire[len(wire) // 2:])
        check_same_answer("completed stalled message", tcp_read_msg(b, time.monotonic() + 2), wire, ref)
    finally:
        for s in stalled:
            s.close()


@case
def listen_multi(h):
    """Repeated --listen: an IPv4 and an IPv6 ([::1]) address both answer over
    UDP and TCP."""
    try:
        port6 = free_port(LOOPBACK6)
    except OSError:
        raise CaseSkip("no IPv6 loopback")
    u = h.start_unbound()
    port4 = free_port()
    p = h.start_proxy(u, port=port4, listen_args=[
        "--listen", "%s:%d" % (LOOPBACK4, port4), "--listen", "[%s]:%d" % (LOOPBACK6, port6)])
    h.wait_ready(p, "answer", 10.0, host=LOOPBACK6, port=port6)
    ref = u.reference("a.example.test.", "AAAA")
    for host, port in ((LOOPBACK4, port4), (LOOPBACK6, port6)):
        for transport, fn in (("udp", udp_exchange), ("tcp", tcp_exchange)):
            wire = make_query("a.example.test.", "AAAA").to_wire()
            resp, _ = fn(port, wire, host=host)
            check_same_answer("%s [%s]:%d" % (transport, host, port), resp, wire, ref)


@case
def two_upstreams_one_down(h):
    """With two upstreams where one is down (nothing listening), every query is
    still answered correctly (within the 2 s default deadline + retry)."""
    u = h.start_unbound()
    dead = free_port()
    p = h.start_proxy(upstreams=["%s:%d#%s" % (LOOPBACK4, dead, TLS_NAME),
                                 "%s:%d#%s" % (LOOPBACK4, u.dot_port, TLS_NAME)],
                      ready_timeout=15.0)
    for i in range(20):
        qname, qtype = GOOD_QUESTIONS[i % len(GOOD_QUESTIONS)]
        q = make_query(qname, qtype).to_wire()
        resp, secs = udp_exchange(p.port, q, timeout=4.0)
        check_same_answer("query %d with one upstream down" % i, resp, q, u.reference(qname, qtype))


DNSPERF = "/usr/bin/dnsperf"


def run_dnsperf(h, port, mode, seconds, qps):
    data = os.path.join(h.dir, "dnsperf.txt")
    with open(data, "w") as f:
        for qname, qtype in GOOD_QUESTIONS:
            f.write("%s %s\n" % (qname.rstrip("."), qtype))
    rc, out, err = run_cmd([DNSPERF, "-s", LOOPBACK4, "-p", str(port), "-m", mode, "-d", data,
                            "-l", str(seconds), "-Q", str(qps), "-c", "4", "-q", "200",
                            "-t", "3"], timeout=seconds + 30)
    check(rc == 0, "dnsperf -m %s: exit %s\n%s%s" % (mode, rc, out, err))
    return parse_dnsperf(out), out


def parse_dnsperf(out):
    """dnsperf's summary: {"Queries sent", "Queries completed", "Queries
    lost": int, "rcodes": the Response codes line}."""
    stats = {}
    for line in out.splitlines():
        line = line.strip()
        for key in ("Queries sent:", "Queries completed:", "Queries lost:"):
            if line.startswith(key):
                stats[key.rstrip(":")] = int(line.split()[2])
        if line.startswith("Response codes:"):
            stats["rcodes"] = line
    check(len(stats) == 4, "dnsperf output not understood:\n%s" % out)
    return stats


@case
def load_dnsperf(h):
    """Sustained load with dnsperf (5 s at 3000 qps over UDP, 3 s at 1000 qps
    over TCP, 4 clients, 200 outstanding): no query lost, only NOERROR and
    NXDOMAIN, and the proxy answers correctly afterwards."""
    if not os.access(DNSPERF, os.X_OK):
        raise CaseSkip("dnsperf not installed")
    u = h.start_unbound()
    p = h.start_proxy(u)
    for mode, secs, qps in (("udp", 5, 3000), ("tcp", 3, 1000)):
        st, out = run_dnsperf(h, p.port, mode, secs, qps)
        check(st["Queries sent"] >= secs * qps * 0.5, "dnsperf %s sent only %d queries:\n%s" % (
            mode, st["Queries sent"], out))
        check(st["Queries lost"] == 0, "dnsperf %s: %d of %d queries lost:\n%s" % (
            mode, st["Queries lost"], st["Queries sent"], out))
        rc_words = st["rcodes"].replace(",", " ").split()
        bad = [w for w in rc_words if w.isupper() and w not in ("NOERROR", "NXDOMAIN")]
        check(not bad, "dnsperf %s: unexpected rcodes %s: %s" % (mode, bad, st["rcodes"]))
        check(p.alive(), "dotproxy died under dnsperf %s load" % mode)
    for qname, qtype in GOOD_QUESTIONS:
        query_and_compare(h, u, p, "udp", qname, qtype)


@case
def tcp_client_cap(h):
    """--max-tcp-clients 4 with one shard: of 8 simultaneous client connections
    at most 4 are served; UDP is unaffected; once they close, new TCP clients
    are served again."""
    u = h.start_unbound()
    p = h.start_proxy(u, extra=["--max-tcp-clients", "4", "--threads", "1"])
    ref = u.reference("a.example.test.", "A")
    conns, served = [], 0
    try:
        for i in range(8):
            try:
                conns.append(tcp_connect(p.port, timeout=1.0))
            except OSError:
                pass
        time.sleep(0.3)
        for s in conns:
            wire = make_query("a.example.test.", "A").to_wire()
            try:
                s.sendall(struct.pack("!H", len(wire)) + wire)
                resp = tcp_read_msg(s, time.monotonic() + 1.0)
            except (socket.timeout, EOFError, OSError):
                continue
            check_same_answer("TCP client under cap", resp, wire, ref)
            served += 1
        check(1 <= served <= 4, "--max-tcp-clients 4 --threads 1: %d of %d connections served" % (
            served, len(conns)))
        query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    finally:
        for s in conns:
            s.close()
    deadline = time.monotonic() + 5.0
    last = None
    for _ in range(50):
        try:
            query_and_compare(h, u, p, "tcp", "a.example.test.", "A")
            break
        except (CaseFailure, socket.timeout, EOFError, OSError) as e:
            last = e
            if time.monotonic() > deadline:
                raise CaseFailure("TCP not served again 5 s after the capped clients closed: %r" % last)
            time.sleep(0.1)
    for _ in range(6):  # and it keeps being served: the slots were freed
        query_and_compare(h, u, p, "tcp", "txt.example.test.", "TXT")


@case
def config_file(h):
    """--config TOML: listen, ca_file, threads and timeouts come from the file
    (the CA only from the file, so an answer proves it was read); a --listen
    flag overrides the file's; broken files exit non-zero naming file:line.
    --upstream is always also given as a flag, so a misread file can never fall
    back to the binary's public default upstreams."""
    u = h.start_unbound()
    port_file, port_flag = free_port(), free_port()
    conf = os.path.join(h.dir, "dotproxy.toml")
    with open(conf, "w") as f:
        f.write("# e2e test config\n"
                'listen = ["127.0.0.1:%d"]\n'
                'ca_file = "%s"\n'
                "threads = 2\n"
                "query_timeout_ms = 1500\n"
                "tcp_idle_timeout_ms = 5000\n"
                "[[upstream]]\n"
                'address = "127.0.0.1:%d"\n'
                'name = "%s"\n' % (port_file, h.pki.ca_pem, u.dot_port, TLS_NAME))
    up = ["--upstream", "%s:%d#%s" % (LOOPBACK4, u.dot_port, TLS_NAME)]
    exe = h.need_exe()
    rc, out, err = run_cmd([exe, "--config", conf, "--check-config"] + up, timeout=5)
    check(rc == 0, "--config (valid) --check-config: exit %s\n%s" % (rc, err))

    p = Proxy(exe, h.dir, ["--config", conf] + up + io_backend_args(), "dotproxy%d" % len(h.proxies))
    p.port = port_file
    h.proxies.append(p)
    h.wait_ready(p, "answer", 10.0)
    query_and_compare(h, u, p, "udp", "txt.example.test.", "TXT")
    query_and_compare(h, u, p, "tcp", "a.example.test.", "AAAA")
    p.stop()

    p = Proxy(exe, h.dir, ["--config", conf, "--listen", "%s:%d" % (LOOPBACK4, port_flag)] + up
              + io_backend_args(), "dotproxy%d" % len(h.proxies))
    p.port = port_flag
    h.proxies.append(p)
    h.wait_ready(p, "answer", 10.0)
    query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    p.stop()

    bad = [
        ("syntax.toml", 'threads = 2\nquery_timeout_ms = = 5\n', 2),
        ("unknown-key.toml", 'threads = 2\n\nno_such_key = 5\n', 3),
        ("wrong-type.toml", '# comment\nthreads = "two"\n', 2),
    ]
    problems = []
    for name, text, line in bad:
        path = os.path.join(h.dir, name)
        with open(path, "w") as f:
            f.write(text)
        rc, out, err = run_cmd([exe, "--config", path, "--check-config"] + up, timeout=5)
        if rc in (0, None):
            problems.append("%s: exit %s" % (name, rc))
        elif "%s:%d" % (name, line) not in err:
            problems.append("%s: stderr does not say %s:%d: %r" % (name, name, line, err))
    missing = os.path.join(h.dir, "missing.toml")
    rc, out, err = run_cmd([exe, "--config", missing] + up + io_backend_args(), timeout=5)
    if rc in (0, None):
        problems.append("missing config file: exit %s" % rc)
    elif "missing.toml" not in err:
        problems.append("missing config file: stderr does not name it: %r" % err)
    check(not problems, "bad config files:\n  " + "\n  ".join(problems))


# ---- CLI contract


def _cli_base(h):
    return ["--listen", "%s:%d" % (LOOPBACK4, free_port()),
            "--upstream", "%s:853#%s" % (LOOPBACK4, TLS_NAME), "--ca-file", h.pki.ca_pem]


@case
def cli_version(h):
    """--version prints a line containing "dotproxy" and exits 0."""
    rc, out, err = run_cmd([h.need_exe(), "--version"], timeout=5)
    check(rc == 0, "--version: exit %s\nstdout: %s\nstderr: %s" % (rc, out, err))
    check("dotproxy" in (out + err), "--version output lacks 'dotproxy': %r %r" % (out, err))


@case
def cli_help(h):
    """--help exits 0 and documents --listen and --upstream."""
    rc, out, err = run_cmd([h.need_exe(), "--help"], timeout=5)
    check(rc == 0, "--help: exit %s\nstderr: %s" % (rc, err))
    check("--listen" in out + err and "--upstream" in out + err, "--help text lacks flags: %r" % (out + err))


@case
def cli_check_config(h):
    """--check-config with valid flags exits 0 without serving; with a bad value it
    exits non-zero."""
    exe = h.need_exe()
    port = free_port()
    args = ["--listen", "%s:%d" % (LOOPBACK4, port), "--listen", "[::1]:%d" % port,
            "--upstream", "127.0.0.1:853#%s" % TLS_NAME, "--upstream", "127.0.0.2",
            "--ca-file", h.pki.ca_pem, "--threads", "2", "--cache-size", "0",
            "--query-timeout", "1500", "--tcp-idle-timeout", "5000", "--max-tcp-clients", "64"]
    rc, out, err = run_cmd([exe] + args + ["--check-config"], timeout=5)
    check(rc == 0, "--check-config (valid): exit %s (None = still running after 5 s)\nstderr: %s" % (rc, err))
    rc, out, err = run_cmd([exe] + args + ["--threads", "banana", "--check-config"], timeout=5)
    check(rc not in (0, None), "--check-config with --threads banana: exit %s" % rc)
    check("threads" in err, "--check-config bad --threads: stderr does not name the flag: %r" % err)


BAD_FLAGS = [
    (["--threads", "abc"], "threads"),
    (["--threads", "-1"], "threads"),
    (["--threads"], "threads"),
    (["--cache-size", "lots"], "cache-size"),
    (["--query-timeout", "soon"], "query-timeout"),
    (["--query-timeout", "-5"], "query-timeout"),
    (["--tcp-idle-timeout", "x1"], "tcp-idle-timeout"),
    (["--max-tcp-clients", "many"], "max-tcp-clients"),
    (["--listen", "127.0.0.1"], "listen"),
    (["--listen", "127.0.0.1:99999"], "listen"),
    (["--listen", "999.1.2.3:53"], "listen"),
    (["--listen", "::1:53"], "listen"),
    (["--upstream", "not-an-ip"], "upstream"),
    (["--upstream", "127.0.0.1:70000"], "upstream"),
    (["--upstream", "127.0.0.1:853#"], "upstream"),
    (["--no-such-flag"], "no-such-flag"),
]


@case
def cli_bad_flags(h):
    """Each bad flag or value exits non-zero (quickly, without serving) with a
    message on stderr naming the flag."""
    exe = h.need_exe()
    base = _cli_base(h) + io_backend_args()
    problems = []
    for bad, name in BAD_FLAGS:
        rc, out, err = run_cmd([exe] + base + bad, timeout=5)
        if rc is None:
            problems.append("%s: still running after 5 s" % " ".join(bad))
        elif rc == 0:
            problems.append("%s: exit 0" % " ".join(bad))
        elif name not in err:
            problems.append("%s: exit %d but stderr does not name %r: %r" % (" ".join(bad), rc, name, err))
        elif rc < 0:
            problems.append("%s: killed by signal %d" % (" ".join(bad), -rc))
    check(not problems, "bad flags not rejected properly:\n  " + "\n  ".join(problems))


@case
def cli_bad_ca_file(h):
    """A --ca-file that does not exist is refused at startup (non-zero exit naming
    the flag), not silently replaced by another trust store."""
    exe = h.need_exe()
    base = ["--listen", "%s:%d" % (LOOPBACK4, free_port()), "--upstream", "127.0.0.1:853#%s" % TLS_NAME]
    missing = os.path.join(h.dir, "does-not-exist.pem")
    rc, out, err = run_cmd([exe] + base + io_backend_args() + ["--ca-file", missing], timeout=5)
    check(rc not in (0, None), "--ca-file %s: exit %s (None = kept running)\nstderr: %s" % (missing, rc, err))
    check("ca-file" in err, "--ca-file missing: stderr does not name the flag: %r" % err)


# --------------------------------------------------------------------------
# Self-test of the harness, no dotproxy needed.


@case
def harness_selftest(h):
    """The PKI and Unbound work: DoT with the test CA answers as configured;
    the untrusted cert, the wrong name and the no-IP-SAN cert fail verification."""
    u = h.start_unbound()
    ctx = h.pki.client_context()
    for qname, qtype in GOOD_QUESTIONS:
        r = u.reference(qname, qtype)
        check(r.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), "%s: %s" % (qname, r.rcode()))
    r = u.reference("a.example.test.", "A")
    check([x.to_text() for rr in r.answer for x in rr] == ["192.0.2.1"], "A data: %s" % r.to_text())
    check(u.reference("nowhere.test.", "A").rcode() == dns.rcode.NXDOMAIN, "root zone not static")
    # IP SAN verification works with python's ssl.
    dns.query.tls(make_query("a.example.test.", "A"), LOOPBACK4, port=u.dot_port, timeout=3,
                  ssl_context=ctx, server_hostname=LOOPBACK4)
    big = u.reference("big.example.test.", "TXT").to_wire()
    check(1232 < len(big) < 3000, "big answer %d bytes" % len(big))
    try:
        dns.query.tls(make_query("a.example.test.", "A"), LOOPBACK4, port=u.dot_port, timeout=3,
                      ssl_context=ctx, server_hostname="wrong.name")
        raise CaseFailure("wrong name was accepted")
    except ssl.SSLCertVerificationError:
        pass
    evil = h.start_unbound(cert="evil")
    try:
        dns.query.tls(make_query("a.example.test.", "A"), LOOPBACK4, port=evil.dot_port, timeout=3,
                      ssl_context=ctx, server_hostname=TLS_NAME)
        raise CaseFailure("untrusted CA was accepted")
    except ssl.SSLCertVerificationError:
        pass
    noip = h.start_unbound(cert="noip")
    try:
        dns.query.tls(make_query("a.example.test.", "A"), LOOPBACK4, port=noip.dot_port, timeout=3,
                      ssl_context=ctx, server_hostname=LOOPBACK4)
        raise CaseFailure("cert without IP SAN accepted for 127.0.0.1")
    except ssl.SSLCertVerificationError:
        pass
    # Restart on the same port.
    port = u.dot_port
    u.stop()
    try:
        u.reference("a.example.test.", "A")
        raise CaseFailure("stopped unbound still answers")
    except (OSError, dns.exception.Timeout):
        pass
    u.start()
    check(u.dot_port == port and u.reference("a.example.test.", "A").answer, "restart failed")
    s = h.start_silent_upstream()
    try:
        dns.query.tls(make_query("a.example.test.", "A"), LOOPBACK4, port=s.port, timeout=1,
                      ssl_context=ctx, server_hostname=TLS_NAME)
        raise CaseFailure("silent upstream answered")
    except dns.exception.Timeout:
        pass
    check(s.handshakes == 1, "silent upstream handshakes: %d" % s.handshakes)


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
            print("%-24s %s" % (name, " ".join((fn.__doc__ or "").split())))
        return EXIT_PASS
    if not args.case:
        ap.error("--case or --list required")
    for c in args.case:
        if c not in CASES:
            ap.error("unknown case %r (see --list)" % c)
    try:
        announce_io_backend()
    except RuntimeError as e:
        ap.error(str(e))
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    worst = EXIT_PASS
    for name in args.case:
        h = Harness(args.dotproxy, keep=args.keep)
        t0 = time.monotonic()
        status = EXIT_PASS
        try:
            CASES[name](h)
        except CaseSkip as e:
            status = EXIT_SKIP
            print("SKIP %s: %s" % (name, e))
        except CaseFailure as e:
            status = EXIT_FAIL
            print("FAIL %s: %s" % (name, e))
            print(h.report())
        except Exception:  # noqa: BLE001 - harness error: still a failure, with trace
            status = EXIT_FAIL
            print("FAIL %s: harness error\n%s" % (name, traceback.format_exc()))
            print(h.report())
        finally:
            h.close()
        if status == EXIT_PASS:
            # A proxy that crashed at the end of a passing case is still a failure.
            for p in h.proxies:
                if p.proc.returncode not in (None, 0, -signal.SIGKILL, -signal.SIGTERM):
                    status = EXIT_FAIL
                    print("FAIL %s: dotproxy exited with %s\n%s" % (name, p.proc.returncode, h.report()))
                    break
        if status == EXIT_PASS:
            print("PASS %s (%.1f s)" % (name, time.monotonic() - t0))
        if args.keep:
            print("kept %s" % h.dir)
        if status == EXIT_FAIL or (status == EXIT_SKIP and worst == EXIT_PASS):
            worst = status
    sys.stdout.flush()
    return worst


def own_cases_only(inherited):
    """Drops the cases a case file inherited by importing other case files
    (`inherited`: the names registered before its own), so that it lists and
    runs only its own."""
    for name in inherited:
        CASES.pop(name, None)


def run_script(entry):
    """Runs a case script's main() and exits with its status, ending every
    child process the harness started whatever happens (the case files that
    import this harness use it too)."""
    try:
        rc = entry()
    finally:
        _cleanup()
    sys.exit(rc)


if __name__ == "__main__":
    run_script(main)
