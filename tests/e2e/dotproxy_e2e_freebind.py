#!/usr/bin/python3
"""End-to-end tests of --freebind (TOML `freebind = true`): dotproxy binds a
listen address this host does not have, the NodeLocal DNSCache pattern
(169.254.20.10, added to an interface later), on UDP and TCP, and still
answers on its loopback address; without --freebind it exits non-zero naming
the address. Uses the harness in dotproxy_e2e.py (same rules: every wait
bounded, every child killed by PID).

Nothing is ever sent to the non-loopback addresses: they are only bound, and
the binding is read from /proc/net/{udp,tcp}[6] and matched to dotproxy's own
socket inodes (/proc/PID/fd). Queries go to 127.0.0.1 only.

    dotproxy_e2e_freebind.py --list
    dotproxy_e2e_freebind.py --dotproxy build/dotproxy --case freebind_link_local [--keep]

Exit status: 0 pass, 1 fail, 77 skip (the address exists on this host, so
the test would prove nothing).
"""

import errno
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import (  # noqa: E402
    LOOPBACK4, TLS_NAME, CaseSkip, case, check, check_same_answer, free_port, make_query,
    tcp_exchange, udp_exchange,
)

_INHERITED = set(E.CASES)

LINK_LOCAL = "169.254.20.10"  # NodeLocal DNSCache's address
DOC_V6 = "2001:db8::53"       # RFC 3849 documentation prefix: never routed
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
TCP_LISTEN = "0A"             # /proc/net/tcp st of a listening socket


def not_local(host):
    """Skips unless binding `host` without IP_FREEBIND fails with
    EADDRNOTAVAIL: if the host has the address, freebind proves nothing."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.bind((host, 0))
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            return
        raise CaseSkip("binding %s fails with %s, not EADDRNOTAVAIL" % (host, e))
    finally:
        s.close()
    raise CaseSkip("%s is configured on this host: freebind would prove nothing" % host)


def free_port_freebind(host):
    """A port free on `host` for UDP and TCP, checked by binding with
    IP_FREEBIND (bind only; nothing is sent)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        port = free_port()
        ok = True
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(fam, kind)
            try:
                s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
                s.bind((host, port))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return port
    raise E.CaseFailure("no free port on %s" % host)


def proc_net_hex(host, port):
    """`local_address` as /proc/net/{udp,tcp}[6] prints it: the address's
    32-bit words in host byte order, %08X each, then :%04X of the port."""
    if ":" in host:
        raw = socket.inet_pton(socket.AF_INET6, host)
        words = struct.unpack("=4I", raw)
    else:
        words = struct.unpack("=I", socket.inet_aton(host))
    return "".join("%08X" % w for w in words) + ":%04X" % port


def socket_inodes(pid):
    """Inodes of the sockets process `pid` holds open."""
    inodes = set()
    fd_dir = "/proc/%d/fd" % pid
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def bound_by(pid, table, host, port, state=None):
    """How many of process `pid`'s sockets in /proc/net/TABLE are bound to
    host:port (in `state`, e.g. TCP_LISTEN, when given)."""
    want = proc_net_hex(host, port)
    mine = socket_inodes(pid)
    n = 0
    with open("/proc/net/" + table) as f:
        next(f)  # header
        for line in f:
            fields = line.split()
            if len(fields) < 10:
                continue
            if fields[1] == want and (state is None or fields[3] == state) and fields[9] in mine:
                n += 1
    return n


def check_bound(p, host, port, threads, what):
    """Every shard holds a UDP socket and a listening TCP socket on host:port."""
    v6 = ":" in host
    udp = bound_by(p.proc.pid, "udp6" if v6 else "udp", host, port)
    tcp = bound_by(p.proc.pid, "tcp6" if v6 else "tcp", host, port, TCP_LISTEN)
    check(udp == threads and tcp == threads,
          "%s: dotproxy holds %d UDP and %d listening TCP sockets on %s port %d, want %d each "
          "(/proc/net)" % (what, udp, tcp, host, port, threads))
    print("%s: %d UDP + %d TCP listening sockets bound to %s port %d (/proc/net, our inodes)" % (
        what, udp, tcp, host, port))


def check_answers_on_loopback(u, port, what):
    ref = u.reference("a.example.test.", "A")
    for transport, fn in (("udp", udp_exchange), ("tcp", tcp_exchange)):
        wire = make_query("a.example.test.", "A").to_wire()
        resp, _ = fn(port, wire, host=LOOPBACK4)
        check_same_answer("%s %s 127.0.0.1:%d" % (what, transport, port), resp, wire, ref)


@case
def freebind_link_local(h):
    """`--freebind --listen 169.254.20.10:P --listen 127.0.0.1:P2` (the
    address absent from this host) starts, answers over UDP and TCP on
    127.0.0.1 like the upstream, and every shard holds a UDP and a listening
    TCP socket on 169.254.20.10:P (read from /proc/net, matched to dotproxy's
    own socket inodes; nothing is sent there). The same from a TOML file
    (`freebind = true`), with an IPv6 documentation address (2001:db8::53,
    IPV6_FREEBIND) beside it when this host has IPv6."""
    not_local(LINK_LOCAL)
    u = h.start_unbound()
    threads = 2  # the harness's --threads

    port = free_port_freebind(LINK_LOCAL)
    port2 = free_port()
    p = h.start_proxy(u, port=port2, extra=["--freebind"], listen_args=[
        "--listen", "%s:%d" % (LINK_LOCAL, port), "--listen", "%s:%d" % (LOOPBACK4, port2)])
    check_answers_on_loopback(u, port2, "--freebind")
    check_bound(p, LINK_LOCAL, port, threads, "--freebind")
    rc, secs = p.stop()
    check(rc == 0, "--freebind: exit %s on SIGTERM" % rc)

    # The file's key, with an IPv6 address too when the host has IPv6.
    listen = ['"%s:%d"' % (LINK_LOCAL, port)]
    v6_port = None
    if socket.has_ipv6 and os.path.exists("/proc/net/udp6"):
        try:
            not_local(DOC_V6)
            v6_port = free_port_freebind(DOC_V6)
            listen.append('"[%s]:%d"' % (DOC_V6, v6_port))
        except (CaseSkip, OSError, E.CaseFailure) as e:
            print("IPv6 part skipped: %s" % e)
    port3 = free_port()
    listen.append('"%s:%d"' % (LOOPBACK4, port3))
    conf = os.path.join(h.dir, "freebind.toml")
    with open(conf, "w") as f:
        f.write("freebind = true\nlisten = [%s]\n" % ", ".join(listen))
    p = h.start_proxy(u, port=port3, listen_args=["--config", conf])
    check_answers_on_loopback(u, port3, "freebind = true")
    check_bound(p, LINK_LOCAL, port, threads, "freebind = true")
    if v6_port is not None:
        check_bound(p, DOC_V6, v6_port, threads, "freebind = true")


@case
def freebind_required(h):
    """Without --freebind, `--listen 169.254.20.10:P --listen 127.0.0.1:P2`
    (the address absent from this host) exits non-zero within 10 s with one
    error line naming 169.254.20.10:P, the kernel's reason and --freebind, and serves
    nothing: 127.0.0.1:P2 is free again afterwards."""
    not_local(LINK_LOCAL)
    exe = h.need_exe()
    port = free_port_freebind(LINK_LOCAL)
    port2 = free_port()
    argv = [exe, "--listen", "%s:%d" % (LINK_LOCAL, port), "--listen", "%s:%d" % (LOOPBACK4, port2),
            "--upstream", "%s:853#%s" % (LOOPBACK4, TLS_NAME), "--ca-file", h.pki.ca_pem,
            "--threads", "1"] + E.io_backend_args()
    t0 = time.monotonic()
    rc, out, err = E.run_cmd(argv, timeout=10)
    secs = time.monotonic() - t0
    check(rc is not None, "without --freebind: still running after 10 s")
    check(rc != 0, "without --freebind: exit 0, want non-zero; stderr %r" % err[:300])
    errors = [line for line in err.splitlines() if "%s:%d" % (LINK_LOCAL, port) in line]
    check(len(errors) == 1 and "Cannot assign requested address" in errors[0]
          and "--freebind" in errors[0],
          "without --freebind: want one line naming %s:%d, 'Cannot assign requested "
          "address' and --freebind, got (exit %s):\n%s" % (LINK_LOCAL, port, rc, err))
    print("without --freebind: exit %d after %.1f s: %s" % (rc, secs, errors[0].strip()))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((LOOPBACK4, port2))
    except OSError as e:
        raise E.CaseFailure("127.0.0.1:%d still bound after the failed start: %s" % (port2, e))
    finally:
        s.close()


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
