#!/usr/bin/env python3
"""Summaries of scripts/gpu_distributed.sh's runs, from each run's metrics.jsonl under OUT.

  dist_summary.py agreement OUT REFERENCE RUN...   worst relative loss difference to REFERENCE
  dist_summary.py throughput OUT BASE RUN...       tokens/s per GPU (median of the steps after
                                                   the first two), efficiency against BASE
                                                   (1 GPU; every RUN uses 2) and peak memory
"""
import json
import statistics
import sys


def steps(out, run):
    with open(f"{out}/{run}/metrics.jsonl") as f:
        return [j for j in map(json.loads, f) if "loss" in j]


def agreement(out, reference, runs):
    ref = steps(out, reference)
    for run in runs:
        got = steps(out, run)
        worst = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(got, ref))
        print(f"{run}: {len(got)} steps, worst relative loss difference to 1 GPU {worst:.2e}")
    print(f"{reference} losses:", " ".join(f"{j['loss']:.4f}" for j in ref))


def throughput(out, base, runs):
    def measure(run, gpus):
        s = steps(out, run)
        per_gpu = statistics.median(j["tokens"] / j["seconds"] for j in s[2:]) / gpus
        return per_gpu, statistics.median(j["seconds"] for j in s[2:]), \
            max(j.get("gpu_memory_peak_gib", 0) for j in s)
    first, first_s, first_mem = measure(base, 1)
    print(f"{base}: {first:.0f} tokens/s per GPU, {first_s * 1e3:.0f} ms/step, "
          f"peak {first_mem:.1f} GiB")
    for run in runs:
        per_gpu, s, mem = measure(run, 2)
        print(f"{run}: {per_gpu:.0f} tokens/s per GPU, {s * 1e3:.0f} ms/step, "
              f"scaling efficiency {per_gpu / first:.1%}, peak {mem:.1f} GiB (rank 0)")


if __name__ == "__main__":
    {"agreement": agreement, "throughput": throughput}[sys.argv[1]](sys.argv[2], sys.argv[3],
                                                                    sys.argv[4:])
