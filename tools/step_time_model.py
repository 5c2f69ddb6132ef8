#!/usr/bin/env python3
"""A first-order model of the training step time of the published recipes on 8-1024 GPUs.

Compute comes from what the engine measured on one GPU (MFU of the 8B-width slice); the
communication volume per step is counted per layout and priced at NVLink and InfiniBand
bandwidths. Exposure follows the engine as it is: data-parallel gradient reduction overlaps the
backward except the embedding's bucket, the distributed optimizer's parameter all-gather does
not overlap, tensor-parallel all-reduces and expert all-to-alls do not overlap.

  python3 tools/step_time_model.py [--nemotronh build/nemotronh] > table.md

Parameter counts and activation sizes come from `nemotronh info --preset NAME`.
"""
import argparse
import json
import re
import subprocess

PEAK = 989.4e12      # dense bf16 FLOP/s of an H100/H200 SXM
MFU = 0.367          # measured: 8B-width slice, T = 8192, one H200 (docs/PERFORMANCE.md)
NVLINK = 350e9       # NCCL all-reduce bus bandwidth inside an 8-GPU NVLink node, bytes/s
IB = 50e9            # per GPU between nodes: one 400 Gb/s NIC per GPU, bytes/s
GPUS_PER_NODE = 8
SEQ, GBS = 8192, 768

# Layouts. The 8B's is NeMo's recipe (TP 2, sequence parallel, global batch 768); the others
# are engine choices with the same batch.
RECIPES = [
    ("nemotron-h-8b", "8B", 2, 1, "NeMo recipe: TP 2, GBS 768"),
    ("nemotron-h-56b", "56B", 8, 1, "engine choice: TP 8"),
    ("nemotron-3-super-120b-a12b", "Super 120B-A12B", 1, 8, "engine choice: EP 8 in one node"),
    ("nemotron-3-super-120b-a12b", "Super 120B-A12B", 2, 8,
     "engine choice: TP 2, EP 8, so each expert group spans two nodes"),
]


def info(binary, preset):
    out = subprocess.run([binary, "info", "--preset", preset], capture_output=True, text=True,
                         check=True).stdout
    units = {"B": 1e9, "M": 1e6, "K": 1e3}
    params = {}
    for kind in ("attention", "embedding", "lm_head", "mamba", "mlp", "moe", "norm"):
        m = re.search(rf"^\s+{kind}\s+([\d.]+)\s*([BMK]?)", out, re.M)
        if m:
            params[kind] = float(m.group(1)) * units.get(m.group(2), 1)
    active = re.search(r"([\d.]+) B active per token", out)
    total = re.search(r"parameters\s+([\d.]+) B", out)
    act = re.search(r"activations ([\d.]+) GiB for 1 x \d+ tokens without recompute, ([\d.]+) GiB", out)
    pattern = re.search(r"layers\s+\d+: (\S+)", out).group(1)
    return {
        "params": params,
        "active": float(active.group(1)) * 1e9 if active else float(total.group(1)) * 1e9,
        "activations": float(act.group(1)) * 2**30,
        "activations_recompute": float(act.group(2)) * 2**30,
        "pattern": pattern,  # M Mamba, * attention, - MLP, E MoE
    }


def hidden_and_heads(preset):
    c = json.load(open(f"configs/models/{preset}.json"))
    return c["hidden_size"], c["num_attention_heads"] * (c.get("head_dim") or 128), \
        c.get("num_experts_per_tok") or 0, c.get("moe_latent_size") or c["hidden_size"]


def model_row(m, preset, tp, ep, gpus):
    dp = gpus // tp
    if gpus % tp or dp % ep or GBS % dp:
        return None
    d, attn_width, top_k, moe_width = hidden_and_heads(preset)
    p = m["params"]
    embed = p.get("embedding", 0) + p.get("lm_head", 0)
    attention_layers = m["pattern"].count("*")
    flops_token = 6 * (m["active"] - p.get("embedding", 0)) + 6 * SEQ * attn_width * attention_layers
    tokens_gpu = GBS * SEQ / gpus
    compute = flops_token * tokens_gpu / (PEAK * MFU)
    # Tensor parallel: one all-reduce of the [tokens, D] bf16 activations after each split
    # layer, forward and backward, per micro-batch of one sequence (sums of tp - 1 parts).
    split_layers = sum(1 for c in m["pattern"] if c in "M*-")
    micro_batches = GBS // dp
    tp_bytes = 2 * (tp - 1) / tp * SEQ * d * 2 * split_layers * 2 * micro_batches
    tp_time = tp_bytes / NVLINK if tp > 1 else 0.0
    # Experts: dispatch and combine of top_k rows per token per MoE layer, forward and backward.
    moe_layers = m["pattern"].count("E")
    ep_bytes = (ep - 1) / ep * SEQ * top_k * moe_width * 2 * 2 * 2 * moe_layers * micro_batches
    # Tensor-parallel ranks are neighbours, so an expert group spans tp × ep GPUs.
    ep_time = ep_bytes / (NVLINK if tp * ep <= GPUS_PER_NODE else IB) if ep > 1 else 0.0
    # Data parallel with the distributed optimizer: bf16 gradients reduce-scattered, bf16
    # parameters all-gathered; over InfiniBand once the group leaves the node.
    local = embed + (p.get("mamba", 0) + p.get("attention", 0) + p.get("mlp", 0)) / tp + \
        p.get("moe", 0) / ep
    bw = NVLINK if tp * dp <= GPUS_PER_NODE else IB
    share = (dp - 1) / dp
    gather = share * local * 2 / bw
    last_bucket = share * p.get("embedding", 0) * 2 / bw
    reduce = share * local * 2 / bw
    backward = compute * 2 / 3
    dp_exposed = gather + last_bucket + max(0.0, reduce - backward) if dp > 1 else 0.0
    step = compute + tp_time + ep_time + dp_exposed
    # bf16 weights and gradients; fp32 masters and moments sharded over the data-parallel group
    # (the experts' over its dp / ep ranks that hold the same experts).
    experts = p.get("moe", 0) / ep
    states = local * 4 + (local - experts) * 12 / dp + experts * 12 / (dp // ep)
    acts = m["activations_recompute"] / tp
    return {
        "gpus": gpus, "layout": f"TP{tp} DP{dp}" + (f" EP{ep}" if ep > 1 else ""),
        "compute": compute, "tp": tp_time, "ep": ep_time, "dp": dp_exposed, "step": step,
        "tokens_gpu": GBS * SEQ / step / gpus, "exposed": (step - compute) / step,
        "memory": (states + acts) / 2**30,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nemotronh", default="build/nemotronh")
    args = ap.parse_args()
    print(f"Global batch {GBS} × {SEQ} tokens; compute at {MFU:.1%} MFU of {PEAK / 1e12:.0f} "
          f"TFLOP/s; NVLink {NVLINK / 1e9:.0f} GB/s, InfiniBand {IB / 1e9:.0f} GB/s per GPU.\n")
    for preset, name, tp, ep, source in RECIPES:
        m = info(args.nemotronh, preset)
        print(f"**{name}** ({source})\n")
        print("| GPUs | layout | compute s | TP comm s | EP comm s | DP exposed s | step s "
              "| tokens/s per GPU | exposed comm | states + recomputed activations, GiB/GPU |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for gpus in (8, 16, 32, 64, 128, 256, 512, 1024):
            r = model_row(m, preset, tp, ep, gpus)
            if r is None:
                print(f"| {gpus} | — | global batch {GBS} does not split over this layout | | | | | | | |")
                continue
            print(f"| {gpus} | {r['layout']} | {r['compute']:.2f} | {r['tp']:.2f} | {r['ep']:.2f} "
                  f"| {r['dp']:.2f} | {r['step']:.2f} | {r['tokens_gpu']:.0f} | {r['exposed']:.0%} "
                  f"| {r['memory']:.0f} |")
        print()


if __name__ == "__main__":
    main()
