#!/usr/bin/env python3
"""Joins the JSON lines of `nemotronh-bench` and tools/peer_bench.py (same names, same shapes)
into the side-by-side markdown table of docs/PERFORMANCE.md: both times, the speed-up (peer time
over ours), each side's fraction of the op's roofline and its peak memory (beyond what existed
before the case; for the training step, all tensors held, model and optimizer state included).

The roofline of a line is max(flops / dense bf16 peak, bytes / copy bandwidth) with nemotronh's
counts of the work and bytes and the device line's peak and measured copy bandwidth.

Usage: python3 tools/perf_table.py OURS.jsonl PEER.jsonl [--title TEXT] [--write DOC.md]
--write replaces the text between `<!-- side-by-side begin -->` and `<!-- side-by-side end -->`
in DOC.md (written to a temporary name, then renamed); without it the table goes to stdout.
"""
import argparse
import json
import os
import sys

BEGIN, END = "<!-- side-by-side begin -->", "<!-- side-by-side end -->"


def read(path):
    device, ops = {}, {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                j = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not a JSON line ({e})")
            if j.get("bench") == "device":
                device = j
            elif j.get("bench") == "op":
                ops[(j["name"], j["T"])] = j
    return device, ops


def fmt(v, digits=3):
    if v is None:
        return "—"
    return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"


def pct(v):
    return "—" if v is None else f"{100 * v:.0f} %"


def table(ours_path, peer_path, title):
    device, ours = read(ours_path)
    _, peer = read(peer_path)
    if not device:
        sys.exit(f"{ours_path}: no device line (is it nemotronh-bench's output?)")
    peak, bw = device["peak_bf16_tflops"] * 1e12, device["copy_GBps"] * 1e9
    rows = [title, "",
            "| op | T | nemotronh ms | peer ms | speed-up | nemotronh of roofline | peer of roofline "
            "| nemotronh GiB | peer GiB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for key, o in ours.items():
        p = peer.get(key)
        roof = max(o.get("flops", 0) / peak, o.get("bytes", 0) / bw) * 1e3
        mem = "peak_total_gib" if o["name"].startswith("step.") else "peak_gib"
        frac = lambda ms: roof / ms if roof > 0 and ms else None
        rows.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            o["name"], o["T"] or "", fmt(o["ms"]), fmt(p["ms"]) if p else "—",
            f"{p['ms'] / o['ms']:.2f}×" if p else "—", pct(frac(o["ms"])),
            pct(frac(p["ms"])) if p else "—", fmt(o.get(mem)),
            fmt(p.get(mem)) if p else "—"))
    return "\n".join(rows) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ours")
    ap.add_argument("peer")
    ap.add_argument("--title", default="")
    ap.add_argument("--write")
    a = ap.parse_args()
    text = table(a.ours, a.peer, a.title)
    if not a.write:
        sys.stdout.write(text)
        return
    doc = open(a.write).read()
    if BEGIN not in doc or END not in doc:
        sys.exit(f"{a.write}: no '{BEGIN}' ... '{END}' section to replace")
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    tmp = a.write + ".tmp"
    with open(tmp, "w") as f:
        f.write(head + BEGIN + "\n" + text + END + tail)
    os.replace(tmp, a.write)


if __name__ == "__main__":
    main()
