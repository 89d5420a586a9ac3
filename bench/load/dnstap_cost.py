#!/usr/bin/python3
"""dnstap off vs on, alternating in one run against the same Unbound DoT
upstream (the e2e harness's, loopback only): CPU-µs per query of the whole
dotproxy process and of its dnstap writer thread, from /proc/PID/task/*/stat,
at fixed rates (UDP and TCP cache hits at 30,000 qps, UDP misses at 5,000),
dnstap to file:/dev/null. dotproxy pinned to core 1, dnsperf to core 0.

    /usr/bin/python3 bench/load/dnstap_cost.py REPS [build/dotproxy]
    NSCEN=2 ...   # the two hit scenarios only
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "e2e"))
import dotproxy_e2e as E  # noqa: E402
SCEN = [("hit", 30000, "udp"), ("hit", 30000, "tcp"), ("miss", 5000, "udp")][:int(os.environ.get("NSCEN", "3"))]
TICK = os.sysconf("SC_CLK_TCK")
def threads(pid):
    out = {}
    for t in os.listdir("/proc/%d/task" % pid):
        f = open("/proc/%d/task/%s/stat" % (pid, t)).read()
        parts = f[f.rindex(")")+2:].split()
        out[int(t)] = int(parts[11]) + int(parts[12])
    return out
h = E.Harness(sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "..", "build", "dotproxy"))
results = []
try:
    u = h.start_unbound()
    hits = os.path.join(h.dir, "hits.txt")
    with open(hits, "w") as f:
        for i in range(100):
            f.write("h%d.example.test A\n" % i)
    reps = int(sys.argv[1])
    for scen, rate, proto in SCEN:
        for rep in range(reps):
            for mode in ("off", "on"):
                names = hits
                if scen == "miss":
                    names = os.path.join(h.dir, "miss%d%s.txt" % (rep, mode))
                    with open(names, "w") as f:
                        for i in range(rate * 5 + 1000):
                            f.write("m%d-%d-%s.example.test A\n" % (i, rep, mode))
                extra = ["--threads", "1", "--cache-size", "100000"]
                if mode == "on":
                    extra += ["--dnstap", "file:/dev/null"]
                p = h.start_proxy(u, default_cache=True, extra=extra, prefix=["taskset", "-c", "1"])
                if scen == "hit":
                    subprocess.run(["taskset", "-c", "0", "dnsperf", "-s", "127.0.0.1", "-p", str(p.port), "-d", names, "-l", "1", "-Q", "2000"], capture_output=True)
                pid = p.proc.pid
                t0 = threads(pid)
                out = subprocess.run(["taskset", "-c", "0", "dnsperf", "-s", "127.0.0.1", "-p", str(p.port), "-m", proto, "-d", names, "-l", "5", "-Q", str(rate), "-c", "10", "-q", "500"], capture_output=True, text=True).stdout
                t1 = threads(pid)
                done = [l for l in out.splitlines() if "Queries completed" in l][0].split()[2]
                done = int(done)
                total = sum(t1[k] - t0.get(k, 0) for k in t1)
                tids = sorted(t1)
                writer = (t1[tids[1]] - t0.get(tids[1], 0)) if mode == "on" and len(tids) > 2 else 0
                us = total * 1e6 / TICK / done
                wus = writer * 1e6 / TICK / done
                results.append((scen, proto, rate, mode, done, us, wus))
                print("%s-%s@%d %s: %d queries, %.1f CPU-us/q (writer thread %.1f)" % (scen, proto, rate, mode, done, us, wus), flush=True)
                p.stop()
finally:
    h.close()
