#!/usr/bin/env python3
"""Records transformers' greedy continuations of the reference cases.

For each case directory in tests/data/reference/ (or the ones named), loads the model with
transformers, takes the first PROMPT tokens of row 0 of reference.safetensors' input_ids and
writes <case>/greedy.safetensors with `prompt_ids` and `greedy_ids` (NEW tokens from
model.generate with do_sample=False, no end-of-sequence stop), plus `greedy_logits`, the
logits transformers chose each token from. tests/infer/greedy_test.cpp checks
`nemotronh`'s decoding against them.

Usage: python3 tools/make_greedy_reference.py [--dir tests/data/reference] [--only CASE ...]
Needs: torch, transformers (>= 5), safetensors.
"""
import argparse
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

PROMPT = 5
NEW = 8


def make(case_dir):
    ref = load_file(os.path.join(case_dir, "reference.safetensors"))
    prompt = ref["input_ids"][:1, :PROMPT].long()
    # The cases keep time_step_min = 0 (SPEC §2), which transformers' weight init cannot take:
    # load with a positive one (the weights come from the file) and put 0 back after.
    config = AutoConfig.from_pretrained(case_dir)
    zero_min = getattr(config, "time_step_min", None) == 0
    if zero_min:
        config.time_step_min = 1e-3
    model = AutoModelForCausalLM.from_pretrained(case_dir, config=config, dtype=torch.float32,
                                                 experts_implementation="eager")
    if zero_min:
        model.config.time_step_min = 0.0
        for module in model.modules():
            if hasattr(module, "time_step_min"):
                module.time_step_min = 0.0
    model.eval()
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                             eos_token_id=None, pad_token_id=0, output_logits=True,
                             return_dict_in_generate=True)
    new = out.sequences[0, PROMPT:]
    logits = torch.stack([l[0] for l in out.logits]).float()
    save_file({"prompt_ids": prompt[0].contiguous(), "greedy_ids": new.contiguous(),
               "greedy_logits": logits.contiguous()},
              os.path.join(case_dir, "greedy.safetensors"))
    print(os.path.basename(case_dir), prompt[0].tolist(), "->", new.tolist())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="tests/data/reference")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    for name in sorted(os.listdir(args.dir)):
        path = os.path.join(args.dir, name)
        if os.path.isdir(path) and (not args.only or name in args.only):
            make(path)


if __name__ == "__main__":
    main()
