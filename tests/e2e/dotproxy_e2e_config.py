#!/usr/bin/python3
"""End-to-end tests of dotproxy's configuration refusals: what the binary does
with a --config that is not a regular file, an empty list, a huge value and a
duplicate upstream. Uses the harness in dotproxy_e2e.py (same rules: loopback
only, every wait bounded, every child killed by PID). No case sends DNS
traffic: each run either exits at once or is given loopback addresses only.

    dotproxy_e2e_config.py --list
    dotproxy_e2e_config.py --dotproxy build/dotproxy --case config_not_regular [--keep]

Exit status: 0 pass, 1 fail, 77 skip.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import LOOPBACK4, TLS_NAME, case, check, free_port  # noqa: E402


def _base(h):
    """Loopback listen and upstream, so a run that wrongly starts serving
    cannot reach anything but this machine."""
    return ["--listen", "%s:%d" % (LOOPBACK4, free_port()),
            "--upstream", "%s:853#%s" % (LOOPBACK4, TLS_NAME), "--ca-file", h.pki.ca_pem]


def _refused(label, rc, err, want, problems, max_len=None):
    """Records a problem unless the run exited 2 with one stderr line holding
    `want` (and, given max_len, no longer than that)."""
    lines = err.strip().splitlines()
    if rc is None:
        problems.append("%s: still running after 5 s" % label)
    elif rc != 2:
        problems.append("%s: exit %s, want 2; stderr %r" % (label, rc, err[:300]))
    elif len(lines) != 1:
        problems.append("%s: %d stderr lines, want 1: %r" % (label, len(lines), err[:300]))
    elif want not in lines[0]:
        problems.append("%s: stderr does not say %r: %r" % (label, want, err[:300]))
    elif max_len is not None and len(lines[0]) > max_len:
        problems.append("%s: stderr line is %d bytes: %r" % (label, len(lines[0]), err[:300]))


@case
def config_not_regular(h):
    """--config given a directory, /dev/zero or a FIFO exits 2 at once with one
    line saying what it is, with or without --check-config (never serves,
    never waits for a FIFO writer)."""
    exe = h.need_exe()
    fifo = os.path.join(h.dir, "fifo.toml")
    os.mkfifo(fifo)
    problems = []
    for path, want in ((h.dir, "a directory"), ("/dev/zero", "a character device"),
                       (fifo, "a FIFO")):
        for extra in (["--check-config"], E.io_backend_args()):
            rc, out, err = E.run_cmd([exe, "--config", path] + _base(h) + extra, timeout=5)
            _refused("--config %s %s" % (path, " ".join(extra)), rc, err, want, problems)
    check(not problems, "non-regular --config:\n  " + "\n  ".join(problems))


@case
def config_empty_list(h):
    """listen = [], allow = [] and upstream = [] in the file are errors naming
    FILE:LINE, not a fall-back to the default lists (even with --upstream)."""
    exe = h.need_exe()
    problems = []
    for key in ("listen", "allow", "upstream"):
        path = os.path.join(h.dir, "empty-%s.toml" % key)
        with open(path, "w") as f:
            f.write("# empty %s\n%s = []\n" % (key, key))
        rc, out, err = E.run_cmd([exe, "--config", path, "--check-config"] + _base(h), timeout=5)
        _refused("%s = []" % key, rc, err, "%s:2: '%s' is an empty list" % (path, key), problems)
    check(not problems, "empty lists:\n  " + "\n  ".join(problems))


@case
def config_huge_value(h):
    """A 10 MB ca_file value in the file, a 100 KB --ca-file and a 100 KB
    DOTPROXY_UPSTREAMS each give one short stderr line naming FILE:LINE, the
    flag or the variable."""
    exe = h.need_exe()
    problems = []
    path = os.path.join(h.dir, "huge.toml")
    with open(path, "w") as f:
        f.write('threads = 1\nca_file = "%s"\n' % ("x" * (10 << 20)))
    rc, out, err = E.run_cmd([exe, "--config", path, "--check-config"] + _base(h)[:4], timeout=10)
    _refused("10 MB ca_file", rc, err, "%s:2: 'ca_file'" % path, problems, 200 + len(path))
    # argv and environment strings are capped at 128 KiB each by the kernel.
    big = "x" * (100 << 10)
    rc, out, err = E.run_cmd([exe, "--check-config"] + _base(h)[:4] + ["--ca-file", big], timeout=5)
    _refused("100 KB --ca-file", rc, err, "--ca-file: ", problems, 200)
    rc, out, err = E.run_cmd([exe, "--check-config"] + _base(h)[:2] + ["--ca-file", h.pki.ca_pem],
                             timeout=5, env_extra={"DOTPROXY_UPSTREAMS": big})
    _refused("100 KB DOTPROXY_UPSTREAMS", rc, err, "DOTPROXY_UPSTREAMS: ", problems, 200)
    check(not problems, "huge values:\n  " + "\n  ".join(problems))


@case
def config_duplicate_upstream(h):
    """The same upstream (address and TLS name) twice exits 2 under
    --check-config, from flags, from the variable and from the file."""
    exe = h.need_exe()
    spec = "%s:853#%s" % (LOOPBACK4, TLS_NAME)
    listen = ["--listen", "%s:%d" % (LOOPBACK4, free_port()), "--ca-file", h.pki.ca_pem]
    path = os.path.join(h.dir, "dup.toml")
    with open(path, "w") as f:
        for address in ("%s" % LOOPBACK4, "%s:853" % LOOPBACK4):
            f.write('[[upstream]]\naddress = "%s"\nname = "%s"\n' % (address, TLS_NAME))
    problems = []
    rc, out, err = E.run_cmd([exe, "--check-config", "--upstream", spec, "--upstream", spec] + listen,
                             timeout=5)
    _refused("two --upstream", rc, err, "configured twice", problems)
    rc, out, err = E.run_cmd([exe, "--check-config"] + listen, timeout=5,
                             env_extra={"DOTPROXY_UPSTREAMS": "%s,%s" % (spec, spec)})
    _refused("DOTPROXY_UPSTREAMS twice", rc, err, "configured twice", problems)
    rc, out, err = E.run_cmd([exe, "--check-config", "--config", path] + listen, timeout=5)
    _refused("[[upstream]] twice", rc, err, "configured twice", problems)
    check(not problems, "duplicate upstreams:\n  " + "\n  ".join(problems))


def main():
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
