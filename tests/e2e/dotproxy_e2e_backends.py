#!/usr/bin/python3
"""End-to-end tests of dotproxy's I/O backend choice (--io-backend
auto|uring|epoll): the fallback from io_uring to epoll when the kernel refuses
rings, the hard failure when io_uring is demanded and refused, the default,
and a bad value. Uses the harness in dotproxy_e2e.py (same rules: loopback
only, every wait bounded, every child killed by PID).

io_uring is refused with deny_io_uring (deny_io_uring.c, built by meson when
libseccomp is found): a seccomp filter under which io_uring_setup,
io_uring_enter and io_uring_register fail with EPERM, as in a container whose
profile blocks them. Cases that need it skip (77) when it is not built.

    dotproxy_e2e_backends.py --list
    dotproxy_e2e_backends.py --dotproxy build/dotproxy --case io_backend_auto_falls_back \\
        [--deny-io-uring build/tests/e2e/deny_io_uring] [--keep]

Without --deny-io-uring the wrapper is looked for at tests/e2e/deny_io_uring
beside the --dotproxy binary (the meson build layout). Each case chooses its
own backend, so DOTPROXY_E2E_IO_BACKEND is ignored here; meson registers these
cases once. Exit status: 0 pass, 1 fail, 77 skip.
"""

import argparse
import ctypes
import errno
import os
import re
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import (  # noqa: E402
    GOOD_QUESTIONS, LOOPBACK4, TLS_NAME, CaseFailure, CaseSkip, case, check, free_port,
    query_and_compare,
)

# Only the cases below are listed and run by this script.
_INHERITED = set(E.CASES)

# io_uring syscall numbers: one table for every architecture since Linux 5.1.
SYS_IO_URING_SETUP, SYS_IO_URING_ENTER, SYS_IO_URING_REGISTER = 425, 426, 427
IO_URING_PARAMS_SIZE = 120  # sizeof(struct io_uring_params)

# What dotproxy logs once it has picked a backend (the spec of --io-backend).
LOG_EPOLL = "io backend: epoll"
LOG_URING = "io backend: uring"
# The reason the fallback line must give for the seccomp filter's EPERM.
EPERM_REASONS = ("Operation not permitted", "EPERM")

_deny_path = None  # set by main(): --deny-io-uring or the build-layout guess


def deny_io_uring():
    """The wrapper's path, or CaseSkip when it was not built."""
    if not _deny_path or not os.access(_deny_path, os.X_OK):
        raise CaseSkip("deny_io_uring not available (%s); it needs libseccomp-dev, see "
                       "tests/e2e/meson.build" % (_deny_path or "no path given"))
    return _deny_path


# Run by a child Python (under the wrapper or not): tries the three io_uring
# syscalls and prints their errnos, 0 for success, e.g. "setup=0 enter=9
# register=22". enter and register get fd -1: EBADF or EINVAL unless a filter
# says EPERM.
RING_PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(nr, *args)
    if r >= 0 and nr == SETUP:
        os.close(r)
    return ctypes.get_errno() if r < 0 else 0
params = ctypes.create_string_buffer(PARAMS_SIZE)
setup = call(SETUP, ctypes.c_uint(1), params)
enter = call(ENTER, ctypes.c_int(-1), ctypes.c_uint(0), ctypes.c_uint(0), ctypes.c_uint(0),
             None, ctypes.c_size_t(0))
register = call(REGISTER, ctypes.c_int(-1), ctypes.c_uint(0), None, ctypes.c_uint(0))
print("setup=%d enter=%d register=%d" % (setup, enter, register))
"""
RING_PROBE = "SETUP, ENTER, REGISTER, PARAMS_SIZE = %d, %d, %d, %d\n" % (
    SYS_IO_URING_SETUP, SYS_IO_URING_ENTER, SYS_IO_URING_REGISTER, IO_URING_PARAMS_SIZE) + RING_PROBE


def probe_rings(prefix=()):
    """{"setup": errno, "enter": errno, "register": errno} from a child Python
    run under `prefix` (0 = the call succeeded)."""
    rc, out, err = E.run_cmd(list(prefix) + [sys.executable, "-c", RING_PROBE], timeout=10)
    m = re.search(r"setup=(\d+) enter=(\d+) register=(\d+)", out)
    if rc != 0 or m is None:
        raise CaseFailure("io_uring probe %s: exit %s\nstdout: %s\nstderr: %s" % (
            " ".join(prefix) or "(no wrapper)", rc, out, err))
    return dict(zip(("setup", "enter", "register"), (int(x) for x in m.groups())))


def can_create_ring():
    """(True, "") if this process may create an io_uring, else (False, why)."""
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            disabled = f.read().strip()
        if disabled not in ("", "0"):
            return False, "kernel.io_uring_disabled = %s" % disabled
    except OSError:
        pass  # kernels before 6.6 have no such sysctl
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(IO_URING_PARAMS_SIZE)
    fd = libc.syscall(SYS_IO_URING_SETUP, ctypes.c_uint(1), params)
    if fd < 0:
        e = ctypes.get_errno()
        return False, "io_uring_setup: %s" % os.strerror(e)
    os.close(fd)
    return True, ""


def stderr_lines(p):
    with open(p.stderr_path, "r", errors="replace") as f:
        return f.read().splitlines()


def wait_for_line(p, needle, timeout):
    """The stderr lines containing `needle` once there is one (bounded)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        hits = [line for line in stderr_lines(p) if needle in line]
        if hits or time.monotonic() >= deadline:
            return hits
        time.sleep(0.05)
    return []


def _serving_args(h, port, upstream_port):
    """Loopback listen and upstream (nothing may leave the machine)."""
    return ["--listen", "%s:%d" % (LOOPBACK4, port),
            "--upstream", "%s:%d#%s" % (LOOPBACK4, upstream_port, TLS_NAME),
            "--ca-file", h.pki.ca_pem, "--threads", "2"]


# --------------------------------------------------------------------------
# Cases


@case
def deny_io_uring_selftest(h):
    """The wrapper itself, without dotproxy: under deny_io_uring the three
    io_uring syscalls fail with EPERM; without it io_uring_enter and
    io_uring_register on fd -1 fail otherwise (EBADF, EINVAL: so the EPERM is
    the filter's); other syscalls still work (the probe is a whole Python
    run), and the program's exit status comes through."""
    deny = deny_io_uring()
    wrapped = probe_rings([deny])
    plain = probe_rings()
    print("io_uring syscalls, errno: without the wrapper %s; under it %s" % (plain, wrapped))
    for call, err in wrapped.items():
        check(err == errno.EPERM, "under deny_io_uring io_uring_%s gave errno %d (%s), want EPERM" % (
            call, err, os.strerror(err) if err else "success"))
    for call in ("enter", "register"):
        check(plain[call] != errno.EPERM,
              "without the wrapper io_uring_%s already fails with EPERM: something else denies "
              "io_uring here, the case proves nothing" % call)
    rc, out, err = E.run_cmd([deny, "/bin/sh", "-c", "exit 7"], timeout=5)
    check(rc == 7, "deny_io_uring /bin/sh -c 'exit 7': exit %s, want 7 (the program's)\n%s" % (rc, err))
    rc, out, err = E.run_cmd([deny, os.path.join(h.dir, "no-such-program")], timeout=5)
    check(rc == 127 and "no-such-program" in err, "deny_io_uring of a missing program: exit %s, "
          "want 127 naming it: %r" % (rc, err))


@case
def io_backend_auto_falls_back(h):
    """Under deny_io_uring (io_uring_setup fails with EPERM), --io-backend auto
    with two shards falls back to epoll: UDP and TCP answers equal the
    upstream's (with and without EDNS, a kept-open TCP connection), the log
    has exactly one `io backend: epoll` line, naming the reason (Operation not
    permitted), and none saying uring; SIGTERM still exits 0."""
    deny = deny_io_uring()
    u = h.start_unbound()
    p = h.start_proxy(u, io_backend="auto", prefix=[deny])
    for qname, qtype in GOOD_QUESTIONS:
        query_and_compare(h, u, p, "udp", qname, qtype)
        query_and_compare(h, u, p, "udp", qname, qtype, edns=0)
        query_and_compare(h, u, p, "tcp", qname, qtype)
        query_and_compare(h, u, p, "tcp", qname, qtype, edns=0)
    s = E.tcp_connect(p.port)
    try:
        for qname, qtype in GOOD_QUESTIONS:
            q = E.make_query(qname, qtype)
            wire = q.to_wire()
            s.sendall(struct.pack("!H", len(wire)) + wire)
            resp = E.tcp_read_msg(s, time.monotonic() + 2.0)
            E.check_same_answer("TCP (kept-open conn) %s %s" % (qname, qtype), resp, wire,
                                u.reference(qname, qtype))
    finally:
        s.close()
    check(p.alive(), "dotproxy exited after the queries (rc=%s)" % p.proc.returncode)
    lines = [line for line in stderr_lines(p) if LOG_EPOLL in line]
    check(len(lines) == 1, "want exactly one %r log line (one for the process, not one per shard), "
          "got %d:\n  %s" % (LOG_EPOLL, len(lines), "\n  ".join(lines)))
    check(any(r in lines[0] for r in EPERM_REASONS),
          "the fallback line does not give the reason (%s): %r" % (" or ".join(EPERM_REASONS), lines[0]))
    uring = [line for line in stderr_lines(p) if LOG_URING in line]
    check(not uring, "io_uring was refused, yet the log says %r:\n  %s" % (LOG_URING, "\n  ".join(uring)))
    print("fallback logged: %s" % lines[0])
    rc, secs = p.stop()
    check(rc == 0, "SIGTERM on the epoll backend: exit %s after %.2f s, want 0" % (rc, secs))


@case
def io_backend_uring_fails_hard(h):
    """Under deny_io_uring, --io-backend uring exits non-zero (not by a
    signal, not by being killed) within 5 s, with exactly one error line
    (informational log lines aside) that mentions io_uring."""
    deny = deny_io_uring()
    exe = h.need_exe()
    # The upstream is a loopback port with nothing listening: the proxy must
    # never get as far as using it.
    argv = [deny, exe] + _serving_args(h, free_port(), free_port()) + ["--io-backend", "uring"]
    t0 = time.monotonic()
    rc, out, err = E.run_cmd(argv, timeout=5)
    secs = time.monotonic() - t0
    check(rc is not None, "--io-backend uring with io_uring refused: still running after 5 s (killed)\n%s" % err)
    check(rc >= 0, "--io-backend uring with io_uring refused: killed by signal %d\n%s" % (-rc, err))
    check(rc not in (126, 127) or not err.startswith("deny_io_uring:"),
          "the wrapper failed, not dotproxy: exit %d: %s" % (rc, err))
    check(rc != 0, "--io-backend uring with io_uring refused: exit 0 (want non-zero)\n%s" % err)
    errors = [line for line in err.splitlines()
              if line.strip() and not re.search(r"\bdotproxy (info|debug):", line)]
    check(len(errors) == 1, "want one error line, got %d (exit %d):\n  %s" % (
        len(errors), rc, "\n  ".join(errors) or "<none>"))
    check("io_uring" in errors[0], "the error does not mention io_uring: %r" % errors[0])
    print("exit %d after %.2f s: %s" % (rc, secs, errors[0]))


@case
def io_backend_default_is_uring_here(h):
    """Without the wrapper and without --io-backend, on a machine that can
    create a ring (else skip): the log says `io backend: uring`, never epoll,
    and the proxy answers."""
    ok, why = can_create_ring()
    if not ok:
        raise CaseSkip("this machine cannot create an io_uring (%s)" % why)
    u = h.start_unbound()
    p = h.start_proxy(u, io_backend=None)
    query_and_compare(h, u, p, "udp", "a.example.test.", "A")
    query_and_compare(h, u, p, "tcp", "a.example.test.", "A")
    lines = wait_for_line(p, LOG_URING, 3.0)
    check(lines, "no %r line in the log:\n%s" % (LOG_URING, p.stderr_text()))
    epoll = [line for line in stderr_lines(p) if LOG_EPOLL in line]
    check(not epoll, "the default fell back to epoll on a machine that can create rings:\n  %s" % (
        "\n  ".join(epoll)))
    print("default backend logged: %s" % lines[0])


@case
def io_backend_bad_value(h):
    """`--io-backend poll --check-config` exits 2 naming the flag, while
    `auto` and `epoll` pass --check-config (so the refusal is of the value,
    not of an unknown flag); `io_backend = "poll"` in a TOML file names
    FILE:LINE and DOTPROXY_IO_BACKEND=poll names the variable, while "epoll"
    passes in both."""
    exe = h.need_exe()
    base = _serving_args(h, free_port(), free_port())
    problems = []
    rc, out, err = E.run_cmd([exe, "--io-backend", "poll", "--check-config"] + base, timeout=5)
    if rc != 2:
        problems.append("--io-backend poll --check-config: exit %s, want 2; stderr %r" % (rc, err[:300]))
    elif "io-backend" not in err:
        problems.append("--io-backend poll: stderr does not name the flag: %r" % err[:300])
    for good in ("auto", "epoll"):
        rc, out, err = E.run_cmd([exe, "--io-backend", good, "--check-config"] + base, timeout=5)
        if rc != 0:
            problems.append("--io-backend %s --check-config: exit %s, want 0; stderr %r" % (good, rc, err[:300]))
    good_conf = os.path.join(h.dir, "good-backend.toml")
    with open(good_conf, "w") as f:
        f.write("threads = 1\nio_backend = \"epoll\"\n")
    rc, out, err = E.run_cmd([exe, "--config", good_conf, "--check-config"] + base, timeout=5)
    if rc != 0:
        problems.append("io_backend = \"epoll\" in a file: exit %s, want 0; stderr %r" % (rc, err[:300]))
    rc, out, err = E.run_cmd([exe, "--check-config"] + base, timeout=5,
                             env_extra={"DOTPROXY_IO_BACKEND": "epoll"})
    if rc != 0:
        problems.append("DOTPROXY_IO_BACKEND=epoll: exit %s, want 0; stderr %r" % (rc, err[:300]))
    conf = os.path.join(h.dir, "backend.toml")
    with open(conf, "w") as f:
        f.write("# bad backend\nthreads = 1\nio_backend = \"poll\"\n")
    rc, out, err = E.run_cmd([exe, "--config", conf, "--check-config"] + base, timeout=5)
    if rc in (0, None) or rc < 0:
        problems.append("io_backend = \"poll\" in %s: exit %s, want > 0" % (conf, rc))
    elif "backend.toml:3" not in err:
        problems.append("io_backend = \"poll\": stderr does not say backend.toml:3: %r" % err[:300])
    rc, out, err = E.run_cmd([exe, "--check-config"] + base, timeout=5,
                             env_extra={"DOTPROXY_IO_BACKEND": "poll"})
    if rc in (0, None) or rc < 0:
        problems.append("DOTPROXY_IO_BACKEND=poll: exit %s, want > 0" % rc)
    elif "DOTPROXY_IO_BACKEND" not in err:
        problems.append("DOTPROXY_IO_BACKEND=poll: stderr does not name the variable: %r" % err[:300])
    check(not problems, "bad io backend values:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------


def main():
    global _deny_path
    E.own_cases_only(_INHERITED)
    # --deny-io-uring is ours; the harness's main() parses the rest.
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--deny-io-uring")
    ap.add_argument("--dotproxy")
    ours, rest = ap.parse_known_args()
    _deny_path = ours.deny_io_uring
    if not _deny_path and ours.dotproxy:
        _deny_path = os.path.join(os.path.dirname(os.path.abspath(ours.dotproxy)),
                                  "tests", "e2e", "deny_io_uring")
    sys.argv = [sys.argv[0]] + rest + (["--dotproxy", ours.dotproxy] if ours.dotproxy else [])
    # Each case picks its backend; the e2e_epoll suite's variable must not
    # add a second --io-backend to the proxies started here.
    os.environ.pop(E.IO_BACKEND_ENV, None)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
