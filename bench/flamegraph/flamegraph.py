#!/usr/bin/python3
"""Fold `perf script` output and draw a flame graph SVG (stdlib only).

  flamegraph.py fold  < perf-script.txt > stacks.folded
  flamegraph.py svg TITLE < stacks.folded > flame.svg
  flamegraph.py top N < stacks.folded        # hottest leaf functions, as text
"""
import collections
import hashlib
import html
import re
import sys

_HEADER = re.compile(r"^(\S.*?)\s+(\d+)(?:/(\d+))?\s+")
_FRAME = re.compile(r"^\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")
_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def fold(inp, out):
    counts = collections.Counter()
    comm, frames = None, []

    def flush():
        if comm is not None:
            stack = [comm] + list(reversed(frames))
            counts[";".join(stack)] += 1

    for line in inp:
        line = line.rstrip("\n")
        if not line.strip():
            flush()
            comm, frames = None, []
            continue
        if not line[0].isspace():
            flush()
            m = _HEADER.match(line)
            comm = m.group(1).strip() if m else line.split()[0]
            frames = []
            continue
        m = _FRAME.match(line)
        if m:
            sym, dso = m.group(2), m.group(3)
            sym = _OFFSET.sub("", sym)
            if sym in ("[unknown]", ""):
                sym = "[%s]" % dso.rsplit("/", 1)[-1]
            frames.append(sym.replace(";", ":"))
    flush()
    for stack, n in sorted(counts.items()):
        out.write("%s %d\n" % (stack, n))


def _read_folded(inp):
    root = {"n": 0, "kids": {}}
    for line in inp:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, n = line.rpartition(" ")
        n = int(n)
        node = root
        node["n"] += n
        for f in stack.split(";"):
            node = node["kids"].setdefault(f, {"n": 0, "kids": {}})
            node["n"] += n
    return root


def _color(name):
    h = int(hashlib.md5(name.encode()).hexdigest()[:6], 16)
    if name.startswith("["):           # unknown / kernel-ish
        return "rgb(%d,%d,%d)" % (200 + h % 40, 200 + h % 40, 200 + (h >> 8) % 40)
    return "rgb(%d,%d,%d)" % (205 + h % 50, 80 + (h >> 8) % 130, 40 + (h >> 16) % 50)


def svg(title, inp, out, width=1200, fh=16):
    root = _read_folded(inp)
    total = max(1, root["n"])

    def depth(node):
        return 1 + max((depth(k) for k in node["kids"].values()), default=0)

    levels = depth(root)
    height = (levels + 3) * fh
    scale = (width - 20) / total
    rects = []

    def walk(name, node, x, level):
        w = node["n"] * scale
        if w < 0.3:
            return
        y = height - (level + 2) * fh
        label = "%s (%d samples, %.2f%%)" % (name, node["n"], 100.0 * node["n"] / total)
        chars = int(w / 7)
        text = name if len(name) <= chars else (name[: chars - 2] + ".." if chars > 3 else "")
        rects.append(
            '<g><title>%s</title><rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" '
            'rx="2"/><text x="%.1f" y="%d">%s</text></g>'
            % (html.escape(label), x, y, w, fh - 1, _color(name), x + 3, y + fh - 4,
               html.escape(text)))
        cx = x
        for kname, kid in sorted(node["kids"].items()):
            walk(kname, kid, cx, level + 1)
            cx += kid["n"] * scale

    walk("all", root, 10, 0)
    out.write(
        '<?xml version="1.0" standalone="no"?>\n'
        '<svg version="1.1" width="%d" height="%d" xmlns="http://www.w3.org/2000/svg">\n'
        '<style>text { font: 11px monospace; fill: #000; pointer-events: none; }</style>\n'
        '<rect width="100%%" height="100%%" fill="#f8f8f0"/>\n'
        '<text x="%d" y="%d" style="font-size:15px">%s</text>\n'
        % (width, height, width // 2 - 4 * len(title), fh + 2, html.escape(title)))
    out.write("\n".join(rects))
    out.write("\n</svg>\n")


def top(n, inp, out):
    leaf = collections.Counter()
    total = 0
    for line in inp:
        stack, _, c = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        leaf[stack.split(";")[-1]] += int(c)
        total += int(c)
    for name, c in leaf.most_common(n):
        out.write("%6.2f%%  %s\n" % (100.0 * c / max(1, total), name))


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    if argv[1] == "fold":
        fold(sys.stdin, sys.stdout)
    elif argv[1] == "svg":
        svg(argv[2] if len(argv) > 2 else "flame graph", sys.stdin, sys.stdout)
    elif argv[1] == "top":
        top(int(argv[2]) if len(argv) > 2 else 25, sys.stdin, sys.stdout)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
