#!/usr/bin/python3
"""Checks the shape of the code that the design promises (../shared/DESIGN.md):

- no include cycle between files, and none between subsystems (folders):
  dependencies point one way;
- only src/io/ includes liburing: rooms see the reactor, never the backend;
- no source file in src/ or include/ over 600 lines.

Usage: check_layout.py REPO_ROOT. Exit 0 when all hold, 1 with the findings.
"""

import os
import re
import sys

MAX_LINES = 600
INCLUDE = re.compile(r'^\s*#\s*include\s+[<"]([^>"]+)[>"]', re.M)


def subsystem(path):
    # include/dotproxy/<sub>/x.h and src/<sub>/x.cc belong to <sub>.
    parts = path.split("/")
    if parts[0] == "include" and len(parts) > 3:
        return parts[2]
    if parts[0] == "src" and len(parts) > 2:
        return parts[1]
    return None


def resolve(include, repo):
    for candidate in ("include/" + include, include):
        if os.path.isfile(os.path.join(repo, candidate)):
            return candidate
    return None


def find_cycle(graph):
    """Returns one cycle as a list of nodes, or None (iterative DFS)."""
    color = {}
    for start in sorted(graph):
        if color.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        color[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                color[node] = 2
                stack.pop()
                path.pop()
                continue
            if color.get(child) == 1:
                return path[path.index(child):] + [child]
            if not color.get(child):
                color[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def main():
    repo = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    files = []
    for top in ("src", "include"):
        for root, _, names in os.walk(os.path.join(repo, top)):
            for name in names:
                if name.endswith((".h", ".cc")):
                    files.append(os.path.relpath(os.path.join(root, name), repo))
    problems = []
    file_graph = {}
    sub_graph = {}
    for path in sorted(files):
        with open(os.path.join(repo, path), encoding="utf-8") as f:
            text = f.read()
        lines = text.count("\n")
        if lines > MAX_LINES:
            problems.append("%s: %d lines (more than %d)" % (path, lines, MAX_LINES))
        file_graph.setdefault(path, set())
        for include in INCLUDE.findall(text):
            if include.startswith("liburing") and not path.startswith("src/io/"):
                problems.append("%s includes <%s>: only src/io/ may" % (path, include))
            target = resolve(include, repo)
            if target is None or target == path:
                continue
            file_graph[path].add(target)
            a, b = subsystem(path), subsystem(target)
            if a and b and a != b:
                sub_graph.setdefault(a, set()).add(b)
                sub_graph.setdefault(b, set())
    cycle = find_cycle(file_graph)
    if cycle:
        problems.append("include cycle between files: " + " -> ".join(cycle))
    cycle = find_cycle(sub_graph)
    if cycle:
        problems.append("dependency cycle between subsystems: " + " -> ".join(cycle))
    if len(files) < 10:
        problems.append("found only %d source files under %s: wrong root?" % (len(files), repo))
    for p in problems:
        print(p)
    deps = ", ".join("%s -> {%s}" % (s, ", ".join(sorted(d))) for s, d in sorted(sub_graph.items()))
    print("%d files; subsystem dependencies: %s" % (len(files), deps))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
