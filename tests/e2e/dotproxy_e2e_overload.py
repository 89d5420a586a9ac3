#!/usr/bin/python3
"""End-to-end cases for overload (issue 10): of the upstream's capacity
(protect_overload_goodput, dnsperf), and of the shard's own CPU
(protect_overload_cpu: one shard in a cgroup limited to 10% of a CPU,
flooded with unique names by udp_flood, an open-loop generator, at up to 4x
what it serves; goodput, latency and memory reported and bounded, then the
rate limiter under a flood). Uses the harness in dotproxy_e2e.py (same
rules: loopback only, every wait and loop bounded, every child killed by
PID). bench/load/overload_cpu.py imports the
quota and flood helpers below to put dotproxy's peers through the same rig.

    dotproxy_e2e_overload.py --list
    dotproxy_e2e_overload.py --dotproxy build/dotproxy --case protect_overload_goodput
    DOTPROXY_E2E_UDP_FLOOD=build/tests/e2e/udp_flood \
        dotproxy_e2e_overload.py --dotproxy build/dotproxy --case protect_overload_cpu

Exit status: 0 pass, 1 fail, 77 skip. Cases print what they measure.
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import LOOPBACK4, CaseFailure, CaseSkip, case, check  # noqa: E402
# Importing these case files registers their cases: dropped in main.
import dotproxy_e2e_protect as P  # noqa: E402
from dotproxy_e2e_features import counters, start_unbound_x, up_spec, wild  # noqa: E402
_INHERITED = set(E.CASES)


# ---- Overload of the upstream (dnsperf)


def _dnsperf_parse(text):
    st = {"sent": 0, "completed": 0, "noerror": 0, "latency": 0.0, "seconds": 0.0}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Queries sent:"):
            st["sent"] = int(line.split()[2])
        elif line.startswith("Queries completed:"):
            st["completed"] = int(line.split()[2])
        elif line.startswith("Response codes:"):
            for part in line[len("Response codes:"):].split(","):
                words = part.split()
                if words and words[0] == "NOERROR":
                    st["noerror"] = int(words[1])
        elif line.startswith("Average Latency"):
            st["latency"] = float(line.split()[3])
        elif line.startswith("Run time (s):"):
            st["seconds"] = float(line.split()[3])
    return st


def _overload_round(h, port, total_qps, seconds, sources, tag, outstanding=20000):
    """`sources` dnsperf processes, each from its own 127.0.0.x address, at
    total_qps together (None: as fast as `outstanding` queries in flight per
    process allow: a closed loop). With a rate, `outstanding` is large so
    that the offered load is open-loop: lost queries do not slow the
    sender down. Returns NOERROR per second, the completed-weighted mean
    latency (s) and the sent rate."""
    data = os.path.join(h.dir, "names.txt")
    if not os.path.exists(data):
        with open(data, "w") as f:
            for i in range(100000):
                f.write("%s A\n" % wild("n%d" % i).rstrip("."))
    procs = []
    for i in range(sources):
        out = open(os.path.join(h.dir, "dnsperf-%s-%d.out" % (tag, i)), "w")
        argv = [E.DNSPERF, "-s", LOOPBACK4, "-p", str(port), "-d", data, "-l", str(seconds),
                "-a", "127.0.0.%d" % (10 + i), "-c", "20", "-q", str(outstanding), "-t", "1"]
        if total_qps:
            argv += ["-Q", str(int(total_qps / sources))]
        procs.append((E.spawn(argv, out, subprocess.STDOUT), out))
    noerror = completed = sent = 0
    latency_sum = 0.0
    for proc, out in procs:
        try:
            proc.wait(timeout=seconds + 20)
        except subprocess.TimeoutExpired:
            E.stop_process(proc)
        out.close()
        with open(out.name) as f:
            st = _dnsperf_parse(f.read())
        noerror += st["noerror"]
        completed += st["completed"]
        sent += st["sent"]
        latency_sum += st["latency"] * st["completed"]
    return noerror / seconds, (latency_sum / completed if completed else 0.0), sent / seconds


@case
def protect_overload_goodput(h):
    """Overload of the upstream's capacity: one shard, cache off, unique
    names, one connection with one query in flight. Capacity C is a closed
    loop's NOERROR rate (8 queries outstanding per dnsperf); then 0.1, 1, 2
    and 4 C are offered open-loop from 4 dnsperf processes on 4 source
    addresses (127.0.0.10-13). The waiting queue stands, so what is
    answered is dispatched newest first: asserted, the mean latency of
    answered queries at 4x stays under 100 ms (it was about 180 ms when the
    queue was served oldest first up to 200 ms) and queries were shed.
    Goodput is printed, not asserted: with one query in flight, capacity is
    one round trip per loop iteration, and iterations lengthen with the
    offered load, so C measured at a light load is not this setup's
    capacity under a flood (protect_overload_cpu measures goodput where the
    shard's CPU is the limit)."""
    if not os.access(E.DNSPERF, os.X_OK):
        raise CaseSkip("dnsperf not installed")
    u = start_unbound_x(h)
    # Capacity is made the upstream's: one connection with one query in
    # flight (the way a provider's per-connection limit caps a shard), so
    # that dnsperf on these 2 cores can offer 4x of it.
    p = h.start_proxy(upstreams=[up_spec(u.dot_port)], extra=[
        "--threads", "1", "--max-connections-per-upstream", "1",
        "--max-inflight-per-connection", "1"])
    seconds = 5
    # Capacity: a closed loop that keeps the upstream's slot busy with a
    # short queue (8 in flight), so that it measures service, not shedding.
    cap, cap_latency, _ = _overload_round(h, p.port, None, seconds, 4, "capacity", outstanding=8)
    check(cap > 100, "capacity run: only %.0f NOERROR/s" % cap)
    idle, idle_latency, idle_offered = _overload_round(h, p.port, cap / 10, seconds, 4, "unloaded")
    rows = [("max", cap, cap_latency, 0.0), ("0.1x", idle, idle_latency, idle_offered)]
    for factor in (1, 2, 4):
        good, latency, offered = _overload_round(h, p.port, cap * factor, seconds, 4, "x%d" % factor)
        rows.append(("%dx" % factor, good, latency, offered))
        check(p.alive(), "dotproxy died at %dx" % factor)
    c = counters(p)
    print("overload (one shard, capacity C = %.0f NOERROR/s):" % cap)
    for name, good, latency, offered in rows:
        print("  %-4s offered %6.0f q/s  NOERROR %6.0f /s (%.2f C)  mean latency %.1f ms" % (
            name, offered, good, good / cap, latency * 1000))
    print("  counters: servfail_overload=%d servfail_timeout=%d shed_waiting=%d queued_for_capacity=%d "
          "intake_overload_began=%d shed_intake=%d" % (
              c.get("servfail_overload"), c.get("servfail_timeout"), c.get("shed_waiting"),
              c.get("queued_for_capacity"), c.get("intake_overload_began"), c.get("shed_intake")))
    good4, latency4 = rows[-1][1], rows[-1][2]
    check(good4 > 0, "at 4x: nothing answered")
    check(latency4 <= 0.1, "at 4x: mean latency %.0f ms" % (latency4 * 1000))
    check(c.get("shed_waiting") > 0, "nothing was shed at 4x")


# ---- CPU-bound overload (udp_flood, a CPU quota)


class _CpuQuota:
    """A cgroup (v1 cpu controller, or v2 cpu.max) that gives its members
    `percent` of one CPU in fine periods: a slow CPU whose capacity a cheap
    generator on the other core can exceed four times over."""

    def __init__(self, percent):
        self.path = None
        name = "dotproxy-e2e-%d" % os.getpid()
        period = 10000
        quota = int(period * percent / 100)
        v1 = "/sys/fs/cgroup/cpu"
        try:
            if os.path.exists(os.path.join(v1, "cpu.cfs_quota_us")) or os.path.isdir(
                    os.path.join(v1, "tasks")):
                path = os.path.join(v1, name)
                os.mkdir(path)
                self.path = path
                with open(os.path.join(path, "cpu.cfs_period_us"), "w") as f:
                    f.write(str(period))
                with open(os.path.join(path, "cpu.cfs_quota_us"), "w") as f:
                    f.write(str(quota))
            elif "cpu" in open("/sys/fs/cgroup/cgroup.controllers").read().split():
                path = os.path.join("/sys/fs/cgroup", name)
                os.mkdir(path)
                self.path = path
                with open(os.path.join(path, "cpu.max"), "w") as f:
                    f.write("%d %d" % (quota, period))
            else:
                raise OSError("no cpu controller")
        except OSError as e:
            self.remove()
            raise CaseSkip("no writable cpu cgroup for a CPU quota (%s)" % e)

    def add(self, pid):
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def remove(self):
        if self.path:
            try:
                os.rmdir(self.path)
            except OSError:
                pass
            self.path = None


def _udp_flood():
    path = os.environ.get("DOTPROXY_E2E_UDP_FLOOD") or os.path.join(
        os.path.dirname(os.path.abspath(sys.argv[0])), "udp_flood")
    if not os.access(path, os.X_OK):
        raise CaseSkip("udp_flood not built (%s)" % path)
    return path


def _flood(flood, port, rate, seconds, tag, sources=16, base="127.0.1.1", stride=1):
    """One udp_flood run (real-time priority, on CPU 1); its figures."""
    argv = ["chrt", "-f", "20", "taskset", "-c", "1", flood, "--to", "%s:%d" % (LOOPBACK4, port),
            "--rate", str(int(rate)), "--seconds", str(seconds), "--sources", str(sources),
            "--source-base", base, "--source-stride", str(stride), "--tag", tag]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _flood_result(proc, seconds):
    try:
        out, err = proc.communicate(timeout=seconds + 20)
    except subprocess.TimeoutExpired:
        E.stop_process(proc)
        raise CaseFailure("udp_flood did not finish")
    if proc.returncode != 0:
        raise CaseFailure("udp_flood failed: %s" % err.strip())
    f = {k: float(v) for k, v in (kv.split("=") for kv in out.split())}
    f["noerror_per_s"] = f["noerror"] / seconds
    return f


def _pin_upstream(u):
    """The upstream Unbound on CPU 1 at real-time priority, beside udp_flood."""
    subprocess.run(["taskset", "-a", "-p", "-c", "1", str(u.proc.pid)], capture_output=True)
    subprocess.run(["chrt", "-f", "-a", "-p", "20", str(u.proc.pid)], capture_output=True)


def _confine(quota, pid):
    """Process `pid` (already on CPU 0) into the CPU quota."""
    quota.add(pid)
    # Within its quota it must not lose its CPU to whatever else runs there.
    subprocess.run(["renice", "-n", "-15", "-p", str(pid)], capture_output=True)


# The ramp goes on until a step is not 90% answered (on a fast machine
# 12,000/s was: C was its ceiling, not the shard's).
RAMP = (3000, 6000, 12000, 18000, 24000, 36000, 48000)


def _capacity(flood, port, tag, before_step=lambda: None):
    """C, the best NOERROR/s of 3 s steps of RAMP up to the first step that
    is not 90% answered, and the steps' figures."""
    ramp = []
    for i, rate in enumerate(RAMP):
        before_step()
        ramp.append(_flood_result(_flood(flood, port, rate, 3, "%s%d" % (tag, i)), 3))
        if ramp[-1]["noerror_per_s"] < 0.9 * rate:
            break
    return max(r["noerror_per_s"] for r in ramp), ramp


def _udp_receive_buffer(port):
    """The kernel's receive buffer (sk_rcvbuf, bytes, as `ss -m` shows it:
    what SO_RCVBUF reads) of the UDP socket(s) bound to `port`: the
    largest, or None when ss is missing or shows none."""
    try:
        out = subprocess.run(["ss", "-u", "-a", "-m", "-n", "sport = :%d" % port],
                             capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    sizes = [int(field[2:]) for line in out.splitlines() if "skmem:(" in line
             for field in line.split("skmem:(")[1].rstrip(")").split(",") if field.startswith("rb")]
    return max(sizes) if sizes else None


def _start_pinned(h, u, quota, extra):
    p = h.start_proxy(upstreams=[up_spec(u.dot_port)], extra=["--threads", "1"] + extra,
                      prefix=["taskset", "-c", "0"])
    _confine(quota, p.proc.pid)
    return p


@case
def protect_overload_cpu(h):
    """Overload of the shard's own CPU (issue 10). dotproxy runs on CPU 0 in
    a cgroup limited to 10% of it (a slow CPU), Unbound and udp_flood (an
    open-loop generator of unique names from 16 sources) at real-time
    priority on CPU 1, so the generator can offer 4x what the shard serves.
    Capacity C is the best NOERROR rate of a ramp (up to the first step
    that is not 90% answered); then 0.1, 1, 2 and 4 C.
    At 4 C for 20 s, RSS is sampled every second. Asserted: NOERROR/s at
    4 C >= 0.6 C (0.9 is the target, printed), the mean latency of answered
    queries at 4 C under 150 ms (it was over a second when the socket
    buffer queued the flood), RSS within 16 MiB over the 20 s, and an
    answer within 1 s after the flood; the socket's receive buffer (ss -m)
    cut to under an eighth of its size while intake stands at 4 C, and
    restored to its size before any flood within 3 s once the flood has
    stopped. Then a flood of 2 C from 64
    prefixes with --rate-limit 20: a well-behaved client at half its limit
    from another prefix keeps >= 99% answered."""
    flood = _udp_flood()
    if subprocess.run(["chrt", "-f", "1", "true"], capture_output=True).returncode != 0:
        raise CaseSkip("real-time priority not permitted (chrt)")
    if os.cpu_count() is None or os.cpu_count() < 2:
        raise CaseSkip("needs 2 CPUs")
    quota = _CpuQuota(10)
    try:
        u = start_unbound_x(h)
        _pin_upstream(u)
        p = _start_pinned(h, u, quota, [])
        # Before any flood: the size the cut is measured against.
        buffer_before = _udp_receive_buffer(p.port)
        if buffer_before is None:
            raise CaseFailure("ss -m shows no UDP socket on port %d (iproute2 missing?)" % p.port)
        cap, ramp = _capacity(flood, p.port, "ramp")
        check(cap > 500, "capacity: only %.0f NOERROR/s" % cap)
        rows = []
        for factor in (0.1, 1, 2):
            r = _flood_result(_flood(flood, p.port, cap * factor, 3, "x%s" % factor), 3)
            rows.append(("%gx" % factor, cap * factor, r))
        seconds = 20
        proc = _flood(flood, p.port, cap * 4, seconds, "x4")
        rss, buffer_during = [], []
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds and len(rss) < seconds + 2:
            rss.append(P.rss_bytes(p.proc.pid))
            size = _udp_receive_buffer(p.port)
            if size is not None:  # a failed ss read is no sample, not a small buffer
                buffer_during.append(size)
            time.sleep(1.0)
        r4 = _flood_result(proc, seconds)
        rows.append(("4x", cap * 4, r4))
        # Recovery: the next query is answered at once.
        t1 = time.monotonic()
        E.query_and_compare(h, u, p, "udp", "a.example.test.", "A")
        recovery = time.monotonic() - t1
        # The cut ends once the backlog has cleared: a few quiet queries
        # (each observed at intake) restore the buffer.
        buffer_after = _udp_receive_buffer(p.port)
        for i in range(25):
            if buffer_after == buffer_before:
                break
            E.query_and_compare(h, u, p, "udp", "r%d.example.test." % i, "A")
            time.sleep(0.1)
            buffer_after = _udp_receive_buffer(p.port)
        restored = time.monotonic() - t1
        c = counters(p)
        print("CPU-bound overload (one shard at 10%% of a CPU): capacity C = %.0f NOERROR/s" % cap)
        for r in ramp:
            print("  ramp  offered %6.0f/s  NOERROR %6.0f/s  mean %6.1f ms" % (
                r["sent"] / 3, r["noerror_per_s"], r["mean_ms"]))
        for name, offered, r in rows:
            print("  %-4s offered %6.0f/s  NOERROR %6.0f/s (%.2f C)  mean %6.1f ms  p50 %6.1f  p99 %6.1f" % (
                name, offered, r["noerror_per_s"], r["noerror_per_s"] / cap, r["mean_ms"],
                r["p50_ms"], r["p99_ms"]))
        print("  RSS over the 20 s at 4x: min %.1f MiB, max %.1f MiB; recovery %.2f s" % (
            min(rss) / P.MIB, max(rss) / P.MIB, recovery))
        during = sorted(buffer_during) or [0]
        print("  UDP receive buffer (ss -m rb): %d bytes before; at 4x min %d, median %d, max %d; "
              "%s bytes %.1f s after it" % (
                  buffer_before, during[0], during[len(during) // 2], during[-1], buffer_after,
                  restored))
        print("  counters: shed_intake=%s shed_waiting=%s intake_overload_began=%s "
              "intake_overload_ended=%s answered=%s loop_iterations=%s completions=%s" % (
                  c.get("shed_intake"), c.get("shed_waiting"), c.get("intake_overload_began"),
                  c.get("intake_overload_ended"), c.get("answered"), c.get("loop_iterations"),
                  c.get("completions")))
        check(p.alive(), "dotproxy died under the flood")
        # The target is 0.9 C (printed above); asserted with room for a
        # shared machine, where C itself moves between rounds.
        check(r4["noerror_per_s"] >= 0.6 * cap, "at 4x: %.0f NOERROR/s, %.2f of C" % (
            r4["noerror_per_s"], r4["noerror_per_s"] / cap))
        check(r4["mean_ms"] <= 150, "at 4x: mean latency %.0f ms" % r4["mean_ms"])
        check(max(rss) - min(rss) <= 16 * P.MIB, "RSS moved %.1f MiB during the flood" % (
            (max(rss) - min(rss)) / P.MIB))
        check(recovery < 1.0, "first answer after the flood took %.2f s" % recovery)
        # Cut while the flood stood (the median second: the first may come
        # before the intake stood), the size it had once it cleared.
        check(len(buffer_during) >= seconds // 2, "only %d reads of the receive buffer at 4x" % len(
            buffer_during))
        check(during[len(during) // 2] * 8 < buffer_before,
              "at 4x the receive buffer stayed %d of %d bytes" % (during[len(during) // 2],
                                                                  buffer_before))
        check(buffer_after == buffer_before and restored < 3.0,
              "receive buffer %s bytes %.1f s after the flood, %d before it" % (
                  buffer_after, restored, buffer_before))
        p.stop()

        # The limiter on: a flood of 2 C spread over 64 prefixes (127.1.N.1),
        # each at 28x its 20 qps, and a good client at 10 qps from another
        # prefix. Not 4 C: at 10% of a CPU the shard tops out reading and
        # dropping near 5 C (75,000/s against C = 14,000-15,000/s, one run),
        # so at 4 C any hiccup stands its intake, and then the kernel's tail
        # drop of a full socket buffer and the age shed, which come before
        # the limiter, take the good client's queries with the flood's (a
        # CI run at 48,000/s lost 5 of 199).
        p2 = _start_pinned(h, u, quota, ["--rate-limit", "20", "--rate-limit-burst", "10",
                                         "--rate-limit-slip", "0"])
        proc = _flood(flood, p2.port, cap * 2, seconds, "lim", sources=64, base="127.1.0.1",
                      stride=256)
        good = _flood(flood, p2.port, 10, seconds, "good", sources=1, base="127.0.0.50")
        rl = _flood_result(proc, seconds)
        g = _flood_result(good, seconds)
        print("  limiter on (20 qps per /24), flood %.0f/s from 64 prefixes: flood answered %.0f/s; "
              "good client %d/%d answered, mean %.1f ms" % (
                  rl["sent"] / seconds, rl["answered"] / seconds, g["noerror"], g["sent"], g["mean_ms"]))
        check(g["noerror"] >= 0.99 * g["sent"], "good client: %d of %d NOERROR" % (g["noerror"], g["sent"]))
        p2.stop()
    finally:
        for p in h.proxies:
            if p.alive():
                p.stop()
        quota.remove()


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
