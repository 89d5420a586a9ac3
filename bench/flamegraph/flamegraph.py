#!/usr/bin/python3
"""Fold `perf script` output and draw a flame graph SVG (stdlib only).

  flamegraph.py fold  < perf-script.txt > stacks.folded
  flamegraph.py svg TITLE < stacks.folded > flame.svg
  flamegraph.py top N < stacks.folded        # hottest leaf functions (self time), as text
  flamegraph.py html TITLE < stacks.folded > flame.html
      self-contained interactive page (no network): click a frame to zoom into it,
      click the bottom bar to zoom out, type in the search box to highlight frames;
      the top self-time frames are listed under the graph.
"""
import collections
import hashlib
import html
import json
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


def _tree_json(node, name, total, min_frac=0.0005):
    """Nested [name, count, children] lists, dropping frames under min_frac of all."""
    kids = [_tree_json(k, n, total, min_frac) for n, k in sorted(node["kids"].items())
            if k["n"] >= min_frac * total]
    return [name, node["n"], kids]


_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>%(title)s</title>
<style>
body { font: 12px sans-serif; margin: 10px; background: #fafaf5; }
#graph { position: relative; width: 100%%; }
.f { position: absolute; height: 16px; overflow: hidden; white-space: nowrap; font: 11px monospace;
     line-height: 16px; padding-left: 2px; box-sizing: border-box; border: 1px solid #fafaf5;
     border-radius: 2px; cursor: pointer; }
.f.hit { background: #d0f !important; color: #fff; }
#info { height: 18px; margin: 6px 0; font-family: monospace; }
table { border-collapse: collapse; margin-top: 12px; } td, th { padding: 2px 8px; font-family: monospace; }
tr:nth-child(even) { background: #eee; }
</style></head><body>
<h3>%(title)s</h3>
<div>Search: <input id="q" size="30" placeholder="regex, e.g. wolfSSL|Aes"> <span id="m"></span>
 &nbsp; <button id="reset">reset zoom</button></div>
<div id="info">hover a frame; click to zoom</div>
<div id="graph"></div>
<h4>Top frames by self time</h4>
<table><tr><th>self %%</th><th>samples</th><th>frame</th></tr>%(top)s</table>
<script>
const DATA = %(data)s;
const TOTAL = DATA[1];
const g = document.getElementById('graph'), info = document.getElementById('info');
function color(n) {
  let h = 0; for (const c of n) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  if (n.startsWith('[')) return 'rgb(200,200,' + (200 + h %% 40) + ')';
  if (/wolfSSL|Aes|Gcm|sha|Sha|_mp_|sp_/.test(n)) return 'rgb(' + (80 + h %% 60) + ',' + (160 + h %% 60) + ',220)';
  if (/^(__|sys_|do_|entry_|io_|udp|tcp|ip_|net_|sock|skb|ksys|x64|syscall)/.test(n)) return 'rgb(' + (220 + h %% 30) + ',' + (150 + h %% 60) + ',60)';
  return 'rgb(' + (205 + h %% 50) + ',' + (80 + (h >> 8) %% 120) + ',' + (40 + (h >> 16) %% 50) + ')';
}
function depth(n) { let d = 0; for (const k of n[2]) d = Math.max(d, depth(k)); return d + 1; }
let root = DATA, path = [];
function draw() {
  g.innerHTML = '';
  const W = g.clientWidth, D = depth(root), H = 17;
  g.style.height = (D * H + 4) + 'px';
  const re = document.getElementById('q').value;
  let rx = null; try { if (re) rx = new RegExp(re); } catch (e) {}
  let matched = 0;
  function walk(n, x, w, lvl, chain) {
    if (w < 1) return;
    const d = document.createElement('div');
    d.className = 'f'; d.style.left = x + 'px'; d.style.width = w + 'px';
    d.style.top = ((D - lvl - 1) * H) + 'px'; d.style.background = color(n[0]);
    d.textContent = w > 30 ? n[0] : '';
    const pct = (100 * n[1] / TOTAL).toFixed(2);
    d.title = n[0] + ' (' + n[1] + ' samples, ' + pct + '%%)';
    if (rx && rx.test(n[0])) { d.classList.add('hit'); matched += n[1]; }
    d.onmouseover = () => { info.textContent = n[0] + '  —  ' + n[1] + ' samples, ' + pct + '%% of all'; };
    d.onclick = () => { root = n; draw(); };
    g.appendChild(d);
    let cx = x;
    for (const k of n[2]) { const kw = w * k[1] / n[1]; walk(k, cx, kw, lvl + 1); cx += kw; }
  }
  walk(root, 0, W, 0);
  document.getElementById('m').textContent = rx ? ('matched ≈ ' + (100 * matched / TOTAL).toFixed(1) + '%% (may double-count recursion)') : '';
}
document.getElementById('q').oninput = draw;
document.getElementById('reset').onclick = () => { root = DATA; draw(); };
window.onresize = draw;
draw();
</script></body></html>
"""


def page(title, inp, out, ntop=30):
    lines = [l for l in inp]
    root = _read_folded(lines)
    total = max(1, root["n"])
    leaf = collections.Counter()
    for line in lines:
        stack, _, c = line.rstrip("\n").rpartition(" ")
        if stack:
            leaf[stack.split(";")[-1]] += int(c)
    rows = "".join("<tr><td>%.2f</td><td>%d</td><td>%s</td></tr>" % (
        100.0 * c / total, c, html.escape(n)) for n, c in leaf.most_common(ntop))
    data = json.dumps(_tree_json(root, "all", total)).replace("</", "<\\/")
    out.write(_HTML % {"title": html.escape(title), "top": rows, "data": data})


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    if argv[1] == "fold":
        fold(sys.stdin, sys.stdout)
    elif argv[1] == "svg":
        svg(argv[2] if len(argv) > 2 else "flame graph", sys.stdin, sys.stdout)
    elif argv[1] == "html":
        page(argv[2] if len(argv) > 2 else "flame graph", sys.stdin, sys.stdout)
    elif argv[1] == "top":
        top(int(argv[2]) if len(argv) > 2 else 25, sys.stdin, sys.stdout)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
