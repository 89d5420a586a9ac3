#!/usr/bin/python3
"""The DoH listener under load: dotproxy --listen-https against dnsdist 1.7's
addDOHLocal, in the same run, loaded by h2load (nghttp2-client): POST
application/dns-message of one name, so every answer after the first is a
cache hit, on CLIENTS connections with STREAMS concurrent streams each. Per
target: QPS, latency percentiles (h2load's per-request log), CPU µs per
query (/proc ticks of the target over the run); then the ratios.

Why not dnsperf -m doh: dnsperf 2.10 matches DoH answers by DNS ID, and with
more than one query in flight it loses most of dnsdist 1.7's answers (all
HTTP 200; 4 qps at -q 20); it is used against dotproxy in the e2e tests.

    h2load (core 0) --h2/TLS--> target (core 1) --DoT--> Unbound (core 0)

Everything on 127.0.0.1; the upstream serves only bench.test (local-zone
"." static). Every child is stopped by PID; every wait is bounded.

    DOTPROXY=build/dotproxy DURATION=5 bench/load/doh_listener.py
    TARGETS="dotproxy dnsdist" CLIENTS=10 STREAMS=20 bench/load/doh_listener.py

Environment: DOTPROXY (binary, default build/dotproxy), TARGETS ("dotproxy
dnsdist"), DURATION (s, 5), CLIENTS (connections, 10), STREAMS (concurrent
streams per connection, 10), LOAD_CPU (0), TARGET_CPU (1), RESULTS_DIR
(default a new dir under /tmp). Needs unbound, dnsdist, h2load, kdig,
openssl, taskset.
"""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_helper  # noqa: E402

ENV = os.environ
DOTPROXY = ENV.get("DOTPROXY", os.path.join(HERE, "..", "..", "build", "dotproxy"))
TARGETS = ENV.get("TARGETS", "dotproxy dnsdist").split()
DURATION = int(ENV.get("DURATION", "5"))
CLIENTS = int(ENV.get("CLIENTS", "10"))
STREAMS = int(ENV.get("STREAMS", "10"))
LOAD_CPU = ENV.get("LOAD_CPU", "0")
TARGET_CPU = ENV.get("TARGET_CPU", "1")
CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTED = []


def log(msg):
    print("[doh-bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def run(argv, timeout=30, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def start(argv, logpath, cpu):
    f = open(logpath, "ab")
    p = subprocess.Popen(["taskset", "-c", cpu] + argv, stdout=f, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    STARTED.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    if p in STARTED:
        STARTED.remove(p)


def ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def freeports(n):
    import socket
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def make_certs(d):
    def ossl(*args):
        r = run(["openssl"] + list(args))
        if r.returncode != 0:
            raise SystemExit("openssl %s: %s" % (args[0], r.stderr))
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", d + "/ca.key", "-out", d + "/ca.pem", "-days", "2", "-subj", "/CN=doh bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         d + "/server.key", "-out", d + "/server.csr", "-subj", "/CN=upstream.test")
    with open(d + "/server.ext", "w") as f:
        f.write("subjectAltName=DNS:upstream.test,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    ossl("x509", "-req", "-in", d + "/server.csr", "-CA", d + "/ca.pem", "-CAkey", d + "/ca.key",
         "-CAcreateserial", "-out", d + "/server.pem", "-days", "2", "-extfile", d + "/server.ext")


def start_unbound(d, results, plain, dot):
    conf = d + "/unbound.conf"
    with open(conf, "w") as f:
        f.write("""server:
  verbosity: 1
  interface: 127.0.0.1@%d
  interface: 127.0.0.1@%d
  tls-port: %d
  tls-service-key: "%s/server.key"
  tls-service-pem: "%s/server.pem"
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
  local-zone: "." static
  local-zone: "bench.test." redirect
  local-data: "bench.test. 300 IN A 192.0.2.1"
remote-control:
  control-enable: no
""" % (plain, dot, dot, d, d, d, d))
    return start(["unbound", "-d", "-c", conf], results + "/upstream-unbound.log", LOAD_CPU)


def start_target(name, d, results, plain, https, dot):
    cert, key, ca = d + "/server.pem", d + "/server.key", d + "/ca.pem"
    if name == "dotproxy":
        argv = [DOTPROXY, "--listen", "127.0.0.1:%d" % plain, "--listen-https", "127.0.0.1:%d" % https,
                "--tls-cert", cert, "--tls-key", key, "--upstream", "127.0.0.1:%d#upstream.test" % dot,
                "--ca-file", ca, "--threads", "1", "--cache-size", "100000"]
    else:
        conf = d + "/dnsdist.conf"
        with open(conf, "w") as f:
            f.write("""-- No security polling: it would query secpoll.powerdns.com (off-host).
setSecurityPollSuffix("")
setLocal("127.0.0.1:%d")
addDOHLocal("127.0.0.1:%d", "%s", "%s", "/dns-query")
setACL({"127.0.0.0/8"})
newServer({address="127.0.0.1:%d", tls="openssl", subjectName="upstream.test", caStore="%s", validateCertificates=true})
pc = newPacketCache(100000, {maxTTL=86400, minTTL=0})
getPool(""):setCache(pc)
setMaxTCPClientThreads(1)
""" % (plain, https, cert, key, dot, ca))
        argv = ["dnsdist", "--supervised", "--disable-syslog", "-C", conf]
    with open(results + "/%s.cmdline" % name, "w") as f:
        f.write(" ".join(argv) + "\n")
    return start(argv, results + "/%s.log" % name, TARGET_CPU)


def wait_doh(port, p, ca, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return False
        r = run(["kdig", "@127.0.0.1", "-p", str(port), "+https", "+tls-ca=" + ca,
                 "+tls-hostname=upstream.test", "+timeout=1", "+retry=0", "+short",
                 "ready.bench.test", "A"], timeout=10)
        if r.stdout.strip() == "192.0.2.1":
            return True
        time.sleep(0.3)
    return False


def h2load(port, query, log_path, out_path, timeout, load=None):
    """h2load POSTs `query` on CLIENTS connections with STREAMS concurrent
    streams each for DURATION s (or `load`); per-request latencies go to
    log_path."""
    load = load or ["-c", str(CLIENTS), "-m", str(STREAMS), "-D", str(DURATION)]
    argv = ["taskset", "-c", LOAD_CPU, "h2load"] + load + ["-d", query, "-H", "content-type: application/dns-message",
            "--log-file=" + log_path, "https://127.0.0.1:%d/dns-query" % port]
    with open(out_path, "w") as f:
        subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)


def parse_h2load(out_path, log_path):
    with open(out_path) as f:
        text = f.read()
    r = {}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    if m:
        r["runtime_s"], r["qps"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text)
    if m:
        r["sent"], r["completed"] = int(m.group(2)), int(m.group(4))
        r["failed"] = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    lat = []
    try:
        with open(log_path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[1] == "200":
                    lat.append(int(parts[2]) / 1e6)
    except OSError:
        pass
    lat.sort()
    for p in (50, 99, 99.9):
        r["p%s_s" % str(p).replace(".", "_")] = bench_helper.percentile(lat, p)
    r["avg_s"] = sum(lat) / len(lat) if lat else None
    return r


def fmt(v, pattern="%.0f", scale=1.0):
    return "-" if v is None else pattern % (v * scale)


def main():
    results = ENV.get("RESULTS_DIR") or tempfile.mkdtemp(prefix="doh-bench-")
    os.makedirs(results, exist_ok=True)
    work = tempfile.mkdtemp(prefix="doh-bench-work-")
    make_certs(work)
    plain_up, dot_up = freeports(2)
    upstream = start_unbound(work, results, plain_up, dot_up)
    time.sleep(1)
    # One name: after the first answer every request is a cache hit. ID 0
    # and no EDNS, as RFC 8484 §4.1 suggests for cacheable requests.
    query = work + "/query.bin"
    with open(query, "wb") as f:
        f.write(struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0) + b"\x01h\x05bench\x04test\x00"
                + struct.pack("!HH", 1, 1))
    rows = []
    try:
        for index, name in enumerate(TARGETS, 1):
            plain, https = freeports(2)
            p = start_target(name, work, results, plain, https, dot_up)
            if not wait_doh(https, p, work + "/ca.pem"):
                log("%s not answering DoH on %d; see %s/%s.log" % (name, https, results, name))
                stop(p)
                rows.append({"target": name, "note": "not ready"})
                continue
            out = results + "/%02d-%s-hit-doh.h2load.txt" % (index, name)
            lat_log = results + "/%02d-%s-hit-doh.latency.log" % (index, name)
            h2load(https, query, lat_log, results + "/%02d-%s-prime.txt" % (index, name), 60,
                   load=["-c", "1", "-n", "10"])
            time.sleep(0.5)
            t0, u0, w0 = ticks(p.pid), ticks(upstream.pid), time.monotonic()
            log("run %s: h2load %d connections x %d streams, %d s" % (name, CLIENTS, STREAMS, DURATION))
            h2load(https, query, lat_log, out, DURATION + 60)
            t1, u1, w1 = ticks(p.pid), ticks(upstream.pid), time.monotonic()
            r = parse_h2load(out, lat_log)
            r.update(target=name, wall_s=w1 - w0, target_ticks=t1 - t0, upstream_ticks=u1 - u0,
                     alive=p.poll() is None)
            if r.get("completed"):
                r["target_cpu_us_per_q"] = r["target_ticks"] * 1e6 / CLK_TCK / r["completed"]
                r["target_cpu_pct"] = 100.0 * r["target_ticks"] / CLK_TCK / (r.get("runtime_s") or r["wall_s"])
            with open(results + "/runs.jsonl", "a") as f:
                f.write(json.dumps(r, sort_keys=True) + "\n")
            rows.append(r)
            stop(p)
            time.sleep(1)
    finally:
        for p in list(STARTED):
            stop(p)
    out = ["## DoH listener, cache hits: h2load POST, %d connections x %d streams, %d s" % (
        CLIENTS, STREAMS, DURATION), "",
        "| target | achieved qps | completed | failed | avg µs | p50 µs | p99 µs | p99.9 µs | "
        "target CPU µs/q | target CPU % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["target"], fmt(r.get("qps")), r.get("completed", "-"), r.get("failed", r.get("note", "-")),
            fmt(r.get("avg_s"), scale=1e6), fmt(r.get("p50_s"), scale=1e6), fmt(r.get("p99_s"), scale=1e6),
            fmt(r.get("p99_9_s"), scale=1e6), fmt(r.get("target_cpu_us_per_q"), "%.1f"),
            fmt(r.get("target_cpu_pct"))))
    by = {r["target"]: r for r in rows}
    a, b = by.get("dotproxy"), by.get("dnsdist")
    if a and b and a.get("target_cpu_us_per_q") and b.get("target_cpu_us_per_q"):
        out.append("")
        out.append("- **CPU µs/q:** dotproxy %.1f / dnsdist %.1f = **%.2f×**" % (
            a["target_cpu_us_per_q"], b["target_cpu_us_per_q"],
            a["target_cpu_us_per_q"] / b["target_cpu_us_per_q"]))
        out.append("- **QPS:** dotproxy %.0f / dnsdist %.0f = **%.2f×**" % (a["qps"], b["qps"], a["qps"] / b["qps"]))
        if a.get("p99_s") and b.get("p99_s"):
            out.append("- **p99:** dotproxy %.0f µs / dnsdist %.0f µs = **%.2f×**" % (
                a["p99_s"] * 1e6, b["p99_s"] * 1e6, a["p99_s"] / b["p99_s"]))
    with open(results + "/table.md", "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))
    print("\nRaw outputs: %s" % results)


if __name__ == "__main__":
    main()
