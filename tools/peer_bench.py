#!/usr/bin/env python3
"""Times the peer stack (PyTorch + transformers' Nemotron-H with the mamba_ssm Triton kernels and
causal-conv1d) at the shapes and names of `nemotronh-bench`, for the side-by-side table
(tools/perf_table.py). One JSON line per measurement, like nemotronh-bench's: name, T, ms (median
of CUDA-event timings), ms_min, peak_gib (memory held beyond what existed before the case).

What each name runs on the peer:
  gemm.<module>.fwd / .bwd   torch.nn.functional.linear, and the two products of its backward
  ssd.fwd / .fwd_bwd         mamba_chunk_scan_combined (dt already positive, as our op takes it)
  conv1d.fwd / .fwd_bwd      causal_conv1d_fn with SiLU on a channels-last [B, C, T] view
  attention.fwd / .fwd_bwd   scaled_dot_product_attention (causal, GQA), what transformers calls
  rmsnorm / gated_rmsnorm    transformers' NemotronHRMSNorm and NemotronHRMSNormGated modules
  lm_head_ce.fwd_bwd         the LM head in bf16 and cross-entropy on fp32 logits (transformers')
  adamw.step                 clip_grad_norm_ (1.0) and fused AdamW over the slice's fp32 params
  layer.<kind>.fwd / .fwd_bwd  the first mixer of each kind of the slice, bf16 autocast
  step.<pattern>             a training step of the slice: autocast, clip, fused AdamW
  scaling                    the same step with every layer checkpointed at each --scaling-seqs
                             length (lines {"bench": "scaling"}; a length that runs out of memory
                             prints its error): `nemotronh-bench-step --recompute all --seq …`
                             times ours

Usage: python3 tools/peer_bench.py [--pattern M-M-M-M*-] [--seq 8192]
           [--ssd-seqs 2048,8192,32768] [--only gemm,ssd,...] [--samples 10] [--warmup 3]
           [--scaling-seqs 2048,8192,32768,131072]
The scaling group runs only when --only names it.
Needs torch with CUDA and transformers (>= 5); mamba_ssm (its ops/triton) and causal_conv1d on
the path for the fast path (the `path` field of the step line says which ran).
"""
import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F

# Nemotron-H-8B's widths (configs/models/nemotron-h-8b.json).
WIDTHS = dict(vocab_size=131072, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
              head_dim=128, intermediate_size=21504, mlp_hidden_act="relu2", mamba_num_heads=128,
              mamba_head_dim=64, ssm_state_size=128, n_groups=8, conv_kernel=4, chunk_size=128,
              tie_word_embeddings=False, layer_norm_epsilon=1e-5)
ACT = torch.bfloat16
GiB = float(1 << 30)


def event_times_ms(fn, samples, warmup):
    """Milliseconds of each of `samples` calls of fn after `warmup` untimed ones (CUDA events),
    sorted."""
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(samples):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        ms.append(start.elapsed_time(stop))
    return sorted(ms)


class Bench:
    def __init__(self, args):
        self.args = args

    def wants(self, group):
        return not self.args.only or group in self.args.only

    def time(self, name, tokens, fn, **fields):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        ms = event_times_ms(fn, self.args.samples, self.args.warmup)
        peak = torch.cuda.max_memory_allocated()
        line = {"bench": "op", "impl": "peer", "name": name, "T": tokens, "ms": ms[len(ms) // 2],
                "ms_min": ms[0], "peak_gib": (peak - before) / GiB, "peak_total_gib": peak / GiB}
        line.update(fields)
        print(json.dumps(line), flush=True)


def randn(*shape, scale=1.0, shift=0.0, dtype=ACT, grad=False):
    t = (torch.randn(*shape, device="cuda", dtype=torch.float32) * scale + shift).to(dtype)
    return t.requires_grad_(grad)


def gemm_shapes(w):
    d, d_inner = w["hidden_size"], w["mamba_num_heads"] * w["mamba_head_dim"]
    in_proj = 2 * d_inner + 2 * w["n_groups"] * w["ssm_state_size"] + w["mamba_num_heads"]
    return [("mamba.in_proj", d, in_proj), ("mamba.out_proj", d_inner, d),
            ("attention.q_proj", d, w["num_attention_heads"] * w["head_dim"]),
            ("attention.kv_proj", d, w["num_key_value_heads"] * w["head_dim"]),
            ("attention.o_proj", w["num_attention_heads"] * w["head_dim"], d),
            ("mlp.up_proj", d, w["intermediate_size"]), ("mlp.down_proj", w["intermediate_size"], d),
            ("lm_head", d, w["vocab_size"])]


def bench_gemms(b, t):
    for name, k, n in gemm_shapes(WIDTHS):
        x, w, dy = randn(t, k), randn(n, k, scale=0.02), randn(t, n)
        b.time(f"gemm.{name}.fwd", t, lambda: F.linear(x, w), K=k, N=n)
        b.time(f"gemm.{name}.bwd", t, lambda: (dy @ w, dy.t() @ x), K=k, N=n)
        del x, w, dy


def bench_ssd(b, t):
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    h, p, g, n, q = (WIDTHS[k] for k in ("mamba_num_heads", "mamba_head_dim", "n_groups",
                                         "ssm_state_size", "chunk_size"))
    x, bm, cm = randn(1, t, h, p, grad=True), randn(1, t, g, n, grad=True), randn(1, t, g, n, grad=True)
    dt = randn(1, t, h, scale=0.05, shift=0.1, grad=True)
    a = (-torch.exp(randn(h, scale=2, shift=-5, dtype=torch.float32).abs())).requires_grad_()
    d = randn(h, dtype=torch.float32, grad=True)
    dy = randn(1, t, h, p)
    fwd = lambda: mamba_chunk_scan_combined(x, dt, a, bm, cm, q, D=d)
    shape = dict(H=h, P=p, G=g, N=n, chunk=q)
    with torch.no_grad():
        b.time("ssd.fwd", t, fwd, **shape)
    b.time("ssd.fwd_bwd", t, lambda: fwd().backward(dy), **shape)


def bench_conv(b, t):
    from causal_conv1d import causal_conv1d_fn
    ch = WIDTHS["mamba_num_heads"] * WIDTHS["mamba_head_dim"] + 2 * WIDTHS["n_groups"] * WIDTHS["ssm_state_size"]
    x = randn(1, t, ch, grad=True)
    w, bias = randn(ch, WIDTHS["conv_kernel"], scale=0.3, grad=True), randn(ch, grad=True)
    dy = randn(1, ch, t)
    fwd = lambda: causal_conv1d_fn(x.transpose(1, 2), w, bias, activation="silu")
    with torch.no_grad():
        b.time("conv1d.fwd", t, fwd, channels=ch)
    b.time("conv1d.fwd_bwd", t, lambda: fwd().backward(dy), channels=ch)


def bench_attention(b, t):
    h, kv, hd = WIDTHS["num_attention_heads"], WIDTHS["num_key_value_heads"], WIDTHS["head_dim"]
    q, k, v = randn(1, h, t, hd, grad=True), randn(1, kv, t, hd, grad=True), randn(1, kv, t, hd, grad=True)
    dout = randn(1, h, t, hd)
    fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                                 scale=1 / math.sqrt(hd))
    shape = dict(heads=h, kv_heads=kv, head_dim=hd)
    with torch.no_grad():
        b.time("attention.fwd", t, fwd, **shape)
    b.time("attention.fwd_bwd", t, lambda: fwd().backward(dout), **shape)


def bench_norms(b, t, mh):
    d, d_inner = WIDTHS["hidden_size"], WIDTHS["mamba_num_heads"] * WIDTHS["mamba_head_dim"]
    norm = mh.NemotronHRMSNorm(d, eps=WIDTHS["layer_norm_epsilon"]).cuda().to(ACT)
    x, dy = randn(t, d, grad=True), randn(t, d)
    b.time("rmsnorm.fwd_bwd", t, lambda: norm(x).backward(dy))
    # The fused training path normalises with mamba_ssm's Triton kernel; the module otherwise.
    group = d_inner // WIDTHS["n_groups"]
    x, z, dy = randn(t, d_inner, grad=True), randn(t, d_inner, grad=True), randn(t, d_inner)
    w = randn(d_inner, scale=0.1, shift=1, grad=True)
    try:
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
        gated = lambda: rmsnorm_fn(x, w, None, z=z, eps=WIDTHS["layer_norm_epsilon"],
                                   group_size=group, norm_before_gate=False)
        kernel = "mamba_ssm"
    except ImportError:
        module = mh.NemotronHRMSNormGated(d_inner, group_size=group,
                                          eps=WIDTHS["layer_norm_epsilon"]).cuda().to(ACT)
        gated = lambda: module(x, z)
        kernel = "transformers"
    b.time("gated_rmsnorm.fwd_bwd", t, lambda: gated().backward(dy), kernel=kernel)


def bench_lm_head(b, t):
    d, v = WIDTHS["hidden_size"], WIDTHS["vocab_size"]
    h, w = randn(t, d, grad=True), randn(v, d, scale=0.02, grad=True)
    labels = torch.randint(0, v, (t,), device="cuda")
    b.time("lm_head_ce.fwd_bwd", t,
           lambda: F.cross_entropy(F.linear(h, w).float(), labels).backward(), vocab=v)


def use_kernels(mh):
    """Points transformers' Nemotron-H at mamba_ssm's and causal-conv1d's functions when they
    import (transformers otherwise looks them up in its kernel hub), counting the fused calls."""
    calls = {"fused_mamba": 0}
    try:
        import causal_conv1d
        from mamba_ssm.ops.triton import ssd_combined
    except ImportError as e:
        print(json.dumps({"bench": "note", "impl": "peer", "kernels": repr(e)}), file=sys.stderr)
        return calls

    def counted(*a, **k):
        calls["fused_mamba"] += 1
        return ssd_combined.mamba_split_conv1d_scan_combined(*a, **k)

    for name, fn in [("mamba2_split_conv1d_scan_combined", counted),
                     ("mamba_split_conv1d_scan_combined", counted),
                     ("mamba_chunk_scan_combined", ssd_combined.mamba_chunk_scan_combined),
                     ("causal_conv1d_fn", causal_conv1d.causal_conv1d_fn),
                     ("causal_conv1d_update", causal_conv1d.causal_conv1d_update),
                     ("is_fast_path_available", True)]:
        if hasattr(mh, name):
            setattr(mh, name, fn)
    if hasattr(mh, "lazy_load_kernel"):
        mh.lazy_load_kernel = lambda name, *a, **k: {"causal-conv1d": causal_conv1d,
                                                     "causal_conv1d": causal_conv1d}.get(name)
    return calls


def slice_model(pattern, seq):
    from transformers import NemotronHConfig, NemotronHForCausalLM
    config = NemotronHConfig(hybrid_override_pattern=pattern, max_position_embeddings=seq,
                             use_mamba_kernels=True, **WIDTHS)
    with torch.device("cuda"):
        model = NemotronHForCausalLM(config)  # fp32 master weights, as HF Trainer with bf16=True
    return model.train()


def train_step(model, opt, ids, targets):
    """One step as HF Trainer takes it with bf16=True and max_grad_norm=1: autocast forward,
    cross-entropy on fp32 logits, backward, clipping, fused AdamW."""
    with torch.autocast("cuda", dtype=ACT):
        logits = model(input_ids=ids, use_cache=False).logits
    F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_layers(b, model, t):
    d = WIDTHS["hidden_size"]
    seen = set()
    for layer in model.model.layers:
        kind = type(layer.mixer).__name__
        name = {"NemotronHMamba2Mixer": "mamba", "NemotronHAttention": "attention",
                "NemotronHMLP": "mlp", "NemotronHMoE": "moe"}.get(kind, kind)
        if name in seen:
            continue
        seen.add(name)
        u, dout = randn(1, t, d, grad=True), randn(1, t, d, scale=0.01)

        def run(backward, mixer=layer.mixer):
            with torch.autocast("cuda", dtype=ACT):
                out = mixer(u)
            out = out[0] if isinstance(out, tuple) else out
            if backward:
                out.backward(dout)

        params = sum(p.numel() for p in layer.mixer.parameters())
        with torch.no_grad():
            b.time(f"layer.{name}.fwd", t, lambda: run(False), params=params)
        b.time(f"layer.{name}.fwd_bwd", t, lambda: run(True), params=params)
        model.zero_grad(set_to_none=True)


def bench_scaling(args, seqs):
    """Training steps of the slice with every layer recomputed (gradient checkpointing), one
    model for all lengths; 3 timed steps after 1, median."""
    model = slice_model(args.pattern, max(seqs))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1, betas=(0.9, 0.95),
                            fused=True)
    for t in seqs:
        ids = torch.randint(0, WIDTHS["vocab_size"], (1, t), device="cuda")
        line = {"bench": "scaling", "impl": "peer", "pattern": args.pattern, "T": t}
        try:
            def step():
                train_step(model, opt, ids, ids)
            torch.cuda.reset_peak_memory_stats()
            ms = event_times_ms(step, 3, 1)
            line.update(ms=ms[1], tokens_per_s=t / (ms[1] / 1e3),
                        peak_total_gib=torch.cuda.max_memory_allocated() / GiB)
        except torch.cuda.OutOfMemoryError as e:
            line["error"] = str(e).splitlines()[0]
            opt.zero_grad(set_to_none=True)
        print(json.dumps(line), flush=True)
        del ids
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pattern", default="M-M-M-M*-")
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--ssd-seqs", default="2048,8192,32768")
    ap.add_argument("--only", default="")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--scaling-seqs", default="2048,8192,32768,65536,131072")
    args = ap.parse_args()
    args.only = [g for g in args.only.split(",") if g]
    groups = {"gemm", "ssd", "conv", "attention", "norm", "lm_head", "adamw", "layer", "step",
              "scaling"}
    for g in args.only:
        if g not in groups:
            ap.error(f"--only: unknown group {g!r} (one of {', '.join(sorted(groups))})")
    torch.manual_seed(0)
    b = Bench(args)
    import transformers
    import transformers.models.nemotron_h.modeling_nemotron_h as mh
    calls = use_kernels(mh)
    print(json.dumps({"bench": "device", "impl": "peer", "device": torch.cuda.get_device_name(),
                      "torch": torch.__version__, "transformers": transformers.__version__}),
          flush=True)
    t = args.seq
    if b.wants("gemm"):
        bench_gemms(b, t)
    if b.wants("ssd"):
        for s in [int(v) for v in args.ssd_seqs.split(",")]:
            bench_ssd(b, s)
    if b.wants("conv"):
        bench_conv(b, t)
    if b.wants("attention"):
        bench_attention(b, t)
    if b.wants("norm"):
        bench_norms(b, t, mh)
    if b.wants("lm_head"):
        bench_lm_head(b, t)
    torch.cuda.empty_cache()
    if "scaling" in args.only:
        bench_scaling(args, [int(v) for v in args.scaling_seqs.split(",")])
    if not (b.wants("layer") or b.wants("adamw") or b.wants("step")):
        return
    model = slice_model(args.pattern, t)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1, betas=(0.9, 0.95),
                            fused=True)
    if b.wants("layer"):
        bench_layers(b, model, t)
    if b.wants("adamw"):
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3

        def adamw():
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        b.time("adamw.step", 0, adamw, params=params)
        model.zero_grad(set_to_none=True)
    if b.wants("step"):
        ids = torch.randint(0, WIDTHS["vocab_size"], (1, t), device="cuda")
        targets = torch.randint(0, WIDTHS["vocab_size"], (1, t), device="cuda")

        def step():
            train_step(model, opt, ids, targets)
        calls["fused_mamba"] = 0
        step()  # which Mamba path transformers takes
        b.time(f"step.{args.pattern}", t, step, params=params,
               path="kernels" if calls["fused_mamba"] else "torch")


if __name__ == "__main__":
    main()
