#!/usr/bin/python3
"""End-to-end cases for systemd socket activation: dotproxy started with
listening sockets passed in LISTEN_FDS, by systemd-socket-activate (nested
twice to pass a UDP and a TCP socket on one address; it starts the child at
the first datagram) or by a small launcher here (sockets with SO_REUSEPORT,
or an AF_UNIX socket it must refuse). Uses the harness in dotproxy_e2e.py:
loopback only, bounded waits, children ended by PID.

    dotproxy_e2e_socket_activation.py --dotproxy build/dotproxy --case socket_activation_answers
"""

import fcntl
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import (LOOPBACK4, TLS_NAME, case, check, free_port, make_query,  # noqa: E402
                          tcp_connect, tcp_exchange, tcp_read_msg, udp_exchange)

_INHERITED = set(E.CASES)

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


def _upstream_args(h, u, threads, extra=()):
    """dotproxy's flags without the --listen of base_args: a --listen on a
    port nothing else uses, to show that the passed sockets replace it."""
    decoy = free_port()
    args = h.base_args(decoy, ["%s:%d#%s" % (LOOPBACK4, u.dot_port, TLS_NAME)], threads=threads)
    return decoy, args + list(extra)


def _start_activated(h, u, threads=2, extra=()):
    """dotproxy under two nested systemd-socket-activate: UDP (-d) and TCP
    on one loopback port. Started by the first datagram (wait_ready's)."""
    if not os.access(SOCKET_ACTIVATE, os.X_OK):
        raise E.CaseSkip("no systemd-socket-activate (systemd package)")
    port = free_port()
    address = "%s:%d" % (LOOPBACK4, port)
    decoy, args = _upstream_args(h, u, threads, extra)
    # systemd-socket-activate gives the child a clean environment: pass the
    # sanitizer settings on (the sanitizer build's leak suppressions).
    keep = []
    for name in ("ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS"):
        if name in os.environ:
            keep += ["-E", name]
    prefix = ([SOCKET_ACTIVATE, "-d", "-l", address] + keep + [SOCKET_ACTIVATE, "-l", address] +
              keep)
    p = E.Proxy(h.need_exe(), h.dir, args, "dotproxy%d" % len(h.proxies), prefix=prefix)
    p.port, p.decoy = port, decoy
    h.proxies.append(p)
    h.wait_ready(p, "answer", 10.0)
    return p


def _launch_with_fds(h, socks, args, name):
    """Runs dotproxy with `socks` as fds 3, 4, ... and LISTEN_FDS/LISTEN_PID
    set, as a service manager does (sh sets LISTEN_PID to its own PID, which
    exec keeps)."""
    high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 10) for s in socks]

    def place():  # in the child, before exec
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i)
        for fd in high:
            os.close(fd)

    env = E.child_env()
    env["LISTEN_FDS"] = str(len(socks))
    env.pop("LISTEN_PID", None)
    err_path = os.path.join(h.dir, name + ".stderr")
    out_path = os.path.join(h.dir, name + ".stdout")
    with open(err_path, "ab") as err, open(out_path, "ab") as out:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', h.need_exe()] + args,
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
            pass_fds=tuple(range(3, 3 + len(socks))) + tuple(high), preexec_fn=place)
    E._children.append(proc)
    for fd in high:
        os.close(fd)
    for s in socks:
        s.close()  # the child holds them now
    return proc, err_path


class _Launched:
    """A Proxy-like view of a launched process, for the harness's report."""

    def __init__(self, proc, err_path, args, port):
        self.proc, self.stderr_path, self.args, self.port = proc, err_path, args, port
        self.exe, self.prefix = "dotproxy", []

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=E.signal.SIGTERM, grace=3.0):
        return E.stop_process(self.proc, sig, grace)

    def stderr_text(self):
        return E.tail(self.stderr_path, 120)


def _bound(kind, port, reuseport):
    s = socket.socket(socket.AF_INET, kind)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((LOOPBACK4, port))
    if kind == socket.SOCK_STREAM:
        s.listen(64)
    return s


def _stderr(p):
    with open(p.stderr_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _inherited_line(p):
    m = re.search(r"socket activation: .*", _stderr(p))
    check(m is not None, "no 'socket activation:' line in stderr:\n%s" % p.stderr_text())
    return m.group(0)


def _answers_both_transports(u, port, rounds=1):
    for _ in range(rounds):
        for qname, qtype in E.GOOD_QUESTIONS:
            for transport, fn in (("udp", udp_exchange), ("tcp", tcp_exchange)):
                wire = make_query(qname, qtype).to_wire()
                resp, _ = fn(port, wire)
                E.check_same_answer("%s %s %s" % (transport, qname, qtype), resp, wire,
                                    u.reference(qname, qtype))


def _nothing_on(port):
    """Neither UDP nor TCP answers on 127.0.0.1:port."""
    resp, _ = udp_exchange(port, make_query("a.example.test.").to_wire(), timeout=0.5)
    check(resp is None, "an answer on the --listen port %d: the passed sockets should replace it" % port)
    try:
        tcp_connect(port, timeout=0.5).close()
    except OSError:
        return
    raise E.CaseFailure("TCP connect to the --listen port %d succeeded" % port)


def _udp_port_sockets(port):
    """How many UDP sockets are bound to 127.0.0.1:port (/proc/net/udp)."""
    want = "0100007F:%04X" % port
    with open("/proc/net/udp") as f:
        return sum(1 for line in f.readlines()[1:] if line.split()[1] == want)


@case
def socket_activation_answers(h):
    """Under systemd-socket-activate (UDP + TCP on one port, LISTEN_FDS=2)
    dotproxy answers over both transports like the upstream, logs one line
    naming the two inherited sockets, does not bind its --listen address,
    and exits 0 on SIGTERM."""
    u = h.start_unbound()
    p = _start_activated(h, u)
    line = _inherited_line(p)
    want = ("socket activation: 2 inherited sockets replace --listen: udp 127.0.0.1:%d (fd 3, "
            "shared by all shards), tcp 127.0.0.1:%d (fd 4, shared by all shards)" % (p.port, p.port))
    check(want in line, "inherited line %r, want %r" % (line, want))
    _answers_both_transports(u, p.port)
    _nothing_on(p.decoy)
    check("serving on 127.0.0.1:%d with" % p.port in _stderr(p), "serving line lists --listen:\n%s"
          % p.stderr_text())
    rc, _ = p.stop()
    check(rc == 0, "dotproxy exited %s on SIGTERM" % rc)
    print(line)


@case
def socket_activation_shared_by_two_shards(h):
    """A passed socket without SO_REUSEPORT is shared by both shards of
    --threads 2: with room for one TCP client per shard, two connections held
    open at once are both served (so each shard accepted one from the shared
    socket), none is rejected, and 300 UDP and 60 TCP queries are all
    answered."""
    u = h.start_unbound()
    p = _start_activated(h, u, threads=2, extra=["--max-tcp-clients", "1"])
    ref = u.reference("a.example.test.", "A")
    held = []
    try:
        for i in range(2):
            s = tcp_connect(p.port)
            held.append(s)
            # Each connection answers while the other stays open.
            for c in held:
                wire = make_query("a.example.test.", "A").to_wire()
                c.sendall(struct.pack("!H", len(wire)) + wire)
                resp = tcp_read_msg(c, time.monotonic() + 3.0)
                E.check_same_answer("held connection %d" % held.index(c), resp, wire, ref)
    finally:
        for s in held:
            s.close()
    # Many queries over both transports (fresh TCP connections: a closed
    # one frees its shard's slot after the loop notices).
    udp_ok = 0
    for i in range(300):
        wire = make_query("a.example.test.", "A").to_wire()
        resp, _ = udp_exchange(p.port, wire, timeout=2.0)
        udp_ok += resp is not None
    tcp_ok = 0
    for i in range(60):
        wire = make_query("a.example.test.", "A").to_wire()
        for attempt in range(20):
            try:
                resp, _ = tcp_exchange(p.port, wire)
                if resp is not None:
                    tcp_ok += 1
                    break
            except (OSError, E.CaseFailure):
                time.sleep(0.02)  # the slot of the last connection is not free yet
    check(udp_ok == 300, "UDP answered %d of 300" % udp_ok)
    check(tcp_ok == 60, "TCP answered %d of 60" % tcp_ok)
    print("held 2 TCP connections at once with 1 client per shard; UDP %d/300, TCP %d/60" % (
        udp_ok, tcp_ok))


@case
def socket_activation_reuseport_siblings(h):
    """Passed sockets with SO_REUSEPORT: the log line says so, the second
    shard binds its own sibling socket on the address (two UDP sockets on the
    port in /proc/net/udp), and both transports answer."""
    u = h.start_unbound()
    port = free_port()
    socks = [_bound(socket.SOCK_DGRAM, port, True), _bound(socket.SOCK_STREAM, port, True)]
    _, args = _upstream_args(h, u, 2)
    proc, err = _launch_with_fds(h, socks, args, "dotproxy-reuseport")
    p = _Launched(proc, err, args, port)
    h.proxies.append(p)
    h.wait_ready(p, "answer", 10.0)
    line = _inherited_line(p)
    check("udp 127.0.0.1:%d (fd 3, SO_REUSEPORT: a socket per shard)" % port in line and
          "tcp 127.0.0.1:%d (fd 4, SO_REUSEPORT: a socket per shard)" % port in line,
          "inherited line %r" % line)
    check("sharing the inherited socket instead" not in _stderr(p),
          "a shard fell back to sharing:\n%s" % p.stderr_text())
    n = _udp_port_sockets(port)
    check(n == 2, "%d UDP sockets on port %d, want 2 (passed + shard 1's sibling)" % (n, port))
    _answers_both_transports(u, port)
    rc, _ = p.stop()
    check(rc == 0, "dotproxy exited %s on SIGTERM" % rc)
    print(line)


@case
def socket_activation_refuses_unix_socket(h):
    """A passed AF_UNIX socket is refused: exit 2 and a message naming fd 3,
    before anything is served."""
    u = h.start_unbound()
    path = os.path.join(h.dir, "passed.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    _, args = _upstream_args(h, u, 1)
    proc, err = _launch_with_fds(h, [s], args, "dotproxy-unix")
    p = _Launched(proc, err, args, 0)  # not in h.proxies: exit 2 is the point
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise E.CaseFailure("dotproxy still running with an AF_UNIX socket passed")
    E._children.remove(proc)
    text = _stderr(p)
    check(rc == 2, "exit %s, want 2; stderr:\n%s" % (rc, text))
    check("socket activation: fd 3 is an AF_UNIX socket" in text, "message:\n%s" % text)
    print(text.strip().splitlines()[-1])


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
