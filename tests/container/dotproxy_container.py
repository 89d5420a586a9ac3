#!/usr/bin/python3
"""Container test: the dotproxy image (Dockerfile at the repo root).

container_default_seccomp_epoll: under podman's DEFAULT seccomp profile,
which denies io_uring_setup, dotproxy's default `--io-backend auto` must fall
back to epoll, say so once in its log with the reason, and answer over UDP
and TCP; `--io-backend uring` must exit non-zero with one line about io_uring.

container_seccomp_profile_uring: with the shipped profile
deploy/seccomp/dotproxy.json (the default plus the io_uring syscalls) and the
Kubernetes manifests' hardening (no-new-privileges, every capability dropped
but NET_BIND_SERVICE, read-only root), dotproxy must log `io backend: uring`
and answer.

Both check the image's configuration (/etc/dotproxy/dotproxy.toml turns the
metrics endpoint on) and that /health and /ready answer 200 and /metrics
counts the queries. With `--network host` the endpoint is moved to a free
127.0.0.1 port by DOTPROXY_METRICS (the environment layer), so the test never
binds the host's 0.0.0.0:9153.

Uses the harness in tests/e2e/dotproxy_e2e.py: a test CA made now, Unbound
serving static data over DoT on 127.0.0.1 (it cannot recurse). The container
runs with `--network host` and its dotproxy gets `--listen 127.0.0.1:PORT
--upstream 127.0.0.1:UNBOUND_DOT_PORT#upstream.test --ca-file /ca.pem` (the
test CA, bind-mounted read-only): it never sees the public default upstreams.
Every wait is bounded; every container this script starts is named
dotproxy-test-<pid>[-uring] and removed by that name on exit.

    dotproxy_container.py --list
    dotproxy_container.py --image dotproxy-test --case container_default_seccomp_epoll [--keep]
    dotproxy_container.py --image dotproxy-test --case container_seccomp_profile_uring

Normally run by run_container_test.sh (installs podman, makes the base image,
builds the image). Needs root and podman (else exit 77). podman runs with
`--runtime runc` and lowered ulimits, as the platform notes (PLATFORM.md) say
this sandbox requires. Exit status: 0 pass, 1 fail, 77 skip.
"""

import argparse
import atexit
import os
import re
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import (  # noqa: E402
    GOOD_QUESTIONS, LOOPBACK4, TLS_NAME, CaseFailure, CaseSkip, case, check, free_port,
    query_and_compare,
)
from dotproxy_e2e_metrics import http_get, wait_status  # noqa: E402

# Only the cases below are listed and run by this script.
_INHERITED = set(E.CASES)

PODMAN = shutil.which("podman") or "/usr/bin/podman"
# podman flags this sandbox needs (PLATFORM.md "Operations tooling"): crun fails
# on the hybrid cgroups, and raising rlimits is not permitted.
PODMAN_GLOBAL = ["--runtime", "runc"]
RUN_FLAGS = ["--network", "host", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]

LOG_EPOLL = "io backend: epoll"
LOG_FALLBACK = "io backend: epoll (auto: io_uring refused:"
LOG_URING = "io backend: uring"
# How a seccomp profile refuses io_uring_setup: podman's default profile
# (containers-common's seccomp.json: defaultAction SCMP_ACT_ERRNO,
# defaultErrnoRet 38) gives ENOSYS; Docker's and containerd's give EPERM.
DENIAL_REASONS = ("Function not implemented", "ENOSYS", "Operation not permitted", "EPERM")
CAP_NET_BIND_SERVICE = 10

SRC = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SECCOMP_PROFILE = os.path.join(SRC, "deploy", "seccomp", "dotproxy.json")
IMAGE_CONFIG = "/etc/dotproxy/dotproxy.toml"
# What deploy/kubernetes asks of the runtime: allowPrivilegeEscalation false,
# capabilities drop ALL add NET_BIND_SERVICE, readOnlyRootFilesystem, the
# shipped seccomp profile.
HARDENED_FLAGS = ["--security-opt", "seccomp=" + SECCOMP_PROFILE,
                  "--security-opt", "no-new-privileges",
                  "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE", "--read-only"]

_image = "dotproxy-test"
_label = None  # --label KEY=VALUE for every container (run_container_test.sh's run id)
_containers = []  # names of the containers this process started


def podman(*args, timeout=30.0):
    """(rc, stdout, stderr) of `podman --runtime runc ARGS`; rc None on a hang."""
    return E.run_cmd([PODMAN] + PODMAN_GLOBAL + list(args), timeout=timeout)


def remove_container(name):
    """Stop and remove our container `name` (by name); quiet if it is gone."""
    podman("rm", "--force", "--time", "2", name, timeout=30)
    if name in _containers:
        _containers.remove(name)


def _remove_all():
    for name in list(_containers):
        remove_container(name)


atexit.register(_remove_all)


def label_args():
    return ["--label", _label] if _label else []


def container_state(name):
    """(status, exit code, pid) from podman inspect, or (None, None, None)."""
    rc, out, _ = podman("container", "inspect", "--format",
                        "{{.State.Status}} {{.State.ExitCode}} {{.State.Pid}}", name, timeout=15)
    if rc != 0 or not out.split():
        return None, None, None
    status, code, pid = (out.split() + ["", "", ""])[:3]
    return status, int(code) if code.lstrip("-").isdigit() else None, int(pid) if pid.isdigit() else 0


def container_logs(name):
    rc, out, err = podman("logs", name, timeout=15)
    return out + err if rc == 0 else ""


def proc_status(pid):
    """{field: value} of /proc/PID/status on the host (the container's main process)."""
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return fields


def need_podman():
    if os.geteuid() != 0:
        raise CaseSkip("needs root: podman here runs rootful (see PLATFORM.md)")
    if not os.access(PODMAN, os.X_OK):
        raise CaseSkip("podman not installed (run_container_test.sh installs it)")
    rc, out, err = podman("image", "exists", _image, timeout=15)
    if rc != 0:
        raise CaseSkip("image %s not present (run_container_test.sh builds it): %s" % (
            _image, (err or out).strip()))


class ContainerProxy:
    """What query_and_compare needs of a proxy: its port."""

    def __init__(self, name, port):
        self.name = name
        self.port = port


def wait_answer(name, port, timeout):
    """Bounded: wait until the container's dotproxy gives a NOERROR answer."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        status, code, _ = container_state(name)
        check(status in ("running", "created", "configured", "initialized"),
              "container %s is %s (exit %s) before answering; its log:\n%s" % (
                  name, status or "gone", code, container_logs(name) or "<none: removed by --rm>"))
        wire, _ = E.udp_exchange(port, E.make_query("a.example.test.", "A").to_wire(), timeout=0.5)
        if wire is not None:
            last = wire
            if E.rcode_of(wire) == E.dns.rcode.NOERROR:
                return
        time.sleep(0.2)
    raise CaseFailure("the container's dotproxy gave no answer within %.0f s; last: %s\nlog:\n%s" % (
        timeout, E.describe(last), container_logs(name)))


def serving_args(h, port, upstream_port):
    """Loopback listen and the test's Unbound as the only upstream."""
    return ["--listen", "%s:%d" % (LOOPBACK4, port),
            "--upstream", "%s:%d#%s" % (LOOPBACK4, upstream_port, TLS_NAME),
            "--ca-file", "/ca.pem", "--threads", "1"]


def check_image_config(h):
    """The image's default --config turns the metrics endpoint on and
    passes --check-config (with a loopback upstream: nothing is contacted)."""
    rc, out, err = podman("run", "--rm", *label_args(), *RUN_FLAGS, "--entrypoint", "/bin/cat", _image,
                          IMAGE_CONFIG, timeout=60)
    check(rc == 0, "cat %s in the image: exit %s\n%s" % (IMAGE_CONFIG, rc, err))
    try:
        import tomllib
        conf = tomllib.loads(out)
    except ImportError:  # Python < 3.11: a line check
        conf = {"metrics_listen": m.group(1) for m in
                [re.search(r'^metrics_listen\s*=\s*"([^"]+)"', out, re.M)] if m}
    check(conf.get("metrics_listen", "").endswith(":9153"),
          "the image's %s does not turn metrics on at port 9153:\n%s" % (IMAGE_CONFIG, out))
    rc, out, err = podman("run", "--rm", *label_args(), *RUN_FLAGS, _image, "--config", IMAGE_CONFIG,
                          "--upstream", "%s:853#%s" % (LOOPBACK4, TLS_NAME), "--check-config",
                          timeout=60)
    check(rc == 0, "the image's config fails --check-config: exit %s\n%s%s" % (rc, out, err))
    print("image config %s: metrics_listen %s; --check-config OK" % (
        IMAGE_CONFIG, conf["metrics_listen"]))


def start_container(h, u, name, extra_run_flags=()):
    """A detached container of the image serving on a free loopback port
    against Unbound `u`, the metrics endpoint moved to a free loopback port.
    Returns (ContainerProxy, metrics port) once it answers."""
    ca = h.pki.ca_pem
    os.chmod(ca, 0o644)  # read by the image's non-root user
    port = free_port()
    metrics_port = free_port()
    _containers.append(name)
    argv = (["run", "--rm", "-d", "--name", name] + RUN_FLAGS + list(extra_run_flags)
            + label_args() + ["-v", "%s:/ca.pem:ro" % ca,
                              "-e", "DOTPROXY_METRICS=%s:%d" % (LOOPBACK4, metrics_port)]
            + [_image, "--config", IMAGE_CONFIG] + serving_args(h, port, u.dot_port))
    print("podman %s" % " ".join(PODMAN_GLOBAL + argv))
    t0 = time.monotonic()
    rc, out, err = podman(*argv, timeout=60)
    check(rc == 0, "podman run -d: exit %s\n%s%s" % (rc, out, err))
    wait_answer(name, port, 20.0)
    print("container answering %.1f s after podman run" % (time.monotonic() - t0))
    return ContainerProxy(name, port), metrics_port


def check_serving(h, u, p):
    """UDP and TCP answers equal the upstream's; returns the UDP queries sent."""
    udp = 0
    for qname, qtype in GOOD_QUESTIONS:
        query_and_compare(h, u, p, "udp", qname, qtype)
        query_and_compare(h, u, p, "tcp", qname, qtype)
        udp += 1
    query_and_compare(h, u, p, "udp", "a.example.test.", "A", edns=0)
    query_and_compare(h, u, p, "tcp", "a.example.test.", "A", edns=0)
    return udp + 1


def check_process(name, no_new_privs):
    """Non-root, only CAP_NET_BIND_SERVICE effective (the binary's file
    capability survived the multi-stage copy, and no-new-privileges keeps
    it when the runtime grants it)."""
    status, code, pid = container_state(name)
    check(status == "running", "container %s is %s (exit %s) after the queries" % (name, status, code))
    ps = proc_status(pid)
    uids = ps.get("Uid", "").split()
    check(uids and uids[0] != "0", "dotproxy in the container runs as uid %s, want non-root" % uids)
    cap_eff = int(ps.get("CapEff", "0"), 16)
    check(cap_eff == 1 << CAP_NET_BIND_SERVICE,
          "dotproxy's effective capabilities are %#x, want only CAP_NET_BIND_SERVICE (%#x): "
          "setcap on the binary lost?" % (cap_eff, 1 << CAP_NET_BIND_SERVICE))
    nnp = ps.get("NoNewPrivs", "?")
    check(nnp == ("1" if no_new_privs else "0"), "NoNewPrivs is %s, want %d" % (nnp, no_new_privs))
    print("container process: uid %s, CapEff %#x (cap_net_bind_service only), NoNewPrivs %s" % (
        uids[0], cap_eff, nnp))


def check_metrics_endpoint(metrics_port, udp_queries):
    """/health and /ready 200; /metrics counts at least the UDP queries."""
    for path in ("/health", "/ready"):
        status, body = wait_status(metrics_port, path, 200, 10.0)
        check(status == 200, "GET %s: %s %r, want 200" % (path, status, body[:200]))
    status, text = http_get(metrics_port, "/metrics")
    check(status == 200, "GET /metrics: %s %r" % (status, text[:200]))
    m = re.search(r"^dotproxy_udp_queries_total (\S+)$", text, re.M)
    check(m is not None, "/metrics has no dotproxy_udp_queries_total:\n%s" % text[:2000])
    check(float(m.group(1)) >= udp_queries, "dotproxy_udp_queries_total %s, want >= %d" % (
        m.group(1), udp_queries))
    print("metrics: /health 200, /ready 200, dotproxy_udp_queries_total %s" % m.group(1))


def check_backend_line(name, want_uring):
    logs = container_logs(name).splitlines()
    epoll = [line for line in logs if LOG_EPOLL in line]
    uring = [line for line in logs if LOG_URING in line]
    if want_uring:
        check(len(uring) == 1 and not epoll, "want exactly one %r line and no epoll line in "
              "podman logs, got:\n%s" % (LOG_URING, "\n".join(logs)))
        print("podman logs: %s" % uring[0].strip())
        return
    check(len(epoll) == 1, "want exactly one %r line in podman logs, got %d:\n%s" % (
        LOG_EPOLL, len(epoll), "\n".join(logs)))
    check(LOG_FALLBACK in epoll[0] and any(r in epoll[0] for r in DENIAL_REASONS),
          "the epoll line is not the auto fallback naming the seccomp denial (%s): %r" % (
              " or ".join(DENIAL_REASONS), epoll[0]))
    check(not uring, "the log says uring under the default seccomp profile:\n%s" % "\n".join(uring))
    print("podman logs: %s" % epoll[0].strip())


def stop_container(name):
    t1 = time.monotonic()
    rc, out, err = podman("stop", "--time", "5", name, timeout=30)
    check(rc == 0, "podman stop: exit %s: %s" % (rc, err))
    print("stopped in %.1f s" % (time.monotonic() - t1))
    remove_container(name)  # --rm has removed it; this only makes sure


@case
def container_default_seccomp_epoll(h):
    """In the dotproxy image under podman's default seccomp profile (no
    --security-opt: io_uring_setup denied), `--io-backend auto` (the default)
    serves on epoll: UDP and TCP answers equal the upstream's, `podman logs`
    has exactly one `io backend: epoll (auto: io_uring refused: ...)` line
    naming the denial (ENOSYS from podman's profile, EPERM from Docker's),
    and none saying uring; the process runs as a non-root user
    with only CAP_NET_BIND_SERVICE effective (the file capability survived the
    multi-stage copy). The image's config turns metrics on (port 9153) and
    passes --check-config; /health and /ready are 200 and /metrics counts the
    queries. Then `--io-backend uring` in the same kind of container
    exits non-zero within 30 s with exactly one error line about io_uring."""
    need_podman()
    check_image_config(h)
    u = h.start_unbound()
    name = "dotproxy-test-%d" % os.getpid()
    p, metrics_port = start_container(h, u, name)
    udp = check_serving(h, u, p)
    check_process(name, no_new_privs=False)
    check_backend_line(name, want_uring=False)
    check_metrics_endpoint(metrics_port, udp)
    stop_container(name)

    # --io-backend uring under the same profile: a hard failure, one line.
    uname = name + "-uring"
    _containers.append(uname)
    argv = (["run", "--rm", "--name", uname] + RUN_FLAGS + label_args()
            + ["-v", "%s:/ca.pem:ro" % h.pki.ca_pem] + [_image]
            + serving_args(h, free_port(), free_port()) + ["--io-backend", "uring"])
    t2 = time.monotonic()
    rc, out, err = podman(*argv, timeout=30)
    secs = time.monotonic() - t2
    remove_container(uname)
    check(rc is not None, "--io-backend uring in the container: still running after 30 s")
    check(rc not in (0, 125, 126, 127), "--io-backend uring in the container: exit %d "
          "(want dotproxy's non-zero exit; 125-127 are podman's own)\n%s%s" % (rc, out, err))
    lines = [line for line in (out + err).splitlines()
             if line.strip() and not re.search(r"\bdotproxy (info|debug):", line)]
    check(len(lines) == 1 and "io_uring" in lines[0],
          "--io-backend uring: want one error line about io_uring, got (exit %d):\n  %s" % (
              rc, "\n  ".join(lines) or "<none>"))
    print("--io-backend uring: exit %d after %.1f s: %s" % (rc, secs, lines[0].strip()))


@case
def container_seccomp_profile_uring(h):
    """With the shipped seccomp profile (deploy/seccomp/dotproxy.json: the
    default profile plus io_uring_setup/enter/register) and the Kubernetes
    manifests' hardening (--security-opt no-new-privileges, --cap-drop ALL
    --cap-add NET_BIND_SERVICE, --read-only), `--io-backend auto` runs on
    io_uring: exactly one `io backend: uring` line and no epoll line; UDP and
    TCP answers equal the upstream's; non-root with only
    CAP_NET_BIND_SERVICE effective and NoNewPrivs 1; /health and /ready 200,
    /metrics counts the queries."""
    need_podman()
    check(os.path.isfile(SECCOMP_PROFILE), "no seccomp profile at %s" % SECCOMP_PROFILE)
    u = h.start_unbound()
    name = "dotproxy-test-%d-profile" % os.getpid()
    p, metrics_port = start_container(h, u, name, HARDENED_FLAGS)
    udp = check_serving(h, u, p)
    check_process(name, no_new_privs=True)
    check_backend_line(name, want_uring=True)
    check_metrics_endpoint(metrics_port, udp)
    stop_container(name)


def main():
    global _image, _label
    E.own_cases_only(_INHERITED)
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--image", default=_image)
    ap.add_argument("--label")
    ours, rest = ap.parse_known_args()
    _image, _label = ours.image, ours.label
    sys.argv = [sys.argv[0]] + rest
    # The image's dotproxy picks its own backend; never add --io-backend.
    os.environ.pop(E.IO_BACKEND_ENV, None)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
