#!/usr/bin/env python3
"""Times (Q)LoRA training steps of the peer stack: transformers' Nemotron-H with a PEFT LoRA
adapter, the base in bf16 or quantised to 4-bit NF4 by bitsandbytes, random weights at the
shape of a config.json. Prints one JSON line per run (median step time, tokens/s, peak memory),
for the side-by-side table with `nemotronh-bench-step --adapter lora|qlora`.

The model is built on the meta device and materialised directly on the GPU: each nn.Linear
(the LM head excepted) becomes a bitsandbytes Linear4bit whose random bf16 weight is
quantised as it is moved there, the way from_pretrained(load_in_4bit) leaves it; every other
parameter is random bf16 (norms ones). bitsandbytes quantises nn.Linear modules only, so the
routed experts' 3-D weights stay bf16, as they do under axolotl and PEFT.

Usage: python3 tools/peer_lora_bench.py CONFIG.json [--seq 4096] [--steps 3] [--warmup 1]
           [--r 16] [--targets q_proj,k_proj,...] [--experts] [--quant nf4|none]
           [--grad-ckpt] [--layers N]
Needs: torch with CUDA, transformers (>= 5), peft (>= 0.17), bitsandbytes (for nf4); the
mamba_ssm kernels and causal-conv1d on the path for the fast Mamba path.
"""
import argparse
import json
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM


def materialise(model, quant):
    import bitsandbytes as bnb
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear) or child_name == "lm_head":
                continue
            # The fused Mamba kernel multiplies by out_proj.weight itself: a 4-bit out_proj
            # breaks it, so it stays bf16 (as a model loaded in 4 bits must keep it too).
            keep_bf16 = quant == "nf4" and child_name == "out_proj"
            w = torch.randn(child.out_features, child.in_features, dtype=torch.bfloat16,
                            device="cuda") * 0.02
            if quant == "nf4" and not keep_bf16:
                new = bnb.nn.Linear4bit(child.in_features, child.out_features,
                                        bias=child.bias is not None, compute_dtype=torch.bfloat16,
                                        quant_type="nf4", compress_statistics=True,
                                        device="meta")
                new.weight = bnb.nn.Params4bit(w.cpu(), requires_grad=False, quant_type="nf4",
                                               compress_statistics=True).cuda()
            else:
                new = torch.nn.Linear(child.in_features, child.out_features,
                                      bias=child.bias is not None, device="cuda",
                                      dtype=torch.bfloat16)
                new.weight = torch.nn.Parameter(w, requires_grad=False)
            if child.bias is not None:
                new.bias = torch.nn.Parameter(torch.zeros(child.out_features, device="cuda",
                                                          dtype=torch.bfloat16))
            setattr(module, child_name, new)
            del w
    for name, module in model.named_modules():
        for pname, p in list(module.named_parameters(recurse=False)):
            if p.device.type != "meta":
                continue
            value = (torch.ones if "norm" in name or "norm" in pname else torch.randn)(
                p.shape, dtype=torch.bfloat16, device="cuda")
            if value.dim() > 1:
                value *= 0.02
            module.register_parameter(pname, torch.nn.Parameter(value, requires_grad=False))
        for bname, b in list(module.named_buffers(recurse=False)):
            if b.device.type == "meta":
                module.register_buffer(bname, torch.zeros(b.shape, dtype=torch.float32,
                                                          device="cuda"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,in_proj,up_proj,down_proj")
    ap.add_argument("--experts", action="store_true")
    ap.add_argument("--quant", default="nf4", choices=["nf4", "none"])
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--layers", type=int, default=0, help="keep the first N layers only")
    a = ap.parse_args()

    config = AutoConfig.from_pretrained(a.config)
    if a.layers:
        config.layers_block_type = config.layers_block_type[:a.layers]
        config.num_hidden_layers = a.layers
    config.use_cache = False
    t0 = time.time()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    materialise(model, a.quant)
    if a.grad_ckpt:
        try:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        except ValueError as e:  # a transformers version without it for this model
            print(json.dumps({"note": f"gradient checkpointing unavailable: {e}"}), flush=True)
            a.grad_ckpt = False
    lora = LoraConfig(r=a.r, lora_alpha=2 * a.r, lora_dropout=0.0,
                      target_modules=a.targets.split(","),
                      target_parameters=["experts.up_proj", "experts.down_proj"] if a.experts
                      else None)
    model = get_peft_model(model, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
    load_s = time.time() - t0

    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(a.warmup + a.steps):
        ids = torch.randint(0, config.vocab_size, (1, a.seq), device="cuda")
        torch.cuda.synchronize()
        s = time.time()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= a.warmup:
            times.append((time.time() - s) * 1e3)
    times.sort()
    median = times[len(times) // 2]
    print(json.dumps({
        "bench": "peer_lora_step", "config": a.config, "layers": len(config.layers_block_type),
        "quant": a.quant, "r": a.r, "targets": a.targets, "experts": a.experts,
        "grad_ckpt": a.grad_ckpt, "seq": a.seq, "trainable_params": sum(p.numel() for p in trainable),
        "load_s": load_s, "step_ms_median": median, "tokens_per_s": a.seq / (median / 1e3),
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "loss": float(loss), "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "peft": __import__("peft").__version__},
    }), flush=True)


if __name__ == "__main__":
    main()
