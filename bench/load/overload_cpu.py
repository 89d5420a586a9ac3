#!/usr/bin/python3
"""CPU-bound overload, dotproxy side by side with its peers and a model.

The rig of the e2e case protect_overload_cpu (tests/e2e/dotproxy_e2e_overload.py),
for every target in one run: the target on CPU 0 in a cgroup limited to
--quota percent of it (10: a slow CPU), the DoT upstream (Unbound, the e2e
harness's test CA and zone) and udp_flood (an open-loop generator of unique
names from 16 sources in 127.0.1.0/24) at real-time priority on CPU 1.
For each target: capacity C is the best NOERROR rate of a ramp (up to the
first step that is not 90% answered); then 0.1, 1, 2 and 4 C are offered
(4 C for --long seconds), each step once a probe is answered within 100 ms
(a target that queued the last step's flood starts the next one empty).
One table: NOERROR/s as a share of the target's own C, and the latency of
what was answered (mean, p50, p99).

Targets (--targets, comma-separated; a missing program is skipped):
  dotproxy     the binary under test, --threads 1 --cache-size 0
  dotproxy_base  another dotproxy binary (--base), the same arguments
  dnsdist      dnsdist 1.7, one DoT backend, packet cache off
  unbound_fwd  Unbound 1.17, one thread, forward-tls-upstream
  kresd        Knot Resolver 5, policy.TLS_FORWARD
  model        bench/load/reflector.c spinning dotproxy's CPU per query
               (1e9 * share / C ns, from dotproxy's C in this run) with a
               4 MiB receive buffer: a server with no upstream round trip
  model_cut    the same with the receive buffer dotproxy cuts to while its
               intake stands (about 6 ms of service): the rig's floor

Under a CFS quota a saturated server runs about quota x period (1 ms)
in every 10 ms period; what arrives while it is throttled waits for the
next slice, and a full socket buffer drops the newest datagrams (tail
drop), so what it keeps waited longest. The model rows show what that
costs a server that does nothing else. The kernel allows no finer quota
(1 ms is its least quota and period), so --thief BUSY_US/IDLE_US shares
CPU 0 another way: cpu_thief.c at real-time priority spins BUSY_US of
every BUSY_US + IDLE_US (900/100: about 10% left in 0.1 ms slices), a slow
CPU without a throttled period to wait out.

For the dotproxy targets, where the p50 goes: their histograms (scraped
before and after each step; bucket upper bounds) of the time from the loop
turn that read a query to the one that answered it, and of the upstream's
answer time within it (which includes the shard's own delay in reading
that answer). The rest of the client's latency is the wait in the socket.

    bench/load/overload_cpu.py --dotproxy build/dotproxy \\
        --udp-flood build/tests/e2e/udp_flood [--targets dotproxy,dnsdist,model_cut]
        [--thief 900/100] [--dotproxy-args "--max-inflight-per-connection 30"]

Needs root (a cpu cgroup, chrt, renice), 2 CPUs, /usr/bin/python3 with
python3-dnspython (the e2e harness), unbound, openssl, cc. Loopback only;
every child is stopped by PID. About 1 minute per target.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "e2e"))

import dotproxy_e2e as E  # noqa: E402
import dotproxy_e2e_metrics as M  # noqa: E402
import dotproxy_e2e_overload as O  # noqa: E402
from dotproxy_e2e_features import start_unbound_x  # noqa: E402

CUT_SERVICE_S = 0.006  # UdpFrontend::ShrinkReceiveBuffers: an eighth of overload_wait
DATAGRAM_TRUESIZE = 1024


class Target:
    def __init__(self, name, argv, workdir):
        self.name = name
        self.out = open(os.path.join(workdir, name + ".log"), "wb")
        self.proc = E.spawn(["taskset", "-c", "0"] + argv, self.out, subprocess.STDOUT)

    def stop(self):
        E.stop_process(self.proc)
        self.out.close()


def wait_answering(target, port, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            raise RuntimeError("%s exited (rc=%s)" % (target.name, target.proc.returncode))
        wire, _ = E.udp_exchange(port, E.make_query("ready.wild.example.test.", "A").to_wire(),
                                 timeout=0.5)
        if wire is not None and E.rcode_of(wire) == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("%s did not answer within %.0f s" % (target.name, timeout))


def start_target(name, args, h, u, workdir, model_spin_ns, model_cap):
    port = E.free_port()
    ca = h.pki.ca_pem
    up = "%s:%d" % (E.LOOPBACK4, u.dot_port)
    d = os.path.join(workdir, name)
    os.mkdir(d)
    if name in ("dotproxy", "dotproxy_base"):
        exe = args.dotproxy if name == "dotproxy" else args.base
        metrics_port = E.free_port()
        argv = [exe, "--listen", "%s:%d" % (E.LOOPBACK4, port), "--upstream",
                "%s#%s" % (up, E.TLS_NAME), "--ca-file", ca, "--threads", "1",
                "--cache-size", "0", "--metrics", "%s:%d" % (E.LOOPBACK4, metrics_port)
                ] + E.io_backend_args() + args.dotproxy_args.split()
    elif name == "dnsdist":
        conf = os.path.join(d, "dnsdist.conf")
        with open(conf, "w") as f:
            f.write('setSecurityPollSuffix("")\nsetLocal("%s:%d")\nsetACL({"127.0.0.0/8"})\n'
                    'newServer({address="%s", tls="openssl", subjectName="%s", caStore="%s", '
                    'validateCertificates=true})\nsetMaxTCPClientThreads(1)\n' % (
                        E.LOOPBACK4, port, up, E.TLS_NAME, ca))
        argv = ["dnsdist", "--supervised", "--disable-syslog", "-C", conf]
    elif name == "unbound_fwd":
        conf = os.path.join(d, "unbound.conf")
        with open(conf, "w") as f:
            f.write("""server:
  verbosity: 1
  interface: %s@%d
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "%s"
  pidfile: "%s/unbound.pid"
  use-syslog: no
  logfile: ""
  num-threads: 1
  module-config: "iterator"
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  local-zone: "test." nodefault
  tls-cert-bundle: "%s"
  num-queries-per-thread: 4096
  outgoing-range: 8192
  minimal-responses: yes
  qname-minimisation: no
  max-reuse-tcp-queries: 1000000
  tcp-reuse-timeout: 120000
forward-zone:
  name: "."
  forward-addr: %s@%d#%s
  forward-tls-upstream: yes
remote-control:
  control-enable: no
""" % (E.LOOPBACK4, port, d, d, ca, E.LOOPBACK4, u.dot_port, E.TLS_NAME))
        argv = ["unbound", "-d", "-c", conf]
    elif name == "kresd":
        conf = os.path.join(d, "config.lua")
        with open(conf, "w") as f:
            f.write("net.ipv6 = false\nnet.listen('%s', %d, { kind = 'dns' })\n"
                    "cache.open(100 * MB, 'lmdb://%s/cache')\ntrust_anchors.remove('.')\n"
                    "policy.add(policy.all(policy.TLS_FORWARD({{'%s@%d', hostname='%s', "
                    "ca_file='%s'}})))\n" % (E.LOOPBACK4, port, d, E.LOOPBACK4, u.dot_port,
                                             E.TLS_NAME, ca))
        argv = ["kresd", "-n", "-c", conf, d]
    elif name in ("model", "model_cut"):
        exe = os.path.join(workdir, "reflector")
        rcvbuf = 4 << 20
        if name == "model_cut":
            # As ShrinkReceiveBuffers sizes it: halved because setsockopt doubles.
            rcvbuf = int(max(32, model_cap * CUT_SERVICE_S) * DATAGRAM_TRUESIZE / 2)
        argv = [exe, E.LOOPBACK4, str(port), str(int(model_spin_ns)), str(rcvbuf)]
    else:
        raise ValueError(name)
    t = Target(name, argv, workdir)
    t.port = port
    t.metrics_port = metrics_port if name in ("dotproxy", "dotproxy_base") else None
    return t


def histogram(t, metric, labels):
    """Cumulative counts by upper bound (seconds) of dotproxy's histogram
    `metric` for the samples whose labels include `labels`."""
    _, samples = M.scrape(t)
    out = {}
    for key, value in samples.items():
        if not key.startswith(metric + "_bucket{") or labels not in key:
            continue
        le = key.split('le="', 1)[1].split('"', 1)[0]
        bound = float("inf") if le == "+Inf" else float(le)
        out[bound] = out.get(bound, 0.0) + value
    return out


def median_between(before, after):
    """The upper bound of the bucket holding the median of what was
    recorded between two scrapes (ms), or None."""
    bounds = sorted(after)
    total = after[bounds[-1]] - before.get(bounds[-1], 0.0) if bounds else 0
    if total <= 0:
        return None
    for b in bounds:
        if after[b] - before.get(b, 0.0) >= total / 2:
            return b * 1000
    return None


# Where dotproxy's latency goes: inside the proxy (from the loop iteration
# that read a query to the one that answered it) and the upstream's part of
# that (from sending to the answer).
INSIDE = ("dotproxy_query_duration_seconds", 'source="upstream"')
UPSTREAM = ("dotproxy_upstream_response_duration_seconds", "upstream=")


def drain(t, timeout=20.0):
    """Waits until a probe is answered within 100 ms: a target that queued
    the last step's flood starts the next one empty (up to `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wire, _ = E.udp_exchange(t.port, E.make_query("drain.wild.example.test.", "A").to_wire(),
                                 timeout=0.1)
        if wire is not None:
            return
        time.sleep(0.2)


def measure(flood, quota, t, long_seconds):
    if quota is not None:
        O._confine(quota, t.proc.pid)
    cap, ramp = O._capacity(flood, t.port, "%s-r" % t.name, before_step=lambda: drain(t))
    if cap < 1:
        raise RuntimeError("no NOERROR answer in the ramp's first step")
    rows = {}
    for factor in (0.1, 1, 2, 4):
        seconds = long_seconds if factor == 4 else 3
        drain(t)
        before = [histogram(t, *h) for h in (INSIDE, UPSTREAM)] if t.metrics_port else None
        rows[factor] = O._flood_result(
            O._flood(flood, t.port, cap * factor, seconds, "%s-x%g" % (t.name, factor)), seconds)
        if before:
            after = [histogram(t, *h) for h in (INSIDE, UPSTREAM)]
            rows[factor]["inside_p50_ms"], rows[factor]["upstream_p50_ms"] = (
                median_between(b, a) for b, a in zip(before, after))
    return cap, ramp, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dotproxy", required=True)
    ap.add_argument("--base", help="another dotproxy binary (target dotproxy_base)")
    ap.add_argument("--udp-flood", required=True)
    ap.add_argument("--dotproxy-args", default="",
                    help="more arguments for both dotproxy targets (space-separated)")
    ap.add_argument("--targets", default="dotproxy,dnsdist,unbound_fwd,kresd,model,model_cut")
    ap.add_argument("--quota", type=int, default=10, help="percent of CPU 0 (default 10)")
    ap.add_argument("--thief", metavar="BUSY_US/IDLE_US",
                    help="instead of a CFS quota, cpu_thief.c at real-time priority on CPU 0 "
                    "takes BUSY_US of every BUSY_US+IDLE_US (900/100: the target keeps about "
                    "10%% in 0.1 ms slices, not 1 ms in every 10)")
    ap.add_argument("--long", type=int, default=10, help="seconds at 4 C (default 10)")
    args = ap.parse_args()
    os.environ["DOTPROXY_E2E_UDP_FLOOD"] = os.path.abspath(args.udp_flood)
    flood = O._udp_flood()
    targets = [t for t in args.targets.split(",") if t]
    programs = {"dnsdist": "dnsdist", "unbound_fwd": "unbound", "kresd": "kresd"}
    for name in list(targets):
        if name in programs and shutil.which(programs[name]) is None and not os.path.exists(
                "/usr/sbin/" + programs[name]):
            print("skipping %s: %s not installed" % (name, programs[name]))
            targets.remove(name)
    if any(t.startswith("model") for t in targets) and "dotproxy" not in targets:
        sys.exit("the model targets take their per-query cost from dotproxy's C: add dotproxy")
    if "dotproxy_base" in targets and not args.base:
        sys.exit("target dotproxy_base needs --base")
    # dotproxy first: the models are calibrated on its capacity.
    targets.sort(key=lambda t: (t != "dotproxy", t.startswith("model")))

    h = E.Harness(args.dotproxy)
    workdir = tempfile.mkdtemp(prefix="overload-cpu-")
    results = []
    quota = None
    thief = None
    share = args.quota / 100.0
    try:
        if subprocess.run(["cc", "-O2", "-o", os.path.join(workdir, "reflector"),
                           os.path.join(HERE, "reflector.c")]).returncode != 0:
            sys.exit("cc reflector.c failed")
        if args.thief:
            busy_us, idle_us = (int(v) for v in args.thief.split("/"))
            share = idle_us / float(busy_us + idle_us)
            exe = os.path.join(workdir, "cpu_thief")
            if subprocess.run(["cc", "-O2", "-o", exe,
                               os.path.join(HERE, "cpu_thief.c")]).returncode != 0:
                sys.exit("cc cpu_thief.c failed")
            # This script waits on CPU 1, beside the flood and the upstream.
            os.sched_setaffinity(0, {1})
            thief = subprocess.Popen(["chrt", "-f", "30", "taskset", "-c", "0", exe,
                                      str(busy_us), str(idle_us),
                                      str(300 * len(targets))],  # ends by itself
                                     stdout=subprocess.PIPE, text=True)
        else:
            quota = O._CpuQuota(args.quota)
        u = start_unbound_x(h)
        O._pin_upstream(u)
        dotproxy_cap = None
        for name in targets:
            spin = cap_for_model = 0
            if name.startswith("model"):
                if dotproxy_cap is None:
                    print("%s: skipped (dotproxy's C, its calibration, was not measured)" % name)
                    continue
                cap_for_model = dotproxy_cap
                spin = 1e9 * share / dotproxy_cap
            t = start_target(name, args, h, u, workdir, spin, cap_for_model)
            try:
                wait_answering(t, t.port)
                cap, ramp, rows = measure(flood, quota, t, args.long)
            except (RuntimeError, E.CaseFailure) as e:
                print("%s: %s" % (name, e))
                t.stop()
                continue
            t.stop()
            if name == "dotproxy":
                dotproxy_cap = cap
            results.append((name, cap, rows, spin))
            print("%s: C = %.0f NOERROR/s (ramp %s)" % (name, cap, ", ".join(
                "%.0f" % r["noerror_per_s"] for r in ramp)), flush=True)
    finally:
        h.close()
        if quota:
            quota.remove()
        if thief:
            thief.terminate()
            try:
                taken = thief.communicate(timeout=5)[0].strip()
            except subprocess.TimeoutExpired:
                thief.kill()
                taken = "?"
            print("cpu_thief: %s" % taken)
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    rig = ("cpu_thief %s at real-time priority" % args.thief if args.thief else
           "%d%% (CFS quota, 10 ms period)" % args.quota)
    print("CPU-bound overload, each target on CPU 0 under %s; "
          "NOERROR/s as a share of the target's own C; latency of answered queries, ms" % rig)
    print()
    print("| target | C (NOERROR/s) | 0.1 C mean / p50 | 1 C good, mean / p50 | "
          "2 C good, mean / p50 | 4 C good, mean / p50 / p99 |")
    print("|---|---|---|---|---|---|")
    for name, cap, rows, spin in results:
        def cell(f, p99=False):
            r = rows[f]
            good = r["noerror_per_s"] / cap
            lat = "%.1f / %.1f" % (r["mean_ms"], r["p50_ms"]) + (" / %.1f" % r["p99_ms"] if p99 else "")
            return lat if f == 0.1 else "%.2f, %s" % (good, lat)
        label = name + (" (%.0f ns/q)" % spin if spin else "")
        print("| %s | %.0f | %s | %s | %s | %s |" % (label, cap, cell(0.1), cell(1), cell(2),
                                                     cell(4, True)))
    print()
    print("dotproxy's part of the p50 (its histograms, bucket upper bounds in ms): "
          "from reading a query to answering it / the upstream's answer time")
    for name, cap, rows, spin in results:
        if "inside_p50_ms" not in rows[4]:
            continue
        print("  %s: %s" % (name, ", ".join(
            "%g C %s / %s" % (f, rows[f]["inside_p50_ms"], rows[f]["upstream_p50_ms"])
            for f in (0.1, 1, 2, 4))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
