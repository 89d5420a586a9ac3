#!/usr/bin/python3
"""Writes deploy/seccomp/dotproxy.json: the container runtimes' default
seccomp profile (containers-common's seccomp.json, podman's and CRI-O's
default) plus io_uring_setup, io_uring_enter and io_uring_register, resolved
for what dotproxy runs with (capabilities: NET_BIND_SERVICE only) and written
in the plain OCI runtime-spec form (`architectures`, `syscalls` with `names`,
`action`, `args`, `errnoRet`; no `includes`/`excludes`/`archMap`).

Why resolved: podman, Docker and CRI-O evaluate `includes`/`excludes`
(capability and architecture conditions) themselves, but containerd loads a
Kubernetes `Localhost` profile as a bare OCI LinuxSeccomp and ignores them,
which would turn every capability-guarded rule unconditional. The resolved
profile means the same to all four runtimes. Rules that only apply with a
capability dotproxy does not have are left out (the default action denies
them); rules that apply unless a capability is held are kept as they are.

    deploy/seccomp/make-profile.py [/usr/share/containers/seccomp.json] > deploy/seccomp/dotproxy.json

tests/deploy/check_deploy.py regenerates it from the installed
containers-common file and fails when the committed profile differs.
"""

import json
import sys

DEFAULT_SOURCE = "/usr/share/containers/seccomp.json"
IO_URING = ["io_uring_enter", "io_uring_register", "io_uring_setup"]
# What dotproxy's containers hold (deploy/kubernetes: drop ALL, add
# NET_BIND_SERVICE; the image's binary carries it as a file capability).
CAPABILITIES = {"CAP_NET_BIND_SERVICE"}
# The node architectures the profile is written for (Go names, as in archMap).
ARCHES = ["amd64", "arm64"]


def resolve(source):
    archs = []
    for entry in source.get("archMap", []):
        if any(entry["architecture"] == "SCMP_ARCH_" + a.upper()
               for a in ("x86_64", "aarch64")):
            archs += [entry["architecture"]] + entry.get("subArchitectures", [])
    syscalls = []
    for rule in source["syscalls"]:
        inc = rule.get("includes") or {}
        exc = rule.get("excludes") or {}
        if inc.get("caps") and not set(inc["caps"]) <= CAPABILITIES:
            continue  # only with a capability dotproxy lacks
        if exc.get("caps") and set(exc["caps"]) & CAPABILITIES:
            continue  # not with a capability dotproxy holds
        if inc.get("arches") and not set(inc["arches"]) & set(ARCHES):
            continue
        if exc.get("arches") and set(ARCHES) <= set(exc["arches"]):
            continue
        if inc.get("minKernel") or exc.get("minKernel"):
            sys.exit("make-profile: minKernel conditions are not handled")
        out = {"names": sorted(rule["names"]), "action": rule["action"]}
        if rule.get("args"):
            out["args"] = rule["args"]
        if rule.get("errnoRet") is not None:
            out["errnoRet"] = rule["errnoRet"]
        syscalls.append(out)
    names = {n for r in syscalls if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
             for n in r["names"]}
    if set(IO_URING) <= names:
        sys.exit("make-profile: the source already allows io_uring; nothing to add")
    # dotproxy's addition: the io_uring backend (--io-backend auto|uring).
    syscalls.append({"names": IO_URING, "action": "SCMP_ACT_ALLOW"})
    profile = {"defaultAction": source["defaultAction"]}
    if source.get("defaultErrnoRet") is not None:
        profile["defaultErrnoRet"] = source["defaultErrnoRet"]
    profile["architectures"] = archs
    profile["syscalls"] = syscalls
    return profile


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SOURCE
    with open(path) as f:
        source = json.load(f)
    json.dump(resolve(source), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
