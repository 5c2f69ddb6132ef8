#!/usr/bin/env python3
"""Draws the scaling curve of docs/PERFORMANCE.md as an SVG: training tokens/s and peak memory
against the sequence length, ours (`nemotronh-bench-step --recompute all --seq 2048,...` lines)
and the peer's (`tools/peer_bench.py --only scaling` lines). Lengths that ran out of memory are
left out of a curve. No plotting library: the SVG is written directly.

Usage: python3 tools/plot_scaling.py OURS.jsonl PEER.jsonl OUT.svg [--title TEXT]
"""
import argparse
import json
import math
import os

W, H, PAD = 440, 320, 60  # one panel
COLOURS = {"nemotronh": "#1f77b4", "peer (transformers + mamba_ssm)": "#d62728"}


def read(path, bench, seq_key, tps_key, mem_key):
    points = []
    with open(path) as f:
        for line in f:
            if not line.startswith("{"):
                continue
            j = json.loads(line)
            if j.get("bench") == bench and "error" not in j:
                points.append((j[seq_key], j[tps_key], j[mem_key]))
    return sorted(points)


def nice_top(v):
    """The smallest 4·step >= 1.05·v with step 1, 2, 2.5, 3 or 5 times a power of ten."""
    base = 10 ** math.floor(math.log10(v * 1.05 / 4))
    return 4 * next(base * m for m in (1, 2, 2.5, 3, 5, 10) if 4 * base * m >= v * 1.05)


def panel(x0, title, ylabel, series, value):
    xs = [p[0] for pts in series.values() for p in pts]
    top = nice_top(max(value(p) for pts in series.values() for p in pts))
    lo, hi = math.log2(min(xs)), math.log2(max(xs))
    span = max(hi - lo, 1)
    px = lambda t: x0 + PAD + (math.log2(t) - lo) / span * (W - 1.5 * PAD)
    py = lambda v: H - PAD + 10 - v / top * (H - 1.7 * PAD)
    out = [f'<text x="{x0 + W / 2}" y="24" text-anchor="middle" font-weight="bold">{title}</text>',
           f'<line x1="{x0 + PAD}" y1="{py(0)}" x2="{x0 + W - PAD / 2}" y2="{py(0)}" stroke="black"/>',
           f'<line x1="{x0 + PAD}" y1="{py(0)}" x2="{x0 + PAD}" y2="{py(top)}" stroke="black"/>',
           f'<text x="{x0 + 14}" y="{H / 2}" transform="rotate(-90 {x0 + 14} {H / 2})" '
           f'text-anchor="middle">{ylabel}</text>',
           f'<text x="{x0 + W / 2}" y="{H - 8}" text-anchor="middle">tokens per sequence</text>']
    for t in sorted(set(xs)):
        out.append(f'<text x="{px(t)}" y="{py(0) + 18}" text-anchor="middle" font-size="11">'
                   f'{t // 1024}k</text>')
    for i in range(5):
        v = top * i / 4
        out.append(f'<text x="{x0 + PAD - 6}" y="{py(v) + 4}" text-anchor="end" font-size="11">'
                   f'{v:g}</text>')
    for name, pts in series.items():
        c = COLOURS[name]
        path = " ".join(f"{px(p[0]):.1f},{py(value(p)):.1f}" for p in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        out += [f'<circle cx="{px(p[0]):.1f}" cy="{py(value(p)):.1f}" r="3.5" fill="{c}"/>'
                for p in pts]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ours")
    ap.add_argument("peer")
    ap.add_argument("out")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    series = {
        "nemotronh": read(a.ours, "step", "seq", "tokens_per_s", "peak_tensor_gib"),
        "peer (transformers + mamba_ssm)": read(a.peer, "scaling", "T", "tokens_per_s",
                                                "peak_total_gib"),
    }
    series = {k: v for k, v in series.items() if v}
    if not series:
        raise SystemExit(f"{a.ours}, {a.peer}: no scaling points")
    body = panel(0, "training tokens/s (thousands)", "k tokens/s", series, lambda p: p[1] / 1e3)
    body += panel(W, "peak memory", "GiB", series, lambda p: p[2])
    for i, name in enumerate(series):
        y = H + 10 + 18 * i
        body.append(f'<rect x="{PAD}" y="{y - 10}" width="14" height="4" fill="{COLOURS[name]}"/>')
        body.append(f'<text x="{PAD + 20}" y="{y - 5}" font-size="12">{name}</text>')
    if a.title:
        body.append(f'<text x="{W}" y="{H + 10 + 18 * len(series)}" text-anchor="middle" '
                    f'font-size="11">{a.title}</text>')
    height = H + 20 + 18 * len(series)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{height}" '
           f'font-family="sans-serif" font-size="13">\n<rect width="100%" height="100%" '
           f'fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(svg)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
