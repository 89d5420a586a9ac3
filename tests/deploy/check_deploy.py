#!/usr/bin/python3
"""Checks deploy/: the Kubernetes manifests, the seccomp profile and the
image's configuration, offline (never contacts a cluster or any address).

  1. yamllint (deploy/kubernetes/.yamllint, strict: warnings fail) on every
     YAML file under deploy/.
  2. `kubectl kustomize` of deploy/kubernetes and of each layout, parsed with
     python3-yaml; the kinds, and the fields that matter: every container's
     probes (/health, /ready on the metrics port), securityContext
     (runAsNonRoot with the image's uid, readOnlyRootFilesystem,
     allowPrivilegeEscalation false, capabilities drop ALL add
     NET_BIND_SERVICE, seccomp Localhost profiles/dotproxy.json), resources,
     prometheus.io annotations, the ConfigMap mounted read-only at the
     image's config path; the DaemonSet (hostNetwork, dnsPolicy Default,
     system-node-critical, RollingUpdate maxUnavailable, freebind and
     169.254.20.10); the HPA (autoscaling/v2, CPU, targets the Deployment);
     the PDB and the Service (selectors match the Deployment's pods only;
     53 over UDP and TCP).
  3. Every ConfigMap's TOML and the image's deploy/container/dotproxy.toml
     pass `dotproxy --check-config --config FILE --upstream 127.0.0.1:853#x`
     (the built binary; a loopback upstream, nothing is contacted).
  4. deploy/seccomp/dotproxy.json: OCI form, default deny, the three io_uring
     syscalls allowed, and equal to make-profile.py's output from the
     installed containers-common seccomp.json (when installed).
  5. Self-check: broken copies of the manifests (a probe, the seccomp type,
     the HPA target, a capability, the Service protocol, hostNetwork) must be
     reported, so these checks can fail.

    check_deploy.py --dotproxy build/dotproxy [--source ROOT]

Exit status: 0 pass, 1 fail, 77 skip (kubectl, yamllint or python3-yaml
missing).
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

try:
    import yaml
except ImportError:
    yaml = None
try:
    import tomllib
except ImportError:
    tomllib = None

EXIT_SKIP = 77
CONFIG_PATH = "/etc/dotproxy/dotproxy.toml"
SECCOMP = "profiles/dotproxy.json"
LINK_LOCAL = "169.254.20.10"
IO_URING = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
CONTAINERS_COMMON = "/usr/share/containers/seccomp.json"
LAYOUTS = ["", "node-cache", "stub-resolver"]
WANT_KINDS = {
    "": ["ConfigMap", "ConfigMap", "DaemonSet", "Deployment", "HorizontalPodAutoscaler",
         "PodDisruptionBudget", "Service"],
    "node-cache": ["ConfigMap", "DaemonSet"],
    "stub-resolver": ["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                      "PodDisruptionBudget", "Service"],
}


def run(argv, timeout=60, env=None):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                       env=env, text=True)
    return p.returncode, p.stdout, p.stderr


def scrubbed_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOTPROXY_")}
    env.update(extra or {})
    return env


# ---- the manifest checks (pure: documents in, problems out)

def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def matches(selector, labels):
    """A label selector (matchLabels only, as ours are) against labels."""
    ml = (selector or {}).get("matchLabels") or {}
    if (selector or {}).get("matchExpressions"):
        return False
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


def toml_of(docs, name):
    for cm in by_kind(docs, "ConfigMap"):
        if cm["metadata"]["name"] == name:
            return (cm.get("data") or {}).get("dotproxy.toml")
    return None


def parse_toml(text):
    if tomllib is None:
        return None
    return tomllib.loads(text)


def env_value(container, name):
    for e in container.get("env") or []:
        if e.get("name") == name:
            return e.get("value")
    return None


def metrics_port_of(container, conf):
    """The metrics port: DOTPROXY_METRICS in the container's env overrides
    the file's metrics_listen (dotproxy's layers)."""
    addr = env_value(container, "DOTPROXY_METRICS") or (conf or {}).get("metrics_listen")
    if not addr:
        return None
    m = re.search(r":(\d+)$", addr)
    return int(m.group(1)) if m else None


def resolve_port(container, port):
    """A probe's or Service's port (number or name) as a number, via the
    container's ports; None when a name does not resolve."""
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def check_pod(problems, what, template, docs, image_uid):
    """Every container of a workload's pod template."""
    spec = template.get("spec") or {}
    pod_sc = spec.get("securityContext") or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    containers = spec.get("containers") or []
    if not containers:
        problems.append("%s: no containers" % what)
    for c in containers:
        w = "%s container %s" % (what, c.get("name"))
        sc = c.get("securityContext") or {}

        def eff(key):
            return sc.get(key, pod_sc.get(key))

        # The config file: a ConfigMap mounted read-only at the image's path.
        args = c.get("args") or []
        if "--config" not in args or args[args.index("--config") + 1:][:1] != [CONFIG_PATH]:
            problems.append("%s: args %s do not pass --config %s" % (w, args, CONFIG_PATH))
        conf_text = None
        mount_dir = os.path.dirname(CONFIG_PATH)
        mounts = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") in
                  (mount_dir, CONFIG_PATH)]
        if len(mounts) != 1:
            problems.append("%s: want one volume mounted at %s" % (w, mount_dir))
        else:
            m = mounts[0]
            if m.get("readOnly") is not True:
                problems.append("%s: the config volume is not mounted readOnly" % w)
            vol = volumes.get(m.get("name")) or {}
            cm_name = (vol.get("configMap") or {}).get("name")
            if not cm_name:
                problems.append("%s: the config volume is not a ConfigMap" % w)
            else:
                conf_text = toml_of(docs, cm_name)
                if conf_text is None:
                    problems.append("%s: ConfigMap %s with dotproxy.toml not in the output" % (
                        w, cm_name))
        conf = None
        if conf_text is not None:
            try:
                conf = parse_toml(conf_text)
            except Exception as e:  # noqa: BLE001 - any TOML error is a problem
                problems.append("%s: its dotproxy.toml does not parse: %s" % (w, e))

        # Metrics port, probes, annotations.
        mport = metrics_port_of(c, conf)
        if mport is None and conf is not None:
            problems.append("%s: no metrics_listen / DOTPROXY_METRICS: probes cannot work" % w)
        for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
            hg = (c.get(probe) or {}).get("httpGet")
            if not hg:
                problems.append("%s: no %s.httpGet" % (w, probe))
                continue
            if hg.get("path") != path:
                problems.append("%s: %s path %r, want %s" % (w, probe, hg.get("path"), path))
            port = resolve_port(c, hg.get("port"))
            if mport is not None and port != mport:
                problems.append("%s: %s port %s (%s), want the metrics port %d" % (
                    w, probe, hg.get("port"), port, mport))
        if annotations.get("prometheus.io/scrape") != "true":
            problems.append("%s: annotation prometheus.io/scrape is not \"true\"" % what)
        if mport is not None and annotations.get("prometheus.io/port") != str(mport):
            problems.append("%s: annotation prometheus.io/port %r, want \"%d\"" % (
                what, annotations.get("prometheus.io/port"), mport))
        if annotations.get("prometheus.io/path") != "/metrics":
            problems.append("%s: annotation prometheus.io/path is not /metrics" % what)

        # Hardening.
        if eff("runAsNonRoot") is not True:
            problems.append("%s: runAsNonRoot is not true" % w)
        if image_uid is not None and eff("runAsUser") not in (None, image_uid):
            problems.append("%s: runAsUser %s, the image's user is %d" % (
                w, eff("runAsUser"), image_uid))
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append("%s: readOnlyRootFilesystem is not true" % w)
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append("%s: allowPrivilegeEscalation is not false" % w)
        caps = sc.get("capabilities") or {}
        if caps.get("drop") != ["ALL"]:
            problems.append("%s: capabilities.drop %s, want [ALL]" % (w, caps.get("drop")))
        if caps.get("add") != ["NET_BIND_SERVICE"]:
            problems.append("%s: capabilities.add %s, want [NET_BIND_SERVICE]" % (
                w, caps.get("add")))
        sp = eff("seccompProfile") or {}
        if sp.get("type") != "Localhost" or sp.get("localhostProfile") != SECCOMP:
            problems.append("%s: seccompProfile %s, want Localhost %s" % (w, sp, SECCOMP))
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if not (res.get(kind) or {}).get(r):
                    problems.append("%s: no resources.%s.%s" % (w, kind, r))
        yield c, conf


def check_manifests(docs, layout, image_uid):
    """Problems found in the rendered documents of `layout` ("" for all)."""
    problems = []
    kinds = sorted(d.get("kind", "?") for d in docs)
    want = WANT_KINDS[layout]
    if kinds != want:
        problems.append("kinds %s, want %s" % (kinds, want))

    for ds in by_kind(docs, "DaemonSet"):
        w = "DaemonSet %s" % ds["metadata"]["name"]
        spec = ds["spec"]
        pod = spec["template"].get("spec") or {}
        if not matches(spec.get("selector"), spec["template"]["metadata"].get("labels") or {}):
            problems.append("%s: selector does not match its pod labels" % w)
        if pod.get("hostNetwork") is not True:
            problems.append("%s: hostNetwork is not true" % w)
        if pod.get("dnsPolicy") != "Default":
            problems.append("%s: dnsPolicy %r, want Default" % (w, pod.get("dnsPolicy")))
        if pod.get("priorityClassName") != "system-node-critical":
            problems.append("%s: priorityClassName %r, want system-node-critical" % (
                w, pod.get("priorityClassName")))
        us = spec.get("updateStrategy") or {}
        if us.get("type") != "RollingUpdate" or "maxUnavailable" not in (us.get("rollingUpdate") or {}):
            problems.append("%s: updateStrategy %s, want RollingUpdate with maxUnavailable" % (w, us))
        for c, conf in check_pod(problems, w, spec["template"], docs, image_uid):
            args = c.get("args") or []
            freebind = "--freebind" in args or (conf or {}).get("freebind") is True
            listen = [a for i, a in enumerate(args) if i and args[i - 1] == "--listen"]
            listen += (conf or {}).get("listen") or []
            if not freebind:
                problems.append("%s: neither --freebind nor freebind = true" % w)
            if not any(str(a).startswith(LINK_LOCAL + ":") for a in listen):
                problems.append("%s: does not listen on %s (listen: %s)" % (w, LINK_LOCAL, listen))

    deployments = by_kind(docs, "Deployment")
    for dep in deployments:
        w = "Deployment %s" % dep["metadata"]["name"]
        spec = dep["spec"]
        if not matches(spec.get("selector"), spec["template"]["metadata"].get("labels") or {}):
            problems.append("%s: selector does not match its pod labels" % w)
        if (spec["template"].get("spec") or {}).get("hostNetwork"):
            problems.append("%s: hostNetwork set" % w)
        list(check_pod(problems, w, spec["template"], docs, image_uid))

    other_pods = [d["spec"]["template"]["metadata"].get("labels") or {}
                  for d in by_kind(docs, "DaemonSet")]
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        w = "HorizontalPodAutoscaler %s" % hpa["metadata"]["name"]
        if hpa.get("apiVersion") != "autoscaling/v2":
            problems.append("%s: apiVersion %s, want autoscaling/v2" % (w, hpa.get("apiVersion")))
        ref = hpa["spec"].get("scaleTargetRef") or {}
        if not any(ref.get("kind") == "Deployment" and ref.get("apiVersion") == "apps/v1"
                   and ref.get("name") == d["metadata"]["name"] for d in deployments):
            problems.append("%s: scaleTargetRef %s is not the Deployment" % (w, ref))
        cpu = [m for m in hpa["spec"].get("metrics") or [] if m.get("type") == "Resource"
               and (m.get("resource") or {}).get("name") == "cpu"]
        if not cpu:
            problems.append("%s: no CPU resource metric" % w)
        if hpa["spec"].get("minReplicas", 1) < 2:
            problems.append("%s: minReplicas below 2 (the PDB could block every drain)" % w)

    for kind in ("PodDisruptionBudget", "Service"):
        for obj in by_kind(docs, kind):
            w = "%s %s" % (kind, obj["metadata"]["name"])
            sel = obj["spec"].get("selector") or {}
            if kind == "Service":
                sel = {"matchLabels": sel}
            pods = [d["spec"]["template"]["metadata"].get("labels") or {} for d in deployments]
            if not pods or not all(matches(sel, p) for p in pods):
                problems.append("%s: selector %s does not match the Deployment's pods" % (w, sel))
            if any(matches(sel, p) for p in other_pods):
                problems.append("%s: selector %s also matches the DaemonSet's pods" % (w, sel))

    for svc in by_kind(docs, "Service"):
        w = "Service %s" % svc["metadata"]["name"]
        ports = sorted((p.get("port"), p.get("protocol", "TCP")) for p in svc["spec"].get("ports") or [])
        if ports != [(53, "TCP"), (53, "UDP")]:
            problems.append("%s: ports %s, want 53/UDP and 53/TCP" % (w, ports))
        for p in svc["spec"].get("ports") or []:
            for dep in deployments:
                c = dep["spec"]["template"]["spec"]["containers"][0]
                target = p.get("targetPort", p.get("port"))
                cports = [(cp.get("containerPort"), cp.get("protocol", "TCP"))
                          for cp in c.get("ports") or []]
                if (resolve_port(c, target), p.get("protocol", "TCP")) not in cports:
                    problems.append("%s: targetPort %s/%s is no container port of %s" % (
                        w, target, p.get("protocol"), dep["metadata"]["name"]))
    return problems


def mutations(docs):
    """(label, broken copy) pairs the checks must catch."""

    def first(ds, kind):
        return by_kind(ds, kind)[0]

    def container(ds, kind):
        return first(ds, kind)["spec"]["template"]["spec"]["containers"][0]

    out = []
    d = copy.deepcopy(docs)
    del container(d, "Deployment")["readinessProbe"]
    out.append(("no readinessProbe", d))
    d = copy.deepcopy(docs)
    container(d, "DaemonSet")["livenessProbe"]["httpGet"]["path"] = "/metrics"
    out.append(("liveness on /metrics", d))
    d = copy.deepcopy(docs)
    container(d, "DaemonSet")["securityContext"]["seccompProfile"] = {"type": "RuntimeDefault"}
    out.append(("seccomp RuntimeDefault", d))
    d = copy.deepcopy(docs)
    container(d, "Deployment")["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]
    out.append(("NET_ADMIN added", d))
    d = copy.deepcopy(docs)
    first(d, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] = "other"
    out.append(("HPA targets another name", d))
    d = copy.deepcopy(docs)
    for p in first(d, "Service")["spec"]["ports"]:
        p["protocol"] = "TCP"
    out.append(("Service TCP only", d))
    d = copy.deepcopy(docs)
    del first(d, "DaemonSet")["spec"]["template"]["spec"]["hostNetwork"]
    out.append(("DaemonSet without hostNetwork", d))
    d = copy.deepcopy(docs)
    first(d, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] = {"app": "x"}
    out.append(("PDB selects nothing", d))
    d = copy.deepcopy(docs)
    cm = [c for c in by_kind(d, "ConfigMap") if "node-cache" in c["metadata"]["name"]][0]
    cm["data"]["dotproxy.toml"] = cm["data"]["dotproxy.toml"].replace("freebind = true", "")
    out.append(("node-cache without freebind", d))
    return out


# ---- the seccomp profile

def check_seccomp(src):
    problems = []
    path = os.path.join(src, "deploy", "seccomp", "dotproxy.json")
    with open(path) as f:
        profile = json.load(f)
    if profile.get("defaultAction") != "SCMP_ACT_ERRNO":
        problems.append("seccomp: defaultAction %s, want SCMP_ACT_ERRNO" % profile.get("defaultAction"))
    allowed = set()
    for rule in profile.get("syscalls", []):
        if "includes" in rule or "excludes" in rule:
            problems.append("seccomp: a rule with includes/excludes (containerd ignores them): %s"
                            % rule["names"][:3])
        if rule.get("action") == "SCMP_ACT_ALLOW" and not rule.get("args"):
            allowed |= set(rule["names"])
    if not IO_URING <= allowed:
        problems.append("seccomp: %s not allowed" % sorted(IO_URING - allowed))
    if "archMap" in profile or not profile.get("architectures"):
        problems.append("seccomp: want OCI `architectures`, not archMap")
    if os.path.exists(CONTAINERS_COMMON):
        rc, out, err = run([sys.executable, os.path.join(src, "deploy", "seccomp", "make-profile.py"),
                            CONTAINERS_COMMON])
        if rc != 0:
            problems.append("seccomp: make-profile.py failed: %s" % err)
        elif json.loads(out) != profile:
            problems.append("seccomp: deploy/seccomp/dotproxy.json differs from make-profile.py's "
                            "output for %s: regenerate it" % CONTAINERS_COMMON)
        else:
            print("seccomp: dotproxy.json = make-profile.py(%s)" % CONTAINERS_COMMON)
    else:
        print("seccomp: %s not installed; regeneration not compared" % CONTAINERS_COMMON)
    return problems


# ---- main

def image_uid(src):
    with open(os.path.join(src, "Dockerfile")) as f:
        users = re.findall(r"^USER\s+(\S+)", f.read(), re.M)
    if not users:
        return None
    uid = users[-1].split(":")[0]
    return int(uid) if uid.isdigit() else None


def check_config(dotproxy, problems, label, text, env_extra=None):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        rc, out, err = run([dotproxy, "--check-config", "--config", path,
                            "--upstream", "127.0.0.1:853#x"], timeout=20,
                           env=scrubbed_env(env_extra))
    finally:
        os.unlink(path)
    if rc != 0:
        problems.append("%s: dotproxy --check-config exit %s: %s" % (label, rc, (err or out).strip()))
    else:
        print("%s: --check-config OK: %s" % (label, out.splitlines()[0][:120]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dotproxy", required=True)
    ap.add_argument("--source", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                     "..", ".."))
    args = ap.parse_args()
    src = os.path.abspath(args.source)
    kubectl = shutil.which("kubectl")
    yamllint = shutil.which("yamllint")
    if yaml is None or tomllib is None:
        print("SKIP: python3-yaml or tomllib (Python >= 3.11) missing")
        return EXIT_SKIP
    if not kubectl or not yamllint:
        print("SKIP: kubectl or yamllint missing (tools/install-deps.sh installs yamllint)")
        return EXIT_SKIP
    problems = []

    # 1. yamllint
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(src, "deploy"))
                   for f in fs if f.endswith((".yaml", ".yml")) or f == ".yamllint")
    rc, out, err = run([yamllint, "-s", "-f", "parsable", "-c",
                        os.path.join(src, "deploy", "kubernetes", ".yamllint")] + files)
    if rc != 0:
        problems.append("yamllint:\n" + (out + err).strip())
    print("yamllint: %d files, exit %d" % (len(files), rc))

    # 2. kustomize and the manifests; 5. the self-check
    uid = image_uid(src)
    if uid is None:
        problems.append("Dockerfile: USER is not numeric (runAsNonRoot cannot check a name)")
    rendered = {}
    for layout in LAYOUTS:
        d = os.path.join(src, "deploy", "kubernetes", layout)
        rc, out, err = run([kubectl, "kustomize", d], timeout=60,
                           env=scrubbed_env({"KUBECONFIG": os.devnull}))
        if rc != 0:
            problems.append("kubectl kustomize %s: exit %s: %s" % (d, rc, err.strip()))
            continue
        docs = [x for x in yaml.safe_load_all(out) if x]
        rendered[layout] = docs
        found = check_manifests(docs, layout, uid)
        problems += ["%s: %s" % (layout or "all", p) for p in found]
        print("kustomize %s: %d objects (%s), %d problems" % (
            layout or "deploy/kubernetes", len(docs),
            ", ".join(sorted(x["kind"] for x in docs)), len(found)))
    if "" in rendered:
        for label, broken in mutations(rendered[""]):
            if not check_manifests(broken, "", uid):
                problems.append("self-check: a broken copy (%s) passed the checks" % label)
        print("self-check: %d broken copies, each reported" % len(mutations(rendered[""])))

    # 3. every ConfigMap TOML and the image's own, through the real binary
    for cm in by_kind(rendered.get("", []), "ConfigMap"):
        env = {}
        if "node-cache" in cm["metadata"]["name"]:
            env = {"DOTPROXY_METRICS": "127.0.0.1:9253"}  # what the pod's env gives, on loopback
        check_config(args.dotproxy, problems, "ConfigMap %s" % cm["metadata"]["name"],
                     cm["data"]["dotproxy.toml"], env)
    with open(os.path.join(src, "deploy", "container", "dotproxy.toml")) as f:
        image_conf = f.read()
    if not (parse_toml(image_conf).get("metrics_listen") or "").endswith(":9153"):
        problems.append("deploy/container/dotproxy.toml: metrics_listen is not on port 9153")
    check_config(args.dotproxy, problems, "image config", image_conf)

    # 4. seccomp
    problems += check_seccomp(src)

    if problems:
        print("FAIL: %d problems:\n  %s" % (len(problems), "\n  ".join(problems)))
        return 1
    print("PASS check_deploy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
