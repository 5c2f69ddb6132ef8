#!/usr/bin/env python3
"""Builds LoRA reference cases with PEFT in tests/data/reference/<case>/lora/.

Each case puts a PEFT LoRA adapter on one of the base reference models that
tools/make_reference.py wrote (its config.json + model.safetensors), with B
initialised non-zero (init_lora_weights=False leaves nn.Linear's default init on
both factors; B is then scaled by 0.1 so that the adapter changes the model as a
trained one does rather than swamping its weights) so every gradient path is
live, and saves:
  adapter_config.json, adapter_model.safetensors  (PeftModel.save_pretrained)
  reference.safetensors  input_ids, labels, logits, loss and grad/<name> for every
                         adapter tensor, named as in adapter_model.safetensors
from one forward and backward pass in fp32 on the CPU. `nemotronh verify --model
BASE --adapter DIR --reference DIR/reference.safetensors` checks the engine
against them. The cases cover LoRA on linear modules, on the routed experts' 3-D
weights (target_parameters, both and one of them), a regular expression for
target_modules, rsLoRA, and a Mamba-2 model (backbone. names). PEFT refuses LoRA
on Mamba's out_proj, so no case has it.

Usage: python3 tools/make_lora_reference.py [--ref tests/data/reference] [--only CASE ...]
       python3 tools/make_lora_reference.py --base MODEL_DIR --from-adapter ADAPTER_DIR
The second form loads an adapter directory (one `nemotronh train` wrote, say) onto the base
with PeftModel.from_pretrained and writes ADAPTER_DIR/reference.safetensors, which shows that
peft reads what the engine writes and computes the same.
Needs: torch, transformers (>= 5), peft (>= 0.17), safetensors.
"""
import argparse
import json
import os
import shutil

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

from make_reference import BATCH, SEQ

CASES = {
    "dense_hybrid": dict(r=4, lora_alpha=8, target_modules=[
        "in_proj", "q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]),
    "moe_hybrid": dict(r=3, lora_alpha=6, use_rslora=True,
                       target_modules=["q_proj", "in_proj", "up_proj", "down_proj"],
                       target_parameters=["experts.up_proj", "experts.down_proj"]),
    "latent_moe": dict(r=2, lora_alpha=5, target_modules=r".*\.(fc1_latent_proj|fc2_latent_proj|k_proj)",
                       target_parameters=["experts.down_proj"]),
    "mamba2_bias_groups": dict(r=4, lora_alpha=4, target_modules=["in_proj"]),
}


def load_base(base_dir):
    config = AutoConfig.from_pretrained(base_dir)
    if getattr(config, "time_step_min", None) == 0:  # saved so; a log(0) for the dt init
        config.time_step_min = 1e-3
    model = AutoModelForCausalLM.from_pretrained(base_dir, config=config, dtype=torch.float32)
    for module in model.modules():  # as make_reference.py runs the base models
        if hasattr(module, "time_step_limit"):
            module.time_step_limit = (0.0, float("inf"))
        if hasattr(module, "time_step_min"):
            module.time_step_min = 0.0
    model.config._attn_implementation = "eager"
    return model


def make_case(name, ref_dir, seed):
    base_dir = os.path.join(ref_dir, name)
    out_dir = os.path.join(base_dir, "lora")
    shutil.rmtree(out_dir, ignore_errors=True)
    model = load_base(base_dir)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, lora_dropout=0.0,
                                                  **CASES[name]))
    with torch.no_grad():  # B at a tenth of nn.Linear's init: an update, not a new model
        for pname, p in peft_model.named_parameters():
            if "lora_B" in pname:
                p.mul_(0.1)
    peft_model.save_pretrained(out_dir)
    fix_key_order(out_dir)
    write_reference(peft_model, out_dir, seed)
    print(f"{name}/lora: written")


def fix_key_order(out_dir):
    # PEFT writes target_modules from a set, in an order that changes between runs.
    path = os.path.join(out_dir, "adapter_config.json")
    config = json.load(open(path))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    json.dump(config, open(path, "w"), indent=2, sort_keys=True)


def write_reference(peft_model, out_dir, seed):
    model = peft_model.base_model.model
    peft_model.train()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
    labels = torch.randint(0, vocab, (BATCH, SEQ), generator=gen)
    labels[0, 3] = labels[1, 7] = -100
    out = peft_model(input_ids=input_ids, labels=labels)
    out.loss.backward()
    tensors = {
        "input_ids": input_ids,
        "labels": labels,
        "logits": out.logits.detach().float().contiguous(),
        "loss": out.loss.detach().float().reshape(()),
    }
    for pname, p in peft_model.named_parameters():
        if p.grad is not None:
            tensors["grad/" + pname.replace(".default.", ".")] = p.grad.detach().float().contiguous()
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"))
    print(f"loss {out.loss.item():.6f}, {len(tensors) - 4} adapter gradients")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                      "data", "reference"))
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--base", default=None)
    parser.add_argument("--from-adapter", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.from_adapter:
        peft_model = PeftModel.from_pretrained(load_base(args.base), args.from_adapter,
                                               is_trainable=True)
        for module in peft_model.modules():  # dropout off: the reference is deterministic
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        write_reference(peft_model, args.from_adapter, seed=7)
        return
    for i, name in enumerate(sorted(CASES)):
        if not args.only or name in args.only:
            make_case(name, args.ref, seed=2000 + 31 * i)


if __name__ == "__main__":
    main()
