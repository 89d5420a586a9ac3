#!/usr/bin/python3
"""End-to-end tests of dotproxy's metrics endpoint (--metrics): the Prometheus
text on /metrics, /health and /ready, the endpoint's resistance to junk and
slow clients, and a real Prometheus server scraping it. Uses the harness in
dotproxy_e2e.py (same rules: loopback only, every wait bounded, every child
killed by PID). Prometheus listens on 127.0.0.1 and scrapes only 127.0.0.1.

    dotproxy_e2e_metrics.py --list
    dotproxy_e2e_metrics.py --dotproxy build/dotproxy --case metrics_promtool [--keep]

Exit status: 0 pass, 1 fail, 77 skip (promtool or prometheus missing).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dotproxy_e2e as E  # noqa: E402
from dotproxy_e2e import (  # noqa: E402
    LOOPBACK4, CaseSkip, case, check, free_port, make_query, rcode_of, tcp_exchange,
    udp_exchange,
)

PROMTOOL = "/usr/bin/promtool"
PROMETHEUS = "/usr/bin/prometheus"


# ---- the endpoint

def start_metrics_proxy(h, upstream=None, upstreams=None, extra=(), ready="answer"):
    """dotproxy with --metrics on a free 127.0.0.1 port (p.metrics_port)."""
    port = free_port()
    p = h.start_proxy(upstream=upstream, upstreams=upstreams,
                      extra=["--metrics", "%s:%d" % (LOOPBACK4, port)] + list(extra),
                      ready=ready)
    p.metrics_port = port
    return p


def http_get(port, path, timeout=3.0):
    """(status, body) of GET http://127.0.0.1:port/path; (None, error) when no
    answer came within `timeout`."""
    url = "http://%s:%d%s" % (LOOPBACK4, port, path)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return None, str(e)


def wait_status(port, path, want, timeout):
    """Polls until path answers `want` (bounded); returns the last (status, body)."""
    deadline = time.monotonic() + timeout
    last = (None, "")
    for _ in range(1000):
        last = http_get(port, path, timeout=2.0)
        if last[0] == want or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    return last


_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$')


def scrape(p):
    """The /metrics text and its samples {"name{labels}": float}."""
    status, text = http_get(p.metrics_port, "/metrics")
    check(status == 200, "GET /metrics: %s %s" % (status, text[:200]))
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        check(m is not None, "unparseable /metrics line: %r" % line)
        try:
            samples[m.group(1)] = float(m.group(2))
        except ValueError:
            pass
    return text, samples


def up_label(p):
    spec = p.args[p.args.index("--upstream") + 1]
    return '{upstream="%s"}' % spec


def send_traffic(p, n_udp, n_tcp, tag):
    """n_udp UDP and n_tcp TCP queries (distinct names), each answered NOERROR."""
    for i in range(n_udp):
        wire = make_query("a.example.test.", "A").to_wire()
        resp, _ = udp_exchange(p.port, wire, timeout=2.0)
        check(resp is not None and rcode_of(resp) == 0,
              "%s: UDP query %d not answered NOERROR: %s" % (tag, i, E.describe(resp)))
    for i in range(n_tcp):
        wire = make_query("a.example.test.", "A").to_wire()
        resp, _ = tcp_exchange(p.port, wire, timeout=2.0)
        check(resp is not None and rcode_of(resp) == 0,
              "%s: TCP query %d not answered NOERROR: %s" % (tag, i, E.describe(resp)))


def sigusr1_counters(p, timeout=3.0):
    """The shard totals of the SIGUSR1 report ({name: int}, absent = 0)."""
    start = os.path.getsize(p.stderr_path)
    os.kill(p.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        with open(p.stderr_path, "r", errors="replace") as f:
            f.seek(start)
            text = f.read()
        m = re.search(r" info: counters:(.*)$", text, re.M)
        if m and re.search(r" info: upstream \S+: queries=", text[m.end():]):
            return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}
        check(time.monotonic() < deadline, "no SIGUSR1 counters line within %.0f s" % timeout)
        time.sleep(0.05)
    return {}


# ---- cases

@case
def metrics_promtool(h):
    """After UDP and TCP traffic, a real scrape of /metrics passes `promtool
    check metrics` (text format 0.0.4 and Prometheus naming lint), is served as
    text/plain version 0.0.4, and every dotproxy name carries the prefix."""
    if not os.access(PROMTOOL, os.X_OK):
        raise CaseSkip("promtool not installed (Debian package prometheus)")
    u = h.start_unbound()
    p = start_metrics_proxy(h, upstream=u)
    send_traffic(p, 5, 3, "traffic")
    url = "http://%s:%d/metrics" % (LOOPBACK4, p.metrics_port)
    with urllib.request.urlopen(url, timeout=3.0) as r:
        content_type = r.headers.get("Content-Type", "")
        text = r.read().decode()
    # prometheus-cpp 1.0.1 sends "text/plain; charset=utf-8" without the
    # version parameter; Prometheus reads text/plain as format 0.0.4.
    check(content_type.startswith("text/plain"), "Content-Type %r, want text/plain" % content_type)
    path = os.path.join(h.dir, "scrape.txt")
    with open(path, "w") as f:
        f.write(text)
    rc, out, err = E.run_cmd(["/bin/sh", "-c", "%s check metrics < %s" % (PROMTOOL, path)])
    print("promtool check metrics: rc=%s %s%s" % (rc, out.strip(), err.strip()))
    check(rc == 0, "promtool check metrics failed (rc=%s):\n%s%s" % (rc, out, err))
    names = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    ours = sorted(n for n in names if n.startswith("dotproxy_"))
    check("dotproxy_udp_queries_total" in ours and "dotproxy_build_info" in ours and
          "dotproxy_upstream_healthy" in ours, "missing families; have %s" % ours)
    for n in ours:
        check(not n.endswith("_us"), "non-base unit in %s" % n)
    print("%d dotproxy families" % len(ours))


@case
def metrics_counters_exact(h):
    """Cache off: N UDP and M TCP queries (plus one opcode-STATUS query the
    proxy answers NOTIMP itself) raise dotproxy_udp_queries_total by exactly
    N+1, dotproxy_tcp_queries_total by M, forwarded/answered and the
    upstream's answers by N+M, and the histograms' _count by the same
    (query_duration source=upstream N and M, source=local 1, source=cache 0;
    upstream_response_duration N+M); the SIGUSR1 report (same lists) agrees
    with the scrape; gauges (shards, healthy, connections, build_info) make
    sense."""
    u = h.start_unbound()
    p = start_metrics_proxy(h, upstream=u)
    lab = up_label(p)
    _, before = scrape(p)
    n, m = 17, 9
    send_traffic(p, n, m, "traffic")
    # One query the proxy answers itself: opcode STATUS gets NOTIMP.
    wire = bytearray(make_query("a.example.test.", "A").to_wire())
    wire[2] = (wire[2] & 0x87) | (2 << 3)
    resp, _ = udp_exchange(p.port, bytes(wire), timeout=2.0)
    check(resp is not None and rcode_of(resp) == 4, "opcode STATUS: %s" % E.describe(resp))
    _, after = scrape(p)

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)

    hist = "dotproxy_query_duration_seconds_count"
    for name, want in [("dotproxy_udp_queries_total", n + 1), ("dotproxy_tcp_queries_total", m),
                       ("dotproxy_notimp_total", 1),
                       (hist + '{transport="udp",source="upstream"}', n),
                       (hist + '{transport="tcp",source="upstream"}', m),
                       (hist + '{transport="udp",source="local"}', 1),
                       (hist + '{transport="udp",source="cache"}', 0),
                       ("dotproxy_upstream_response_duration_seconds_count" + lab, n + m),
                       ("dotproxy_forwarded_total", n + m), ("dotproxy_answered_total", n + m),
                       ("dotproxy_upstream_answers_total" + lab, n + m),
                       ("dotproxy_upstream_queries_total" + lab, n + m)]:
        check(delta(name) == want, "%s rose by %s, want %d" % (name, delta(name), want))
    check(after.get("dotproxy_shards") == 2, "dotproxy_shards %s" % after.get("dotproxy_shards"))
    check(after.get("dotproxy_upstream_healthy" + lab) == 2,
          "dotproxy_upstream_healthy%s = %s, want 2 (both shards)" % (
              lab, after.get("dotproxy_upstream_healthy" + lab)))
    check(after.get("dotproxy_upstream_connections" + lab, 0) >= 1, "no upstream connection up")
    check(any(k.startswith("dotproxy_build_info{") and v == 1 for k, v in after.items()),
          "no dotproxy_build_info 1")
    # The SIGUSR1 report reads the same counters: no traffic since the scrape.
    c = sigusr1_counters(p)
    for name in ("udp_queries", "tcp_queries", "forwarded", "answered"):
        check(c.get(name, 0) == after["dotproxy_%s_total" % name],
              "SIGUSR1 %s=%s but /metrics says %s" % (name, c.get(name, 0),
                                                      after["dotproxy_%s_total" % name]))
    print("udp +%d tcp +%d forwarded +%d (SIGUSR1 agrees)" % (
        delta("dotproxy_udp_queries_total"), delta("dotproxy_tcp_queries_total"),
        delta("dotproxy_forwarded_total")))


@case
def metrics_health_ready(h):
    """/health is 200 while the loops turn; /ready is 200 once the upstream is
    connected, and 503 (with dotproxy_upstream_connections 0) once it stops.
    Against a dead upstream with the cache off, /health is 200 but /ready
    stays 503. Other paths are 404."""
    u = h.start_unbound()
    p = start_metrics_proxy(h, upstream=u)
    status, body = wait_status(p.metrics_port, "/health", 200, 5.0)
    check(status == 200, "/health: %s %s" % (status, body))
    status, body = wait_status(p.metrics_port, "/ready", 200, 10.0)
    check(status == 200, "/ready with a live upstream: %s %s" % (status, body))
    status, _ = http_get(p.metrics_port, "/nothing-here")
    check(status == 404, "/nothing-here: %s, want 404" % status)
    # The upstream goes away: its connections close, /ready turns 503 while
    # /health stays 200 (the loops still turn).
    u.stop()
    status, body = wait_status(p.metrics_port, "/ready", 503, 10.0)
    check(status == 503, "/ready after the upstream stopped: %s %s" % (status, body))
    _, samples = scrape(p)
    check(samples.get("dotproxy_upstream_connections" + up_label(p)) == 0,
          "dotproxy_upstream_connections after the upstream stopped: %s" %
          samples.get("dotproxy_upstream_connections" + up_label(p)))
    check(http_get(p.metrics_port, "/health")[0] == 200, "/health not 200 with the upstream down")

    dead = free_port()  # nothing listens there
    q = start_metrics_proxy(h, upstreams=["%s:%d#%s" % (LOOPBACK4, dead, E.TLS_NAME)],
                            ready=None)
    status, body = wait_status(q.metrics_port, "/health", 200, 5.0)
    check(status == 200, "/health with a dead upstream: %s %s" % (status, body))
    # Stays 503 for a while (not only before the first connect attempt).
    t_end = time.monotonic() + 3.0
    seen = set()
    for _ in range(100):
        if time.monotonic() >= t_end:
            break
        status, body = http_get(q.metrics_port, "/ready")
        seen.add(status)
        time.sleep(0.2)
    check(seen == {503}, "/ready with a dead upstream and no cache gave %s, want only 503" %
          sorted(seen, key=str))
    check(q.alive() and p.alive(), "a dotproxy exited")


def _junk_clients(port):
    """Connections that send junk: binary noise, a TLS ClientHello, an endless
    header line, a bad request line. Each is closed by us after sending."""
    payloads = [
        os.urandom(4096),
        bytes.fromhex("160301002a010000260303") + os.urandom(32),
        b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * 65536 + b"\r\n\r\n",
        b"\x00\x01\x02 NOT HTTP\r\n\r\n",
        b"GET\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 999999\r\n\r\nabc",
    ]
    for data in payloads:
        s = socket.create_connection((LOOPBACK4, port), timeout=2.0)
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may close on us mid-send: fine
        finally:
            s.close()


@case
def metrics_junk_and_slow(h):
    """Junk requests and slow clients (half a request sent, then held) do not
    stop /metrics: with 2 held clients it answers at once; with 12 held (more
    than the endpoint's 8 threads) it answers within one request timeout
    (1.5 s) plus a margin, the server drops every held client, and DNS keeps
    being answered throughout."""
    u = h.start_unbound()
    p = start_metrics_proxy(h, upstream=u)
    check(wait_status(p.metrics_port, "/ready", 200, 10.0)[0] == 200, "/ready never 200")
    _junk_clients(p.metrics_port)
    held = []
    try:
        for _ in range(2):
            s = socket.create_connection((LOOPBACK4, p.metrics_port), timeout=2.0)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line
            held.append(s)
        t0 = time.monotonic()
        status, _ = http_get(p.metrics_port, "/metrics", timeout=3.0)
        t_few = time.monotonic() - t0
        check(status == 200, "/metrics with 2 held clients: %s" % status)
        check(t_few < 1.0, "/metrics took %.2f s with 2 held clients" % t_few)

        for _ in range(10):
            s = socket.create_connection((LOOPBACK4, p.metrics_port), timeout=2.0)
            s.sendall(b"GET /health HTTP/1.1\r\nHo")
            held.append(s)
        t0 = time.monotonic()
        status, _ = http_get(p.metrics_port, "/metrics", timeout=6.0)
        t_many = time.monotonic() - t0
        check(status == 200, "/metrics with 12 held clients: %s" % status)
        check(t_many < 3.0, "/metrics took %.2f s with 12 held clients" % t_many)
        send_traffic(p, 3, 1, "DNS while the endpoint is held")

        # The server closes held clients after its request timeout.
        closed = 0
        for s in held:
            s.settimeout(4.0)
            try:
                data = s.recv(4096)
                closed += 1 if data is not None else 0  # b"" (closed) or an error reply
            except socket.timeout:
                pass
            except OSError:
                closed += 1
        check(closed == len(held), "%d of %d held clients were never dropped" % (
            len(held) - closed, len(held)))
    finally:
        for s in held:
            s.close()
    _junk_clients(p.metrics_port)
    status, _ = http_get(p.metrics_port, "/metrics")
    check(status == 200, "/metrics after junk: %s" % status)
    check(p.alive(), "dotproxy exited")
    print("/metrics: %.2f s with 2 held clients, %.2f s with 12" % (t_few, t_many))


class PrometheusServer:
    """prometheus on 127.0.0.1:PORT scraping only 127.0.0.1:TARGET every 1 s,
    its TSDB in the case's temp dir. Stopped by PID (harness children)."""

    def __init__(self, h, target_port):
        self.dir = os.path.join(h.dir, "prometheus")
        os.mkdir(self.dir)
        self.port = free_port()
        self.config = os.path.join(self.dir, "prometheus.yml")
        with open(self.config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: dotproxy\n"
                    "    static_configs:\n      - targets: ['%s:%d']\n" % (LOOPBACK4, target_port))
        self.log_path = os.path.join(self.dir, "prometheus.log")
        self._log = open(self.log_path, "ab")
        self.proc = E.spawn([PROMETHEUS, "--config.file=" + self.config,
                             "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
                             "--web.listen-address=%s:%d" % (LOOPBACK4, self.port),
                             "--log.level=warn"], self._log, self._log)

    def query(self, expr):
        """The instant vector of `expr` as [(labels, float)], or None (not up)."""
        url = "http://%s:%d/api/v1/query?%s" % (LOOPBACK4, self.port,
                                                urllib.parse.urlencode({"query": expr}))
        try:
            with urllib.request.urlopen(url, timeout=2.0) as r:
                data = json.loads(r.read().decode())
        except (urllib.error.URLError, OSError, ValueError):
            return None
        if data.get("status") != "success":
            return None
        return [(s["metric"], float(s["value"][1])) for s in data["data"]["result"]]

    def wait_value(self, expr, want, timeout):
        """Polls until `expr` has one sample equal to `want`; returns the last result."""
        deadline = time.monotonic() + timeout
        last = None
        for _ in range(1000):
            check(self.proc.poll() is None, "prometheus exited:\n%s" % E.tail(self.log_path, 30))
            last = self.query(expr)
            if last and len(last) == 1 and last[0][1] == want:
                return last
            if time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        return last

    def stop(self):
        E.stop_process(self.proc)
        self._log.close()


@case
def metrics_prometheus_scrape(h):
    """A real Prometheus server (loopback only, scrape_interval 1s) scrapes
    dotproxy; through its /api/v1/query, the target is up and
    dotproxy_udp_queries_total / dotproxy_tcp_queries_total and the UDP
    upstream query_duration histogram's _count rise by exactly the known
    traffic."""
    if not os.access(PROMETHEUS, os.X_OK):
        raise CaseSkip("prometheus not installed (Debian package prometheus)")
    u = h.start_unbound()
    p = start_metrics_proxy(h, upstream=u)
    _, before = scrape(p)
    prom = PrometheusServer(h, p.metrics_port)
    try:
        last = prom.wait_value('up{job="dotproxy"}', 1.0, 30.0)
        check(last and last[0][1] == 1.0, "Prometheus never saw the target up: %s\n%s" % (
            last, E.tail(prom.log_path, 30)))
        base_udp = before.get("dotproxy_udp_queries_total", 0)
        base_tcp = before.get("dotproxy_tcp_queries_total", 0)
        n, m = 23, 7
        send_traffic(p, n, m, "traffic")
        got = prom.wait_value("dotproxy_udp_queries_total", base_udp + n, 15.0)
        check(got and got[0][1] == base_udp + n,
              "Prometheus: dotproxy_udp_queries_total = %s, want %d" % (got, base_udp + n))
        got = prom.wait_value("dotproxy_tcp_queries_total", base_tcp + m, 15.0)
        check(got and got[0][1] == base_tcp + m,
              "Prometheus: dotproxy_tcp_queries_total = %s, want %d" % (got, base_tcp + m))
        hist = 'dotproxy_query_duration_seconds_count{transport="udp",source="upstream"}'
        base_hist = before.get(hist, 0)
        got = prom.wait_value(hist, base_hist + n, 15.0)
        check(got and got[0][1] == base_hist + n,
              "Prometheus: %s = %s, want %d" % (hist, got, base_hist + n))
        lab = up_label(p)
        got = prom.wait_value("dotproxy_upstream_healthy" + lab, 2.0, 5.0)
        check(got and got[0][1] == 2.0, "Prometheus: dotproxy_upstream_healthy = %s" % got)
        print("Prometheus saw udp %d tcp %d" % (base_udp + n, base_tcp + m))
    finally:
        prom.stop()


def main():
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
