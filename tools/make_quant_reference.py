#!/usr/bin/env python3
"""Builds the quantisation reference files in tests/data/quant/ with bitsandbytes (CPU).

nf4_reference.safetensors: for each case, `<case>.input` (fp32, or bf16 for the large case),
what bitsandbytes' quantize_4bit(quant_type="nf4", blocksize=64, compress_statistics=True)
makes of it (`.data` the packed bytes, `.absmax_q` the 8-bit absmax codes, `.absmax2` the
second-level scales, `.offset` the subtracted mean) and `.dequantized`, its dequantize_4bit
output in the input's dtype; plus `nf4_code` and `dynamic_code`, the two code books it used.
int8_reference.safetensors: `<case>.input`, int8_vectorwise_quant's codes (`.data`, the int8
bits as U8), its row absmax (`.row_absmax`) and int8_vectorwise_dequant's `.dequantized`.
tests/ops/quantize_test.cpp checks the engine against both.

bitsandbytes runs here on its PyTorch CPU path: its native CPU library is kept from loading,
because that library finds the nearest 8-bit code through a 65536-entry lookup table, which
differs from the nearest code (what bitsandbytes' CUDA kernel and PyTorch path compute) for
about one value in a thousand.

Usage: python3 tools/make_quant_reference.py [--out tests/data/quant]
Needs: torch, bitsandbytes (>= 0.50, whose PyTorch path the engine follows), safetensors.
"""
import argparse
import ctypes
import os

_load_library = ctypes.cdll.LoadLibrary


def _without_bitsandbytes_native(path, *args, **kwargs):
    if "libbitsandbytes" in os.path.basename(str(path)):
        raise OSError("the PyTorch path of bitsandbytes is wanted")
    return _load_library(path, *args, **kwargs)


ctypes.cdll.LoadLibrary = _without_bitsandbytes_native
import bitsandbytes  # noqa: E402
import bitsandbytes.functional as bnbf  # noqa: E402

ctypes.cdll.LoadLibrary = _load_library

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

# name: (shape, dtype). 48x32: 24 whole blocks, the first all zeros. 100x33: a last block of
# 36. 3x20x16: experts, quantised flat. 7x9: one partial block and an odd count (a padding
# nibble). 96x171 in bf16: 257 blocks, so two second-level blocks, the last holding one absmax.
NF4_CASES = {
    "w48x32": ([48, 32], torch.float32),
    "w100x33": ([100, 33], torch.float32),
    "e3x20x16": ([3, 20, 16], torch.float32),
    "w7x9": ([7, 9], torch.float32),
    "w96x171": ([96, 171], torch.bfloat16),
}
INT8_CASES = {"w48x32": [48, 32], "w100x33": [100, 33], "e3x20x16": [3, 20, 16]}


def random_weight(shape, seed):
    """Normal values whose scale changes from row to row over four decades."""
    gen = torch.Generator().manual_seed(seed)
    rows = shape[0] if len(shape) == 2 else shape[0] * shape[1]
    scale = torch.logspace(-3, 1, rows).reshape(*shape[:-1], 1)
    return torch.randn(shape, generator=gen) * scale


def nf4_case(name, shape, dtype, seed, out):
    w = random_weight(shape, seed)
    if name == "w48x32":
        w.view(-1)[:64] = 0
    w = w.to(dtype)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    out[f"{name}.input"] = w
    out[f"{name}.data"] = packed.reshape(-1)
    out[f"{name}.absmax_q"] = state.absmax
    out[f"{name}.absmax2"] = state.state2.absmax
    out[f"{name}.offset"] = state.offset.reshape(1).float()
    out[f"{name}.dequantized"] = bnbf.dequantize_4bit(packed, state)
    out["nf4_code"] = state.code.float()
    out["dynamic_code"] = state.state2.code.float()


def int8_case(name, shape, seed, out):
    w = random_weight(shape, seed)
    # bitsandbytes takes the row absmax over dim 1: experts are given as [E * rows, cols].
    codes, row_absmax, _ = bnbf.int8_vectorwise_quant(w.reshape(-1, shape[-1]))
    out[f"{name}.input"] = w
    out[f"{name}.data"] = codes.reshape(-1).view(torch.uint8)
    out[f"{name}.row_absmax"] = row_absmax
    out[f"{name}.dequantized"] = bnbf.int8_vectorwise_dequant(codes, row_absmax).reshape(shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join("tests", "data", "quant"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    meta = {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__,
            "backend": "bitsandbytes PyTorch CPU path"}
    with torch.no_grad():
        nf4 = {}
        for seed, (name, (shape, dtype)) in enumerate(NF4_CASES.items()):
            nf4_case(name, shape, dtype, 100 + seed, nf4)
        int8 = {}
        for seed, (name, shape) in enumerate(INT8_CASES.items()):
            int8_case(name, shape, 200 + seed, int8)
    for file, tensors in (("nf4_reference", nf4), ("int8_reference", int8)):
        path = os.path.join(args.out, file + ".safetensors")
        save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=meta)
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
