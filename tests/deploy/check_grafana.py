#!/usr/bin/python3
"""Checks deploy/grafana/dotproxy.json against the real dotproxy binary: every
metric name in every panel's PromQL (and in the template variables' queries)
must be served by a /metrics scrape of dotproxy forwarding some UDP and TCP
traffic to the harness's Unbound DoT upstream on 127.0.0.1 (so the
histograms' series exist), and every label a panel groups by must be on one
of its metrics. When the prometheus package is installed, a real Prometheus
server on 127.0.0.1 scrapes that dotproxy and evaluates every expression:
each must be valid PromQL, and the panels' first queries must return data.
A self-check first proves that a panel naming a metric dotproxy does not
serve is reported.

Uses the harness in tests/e2e/dotproxy_e2e.py (loopback only, every wait
bounded, every child killed by PID).

    check_grafana.py --dotproxy build/dotproxy --case grafana_dashboard_metrics_exist

Exit status: 0 pass, 1 fail, 77 skip.
"""

import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))

import dotproxy_e2e as E  # noqa: E402
import dotproxy_e2e_metrics as M  # noqa: E402
from dotproxy_e2e import LOOPBACK4, CaseFailure, case, check  # noqa: E402

_INHERITED = set(E.CASES)

DASHBOARD = os.path.join(HERE, "..", "..", "deploy", "grafana", "dotproxy.json")

# PromQL words that are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset", "inf", "nan"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def panel_exprs(dashboard):
    """[(where, expr)] of every panel target and template variable query."""
    out = []
    for p in dashboard.get("panels", []):
        for t in p.get("targets", []):
            out.append(("panel %r %s" % (p.get("title"), t.get("refId")), t.get("expr", "")))
        for sub in p.get("panels", []):  # collapsed rows
            for t in sub.get("targets", []):
                out.append(("panel %r %s" % (sub.get("title"), t.get("refId")), t.get("expr", "")))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else q or ""
            m = re.match(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*$", q)
            out.append(("variable $%s" % v["name"], m.group(1) if m else q))
    return out


def metric_names(expr):
    """The metric names an expression selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)   # strings (label values, regexes)
    e = re.sub(r"\{[^}]*\}", " ", e)                 # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                # ranges, subqueries
    e = _GROUPING.sub(" ", e)                        # grouping label lists
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function or aggregation
        if word.lower() in KEYWORDS or re.fullmatch(r"\d.*", word):
            continue
        names.add(word)
    return names


def grouping_labels(expr):
    labels = set()
    for _, inner in _GROUPING.findall(re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
        labels |= {x.strip() for x in inner.split(",") if x.strip()}
    return labels


def scrape_series(text):
    """{metric name: set of label names} of a /metrics text."""
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?\s", line)
        if not m:
            continue
        labels = set(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="', m.group(3) or ""))
        series.setdefault(m.group(1), set()).update(labels)
    return series


def problems_of(dashboard, series):
    """What is wrong with the dashboard's queries against the scraped series."""
    problems = []
    exprs = panel_exprs(dashboard)
    if not exprs:
        problems.append("no queries in the dashboard")
    for where, expr in exprs:
        names = metric_names(expr)
        if not names:
            problems.append("%s: no metric in %r" % (where, expr))
        missing = sorted(n for n in names if n not in series)
        if missing:
            problems.append("%s: %s not served by dotproxy's /metrics (expr %r)" % (
                where, ", ".join(missing), expr))
        have = set().union(*(series.get(n, set()) for n in names)) | {"job", "instance"}
        unknown = sorted(grouping_labels(expr) - have)
        if unknown and not missing:
            problems.append("%s: groups by %s, a label none of %s has" % (
                where, ", ".join(unknown), ", ".join(sorted(names))))
    return problems


def check_structure(dashboard):
    """The datasource is a template variable that every panel and query uses."""
    problems = []
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no `datasource` template variable of type datasource (prometheus)")
    for p in dashboard.get("panels", []):
        uids = [(p.get("datasource") or {}).get("uid")]
        uids += [(t.get("datasource") or {}).get("uid") for t in p.get("targets", [])]
        if any(u != "${datasource}" for u in uids):
            problems.append("panel %r does not use ${datasource}: %s" % (p.get("title"), uids))
    return problems


def prom_eval(prom, expr):
    """(ok, result list or error text) of an instant query."""
    url = "http://%s:%d/api/v1/query?%s" % (LOOPBACK4, prom.port,
                                            urllib.parse.urlencode({"query": expr}))
    try:
        with urllib.request.urlopen(url, timeout=3.0) as r:
            data = json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        try:
            data = json.loads(e.read().decode())
        except ValueError:
            return False, "HTTP %d" % e.code
    except (urllib.error.URLError, OSError, ValueError) as e:
        return None, str(e)
    if data.get("status") != "success":
        return False, "%s: %s" % (data.get("errorType"), data.get("error"))
    return True, data["data"]["result"]


def grafana_to_prom(expr):
    """Grafana's variables as Prometheus sees them after interpolation."""
    return (expr.replace("$__rate_interval", "15s").replace('"$job"', '".*"')
            .replace('"$instance"', '".*"'))


@case
def grafana_dashboard_metrics_exist(h):
    """Every metric in deploy/grafana/dotproxy.json's queries is served by the
    real binary's /metrics after UDP and TCP traffic through the harness's
    Unbound (histogram series included), every grouping label exists on
    them, and the datasource is a template variable; a real Prometheus (when
    installed) evaluates every expression without error and the panels'
    first queries return data. Self-check: a panel naming
    dotproxy_no_such_metric_total, or grouping by a label that does not
    exist, is reported."""
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    problems = check_structure(dashboard)

    u = h.start_unbound()
    p = M.start_metrics_proxy(h, upstream=u, extra=["--cache-size", "1000"])
    M.send_traffic(p, 20, 10, "traffic")  # the same name: misses, then cache hits
    text, _ = M.scrape(p)
    series = scrape_series(text)
    check("dotproxy_query_duration_seconds_bucket" in series,
          "the scrape has no histogram buckets:\n%s" % text[:1500])

    # Self-check first: the check must be able to fail.
    broken = json.loads(json.dumps(dashboard))
    broken["panels"][0]["targets"][0]["expr"] = "sum(rate(dotproxy_no_such_metric_total[5m]))"
    found = problems_of(broken, series)
    check(any("dotproxy_no_such_metric_total" in x for x in found),
          "self-check: a panel naming dotproxy_no_such_metric_total was not reported: %s" % found)
    broken = json.loads(json.dumps(dashboard))
    broken["panels"][0]["targets"][0]["expr"] = \
        "sum by (no_such_label) (rate(dotproxy_udp_queries_total[5m]))"
    check(any("no_such_label" in x for x in problems_of(broken, series)),
          "self-check: grouping by a label that does not exist was not reported")
    check(metric_names('histogram_quantile(0.99, sum by (le, transport) (rate('
                       'dotproxy_query_duration_seconds_bucket{job=~"$job"}[$__rate_interval])))'
                       ' / on (job) group_left dotproxy_shards') ==
          {"dotproxy_query_duration_seconds_bucket", "dotproxy_shards"},
          "self-check: metric_names() misreads a known expression")
    print("self-check: a missing metric and a missing label are reported")

    problems += problems_of(dashboard, series)
    exprs = panel_exprs(dashboard)
    used = set().union(*(metric_names(e) for _, e in exprs))
    print("%d queries in %d panels use %d metrics, all served: %s" % (
        len(exprs), len(dashboard["panels"]), len(used), ", ".join(sorted(used))))

    if os.access(M.PROMETHEUS, os.X_OK) and not problems:
        prom = M.PrometheusServer(h, p.metrics_port)
        try:
            last = prom.wait_value('up{job="dotproxy"}', 1.0, 30.0)
            check(last and last[0][1] == 1.0, "Prometheus never saw the target up: %s" % last)
            M.send_traffic(p, 20, 10, "more traffic")
            time.sleep(3.0)  # a few 1 s scrapes, so rate() has points
            empty = []
            for where, expr in exprs:
                ok, result = prom_eval(prom, grafana_to_prom(expr))
                if not ok:
                    problems.append("%s: Prometheus refuses %r: %s" % (where, expr, result))
                elif not result and where.endswith(" A"):
                    empty.append(where)
            # Each panel's first query is about traffic that happened.
            for where in empty:
                problems.append("%s: no data from Prometheus after traffic" % where)
            print("Prometheus evaluated %d expressions" % len(exprs))
        finally:
            prom.stop()
    elif not problems:
        print("prometheus not installed: expressions not evaluated")

    if problems:
        raise CaseFailure("deploy/grafana/dotproxy.json:\n  " + "\n  ".join(problems))


def main():
    E.own_cases_only(_INHERITED)
    return E.main()


if __name__ == "__main__":
    E.run_script(main)
