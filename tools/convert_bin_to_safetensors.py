#!/usr/bin/env python3
"""Converts a PyTorch pickle checkpoint (pytorch_model.bin, as the state-spaces
mamba2-* releases ship) to model.safetensors in the same directory, so nemotronh
can read it (nemotronh never unpickles).

Usage: python3 tools/convert_bin_to_safetensors.py MODEL_DIR
Tied tensors (shared storage, e.g. lm_head and the embedding) are written once,
under the embedding's name; the LM head then ties through the config.
"""
import os
import sys

import torch
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    model_dir = sys.argv[1]
    src = os.path.join(model_dir, "pytorch_model.bin")
    state = torch.load(src, map_location="cpu", weights_only=True)
    seen = {}
    tensors = {}
    for name, t in state.items():
        key = (t.data_ptr(), t.shape, t.dtype)
        if key in seen:  # a tied copy: keep the first (the embedding)
            print(f"{name}: tied to {seen[key]}, not written")
            continue
        seen[key] = name
        tensors[name] = t.contiguous()
    dst = os.path.join(model_dir, "model.safetensors")
    save_file(tensors, dst + ".tmp", metadata={"format": "pt"})
    os.replace(dst + ".tmp", dst)
    print(f"wrote {dst}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
