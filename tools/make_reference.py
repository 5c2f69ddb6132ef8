#!/usr/bin/env python3
"""Builds the reference cases in tests/data/reference/<case>/ with transformers.

Each case is a tiny random model (config.json + model.safetensors, as
save_pretrained writes them) and reference.safetensors holding input_ids,
labels, the logits, the loss and grad/<parameter name> for every parameter,
from one forward and backward pass in fp32 on the CPU. `nemotronh verify`
checks the engine against these files.

Every parameter that initialises to a constant (D, norms, biases, A_log,
dt_bias, the router's correction bias) is perturbed so a wrong index or a
missing term cannot hide, and time_step_min is set to 0 after init so the
PyTorch path's dt clamp equals time_step_limit (SPEC §2).

Usage: python3 tools/make_reference.py [--out tests/data/reference] [--only CASE ...]
       python3 tools/make_reference.py --from-dir MODEL_DIR
The second form loads an existing model directory (one `nemotronh init` or `save`
wrote, say) with transformers and writes MODEL_DIR/reference.safetensors, which
shows that transformers reads what the engine writes and computes the same.
Needs: torch, transformers (>= 5), safetensors.
"""
import argparse
import json
import math
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Mamba2Config, Mamba2ForCausalLM, NemotronHConfig, NemotronHForCausalLM

NEMOTRON_BASE = dict(
    vocab_size=96,
    hidden_size=32,
    layer_norm_epsilon=1e-5,
    mamba_num_heads=4,
    mamba_head_dim=8,
    ssm_state_size=8,
    n_groups=2,
    conv_kernel=4,
    chunk_size=5,  # does not divide the sequence length: the last chunk is short
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=48,
    initializer_range=0.1,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

CASES = {
    # Dense hybrid: Mamba, MLP and GQA attention; n_groups > 1.
    "dense_hybrid": ("nemotron_h", dict(hybrid_override_pattern="M-M*-M*")),
    # MoE hybrid with group-limited routing, correction bias and a shared expert.
    "moe_hybrid": ("nemotron_h", dict(
        hybrid_override_pattern="ME*ME",
        n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
        moe_intermediate_size=24, moe_shared_expert_intermediate_size=40,
        routed_scaling_factor=2.5, norm_topk_prob=True)),
    # Latent MoE (fc1/fc2 latent projections around the experts), no normalisation.
    "latent_moe": ("nemotron_h", dict(
        hybrid_override_pattern="MEM*E",
        n_routed_experts=6, num_experts_per_tok=2, n_group=1, topk_group=1,
        moe_intermediate_size=20, moe_shared_expert_intermediate_size=28, moe_latent_size=16,
        routed_scaling_factor=1.5, norm_topk_prob=False)),
    # Attention and MLP only, plain multi-head attention.
    "attention_mlp": ("nemotron_h", dict(
        hybrid_override_pattern="*-*-", num_attention_heads=4, num_key_value_heads=4)),
    # Biases on every projection that has one, and tie_word_embeddings set.
    "biases_tied": ("nemotron_h", dict(
        hybrid_override_pattern="M*-E", use_bias=True, mlp_bias=True, use_conv_bias=True,
        tie_word_embeddings=True, n_routed_experts=4, num_experts_per_tok=2, n_group=2,
        topk_group=1, moe_intermediate_size=16, moe_shared_expert_intermediate_size=24,
        moe_latent_size=12)),
    # Pure Mamba-2 (model_type mamba2): tied head, fp32 residual, n_groups 1.
    "mamba2_tied": ("mamba2", dict(
        vocab_size=80, hidden_size=24, num_hidden_layers=3, num_heads=6, head_dim=8, expand=2,
        state_size=8, n_groups=1, conv_kernel=3, chunk_size=4, tie_word_embeddings=True,
        residual_in_fp32=True, use_bias=False, use_conv_bias=True, initializer_range=0.1,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    # Mamba-2 with biases and n_groups > 1, untied head.
    "mamba2_bias_groups": ("mamba2", dict(
        vocab_size=72, hidden_size=16, num_hidden_layers=2, num_heads=4, head_dim=8, expand=2,
        state_size=6, n_groups=2, conv_kernel=4, chunk_size=6, tie_word_embeddings=False,
        residual_in_fp32=True, use_bias=True, use_conv_bias=True, initializer_range=0.1,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}

BATCH, SEQ = 2, 13


def build(kind, overrides, seed):
    torch.manual_seed(seed)
    if kind == "nemotron_h":
        config = NemotronHConfig(**{**NEMOTRON_BASE, **overrides})
        model = NemotronHForCausalLM(config)
    else:
        config = Mamba2Config(**overrides)
        model = Mamba2ForCausalLM(config)
    model = model.float()
    config.time_step_min = 0.0  # SPEC §2: both clamps agree at 0
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("D", "A_log", "dt_bias") or leaf == "bias" or "norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=gen))
    for module in model.modules():
        if hasattr(module, "time_step_limit"):
            module.time_step_limit = (0.0, float("inf"))
        if hasattr(module, "time_step_min"):
            module.time_step_min = 0.0
    return model


def make_case(name, out_dir, seed):
    kind, overrides = CASES[name]
    model = build(kind, overrides, seed)
    case_dir = os.path.join(out_dir, name)
    shutil.rmtree(case_dir, ignore_errors=True)
    model.save_pretrained(case_dir, safe_serialization=True)
    write_reference(model, case_dir, seed)


def write_reference(model, case_dir, seed):
    model.config._attn_implementation = "eager"
    model.train()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed + 2)
    input_ids = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
    labels = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
    for b, s in ((0, 3), (1, 0), (1, 7)):  # ignored positions, where the shape has them
        if b < labels.shape[0] and s < labels.shape[1]:
            labels[b, s] = -100
    out = model(input_ids=input_ids, labels=labels)
    out.loss.backward()
    tensors = {
        "input_ids": input_ids.to(torch.int64),
        "labels": labels.to(torch.int64),
        "logits": out.logits.detach().float().contiguous(),
        "loss": out.loss.detach().float().reshape(()),
    }
    for pname, p in model.named_parameters():
        if p.grad is not None:
            tensors["grad/" + pname] = p.grad.detach().float().contiguous()
    save_file(tensors, os.path.join(case_dir, "reference.safetensors"))
    size = sum(os.path.getsize(os.path.join(case_dir, f)) for f in os.listdir(case_dir))
    print(f"{os.path.basename(case_dir)}: loss {out.loss.item():.6f}, {len(tensors) - 4} gradients, {size / 1024:.0f} KiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                      "data", "reference"))
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--from-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.from_dir:
        model = AutoModelForCausalLM.from_pretrained(args.from_dir, dtype=torch.float32)
        write_reference(model, args.from_dir, seed=7)
        return
    for i, name in enumerate(sorted(CASES)):
        if args.only and name not in args.only:
            continue
        make_case(name, args.out, seed=1000 + 17 * i)


if __name__ == "__main__":
    main()
