#!/usr/bin/python3
"""Checks systemd/dotproxy.service and dotproxy.socket offline (no PID 1):

- `systemd-analyze verify` accepts both (ExecStart pointed at the built binary);
- `systemd-analyze security --offline=true` rates the service's exposure at
  or below MAX_EXPOSURE (measured: 3.7 before the hardening of issue 8, 1.5
  after);
- the SystemCallFilter= lines, expanded with `systemd-analyze
  syscall-filter`, allow every system call dotproxy needs (io_uring_setup,
  io_uring_enter, io_uring_register, the epoll and socket calls,
  sched_setaffinity ...);
- the service keeps Type=notify, NotifyAccess=main, WatchdogSec= and
  ExecReload=, and the socket unit listens on UDP and TCP 127.0.0.1:53 and
  [::1]:53 with ReusePort=yes for dotproxy.service.

    check_units.py REPO_ROOT DOTPROXY_BINARY

Exit 0 pass, 1 fail, 77 skip (no systemd-analyze).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

MAX_EXPOSURE = 1.5  # systemd 252's scale, 0.0 (best) to 10.0
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

# What dotproxy calls (glibc names resolved to the syscalls it issues).
NEEDED_SYSCALLS = [
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
    "socket", "bind", "listen", "accept4", "connect", "shutdown",
    "setsockopt", "getsockopt", "getsockname", "getpeername",
    "recvmmsg", "sendmmsg", "recvmsg", "sendmsg", "recvfrom", "sendto",
    "read", "write", "close", "fcntl", "mmap", "munmap", "futex",
    "sched_getaffinity", "sched_setaffinity", "prlimit64", "sysinfo",
    "rt_sigprocmask", "rt_sigtimedwait", "kill", "getrandom", "clone3", "clone",
]

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def run(args):
    p = subprocess.run([SYSTEMD_ANALYZE] + args, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    return p.returncode, p.stdout.decode(errors="replace")


def unit_settings(path):
    """[(section, key, value)] in file order."""
    out, section = [], None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            out.append((section, key.strip(), value.strip()))
    return out


_groups = {}


def expand(name):
    """The syscalls a filter item names (a @group, recursively, or one call)."""
    if not name.startswith("@"):
        return {name}
    if name not in _groups:
        rc, text = run(["syscall-filter", name])
        if rc != 0:
            fail("syscall-filter %s: %s" % (name, text.strip()))
            _groups[name] = set()
        else:
            items = set()
            for line in text.splitlines():
                word = line.strip()
                if not word or word.startswith("#") or word == name:
                    continue
                items |= expand(word) if word.startswith("@") else {word}
            _groups[name] = items
    return _groups[name]


def allowed_syscalls(settings):
    """Applies SystemCallFilter= lines in order, as systemd does: the first
    line decides allow-list or deny-list; later lines add or (with ~) remove."""
    allowed, allow_list = set(), None
    for section, key, value in settings:
        if section != "Service" or key != "SystemCallFilter":
            continue
        deny = value.startswith("~")
        items = set()
        for word in value.lstrip("~").split():
            items |= expand(word)
        if allow_list is None:
            allow_list = not deny
        if deny:
            allowed -= items
        else:
            allowed |= items
    return allow_list, allowed


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    repo, binary = sys.argv[1], os.path.abspath(sys.argv[2])
    if SYSTEMD_ANALYZE is None:
        print("SKIP: no systemd-analyze")
        return 77
    service = os.path.join(repo, "systemd", "dotproxy.service")
    socket_unit = os.path.join(repo, "systemd", "dotproxy.socket")
    with tempfile.TemporaryDirectory(prefix="dotproxy-units-") as d:
        # verify checks that ExecStart= exists: point it at the build.
        with open(service) as f:
            text = f.read().replace("/usr/local/bin/dotproxy", binary)
        local_service = os.path.join(d, "dotproxy.service")
        with open(local_service, "w") as f:
            f.write(text)
        shutil.copy(socket_unit, os.path.join(d, "dotproxy.socket"))
        rc, out = run(["verify", os.path.join(d, "dotproxy.socket"), local_service])
        if rc != 0 or out.strip():
            fail("systemd-analyze verify (rc %s):\n%s" % (rc, out))
        else:
            print("verify: OK")
        threshold = int(round(MAX_EXPOSURE * 10))
        rc, out = run(["security", "--offline=true", "--threshold=%d" % threshold, local_service])
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        if m is None:
            fail("no exposure level in:\n" + out[-2000:])
        else:
            print("exposure: %s (at most %.1f)" % (m.group(1), MAX_EXPOSURE))
            if rc != 0 or float(m.group(1)) > MAX_EXPOSURE:
                fail("exposure %s above %.1f (rc %s):\n%s" % (
                    m.group(1), MAX_EXPOSURE, rc,
                    "\n".join(l for l in out.splitlines() if "\u2717" in l)))

    settings = unit_settings(service)
    allow_list, allowed = allowed_syscalls(settings)
    if not allow_list:
        fail("SystemCallFilter= is not an allow list")
    missing = [s for s in NEEDED_SYSCALLS if s not in allowed]
    if missing:
        fail("SystemCallFilter= refuses system calls dotproxy makes: " + " ".join(missing))
    else:
        print("SystemCallFilter= allows all %d needed system calls (io_uring included); "
              "%d allowed in all" % (len(NEEDED_SYSCALLS), len(allowed)))
    for denied in ("reboot", "mount", "init_module", "ptrace", "setuid", "ioprio_set"):
        if denied in allowed:
            fail("SystemCallFilter= allows %s" % denied)

    service_keys = {(k, v) for s, k, v in settings if s == "Service"}
    for key, value in (("Type", "notify"), ("NotifyAccess", "main"), ("WatchdogSec", "10s"),
                       ("ExecReload", "/bin/kill -HUP $MAINPID"),
                       ("SystemCallErrorNumber", "EPERM")):
        if (key, value) not in service_keys:
            fail("dotproxy.service lacks %s=%s" % (key, value))
    sock = unit_settings(socket_unit)
    sock_keys = [(k, v) for s, k, v in sock if s == "Socket"]
    for key in ("ListenDatagram", "ListenStream"):
        for address in ("127.0.0.1:53", "[::1]:53"):
            if (key, address) not in sock_keys:
                fail("dotproxy.socket lacks %s=%s" % (key, address))
    for key, value in (("ReusePort", "yes"), ("Service", "dotproxy.service")):
        if (key, value) not in sock_keys:
            fail("dotproxy.socket lacks %s=%s" % (key, value))
    if failures:
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
