#!/usr/bin/env python3
"""Reads a Megatron indexed dataset (PREFIX.bin + PREFIX.idx) with numpy alone and prints it as
JSON: {"dtype": ..., "sequences": [[ids...], ...], "document_indices": [...]}.

It follows the reader of Megatron-LM's megatron/core/datasets/indexed_dataset.py
(_IndexReader and IndexedDataset.__getitem__): header b"MMIDIDX\\x00\\x00", "<Q" version,
"<B" dtype code, "<Q" sequence count, "<Q" document-index count, then int32 lengths, int64 byte
pointers and int64 document indices; sequence i is `length[i]` items of the dtype at byte
`pointer[i]` of the .bin. It is independent of the engine's C++ reader, so the tests can check
the engine's files the way Megatron would read them.

Usage: python3 tools/read_megatron_dataset.py PREFIX
"""
import json
import os
import struct
import sys

import numpy as np

DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
          6: np.float64, 7: np.float32, 8: np.uint16}


def read_dataset(prefix):
    with open(prefix + ".idx", "rb") as f:
        idx = f.read()
    if idx[:9] != b"MMIDIDX\x00\x00":
        raise ValueError(f"{prefix}.idx: bad magic {idx[:9]!r}")
    (version,) = struct.unpack_from("<Q", idx, 9)
    if version != 1:
        raise ValueError(f"{prefix}.idx: version {version}")
    dtype = DTYPES[idx[17]]
    count, doc_count = struct.unpack_from("<QQ", idx, 18)
    offset = 34
    lengths = np.frombuffer(idx, dtype=np.int32, count=count, offset=offset)
    offset += lengths.nbytes
    pointers = np.frombuffer(idx, dtype=np.int64, count=count, offset=offset)
    offset += pointers.nbytes
    document_indices = np.frombuffer(idx, dtype=np.int64, count=doc_count, offset=offset)
    offset += document_indices.nbytes
    if offset != len(idx):
        raise ValueError(f"{prefix}.idx: {len(idx) - offset} bytes after the document indices")
    if document_indices[-1] != count:
        raise ValueError(f"{prefix}.idx: last document index {document_indices[-1]} != {count}")
    # numpy cannot map an empty file, and a dataset of empty sequences has an empty .bin.
    has_data = os.path.getsize(prefix + ".bin") > 0
    data = np.memmap(prefix + ".bin", mode="r", dtype=np.uint8) if has_data else b""
    sequences = [np.frombuffer(data, dtype=dtype, count=int(n), offset=int(p)).tolist()
                 for n, p in zip(lengths, pointers)]
    return {"dtype": np.dtype(dtype).name, "sequences": sequences,
            "document_indices": document_indices.tolist()}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    json.dump(read_dataset(sys.argv[1]), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
