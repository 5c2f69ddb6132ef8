#!/usr/bin/env python3
"""Writes the Megatron indexed-dataset fixtures of tests/data/megatron/ with numpy alone.

The layout follows Megatron-LM's megatron/core/datasets/indexed_dataset.py (_IndexWriter.write
and IndexedDatasetBuilder.add_item/end_document/finalize; NeMo's older
nemo/collections/nlp/data/language_modeling/megatron/indexed_dataset.py MMapIndexedDataset.Index
writes the same bytes):

  PREFIX.bin  the tokens of every sequence back to back, in the dataset's numpy dtype
  PREFIX.idx  b"MMIDIDX\\x00\\x00", struct "<Q" version 1, "<B" dtype code,
              "<Q" sequence count, "<Q" document-index count,
              int32 sequence lengths, int64 byte pointers into .bin, int64 document indices
              (which start with 0 and end with the sequence count)

This script is deliberately independent of the engine's C++ writer: the tests check that the
engine reads these files and that its writer reproduces them byte for byte.
For every PREFIX it also writes PREFIX.json: the dtype and the expected sequences and documents.

Usage: python3 tools/make_megatron_fixture.py [OUT_DIR]   (default tests/data/megatron)
"""
import json
import os
import struct
import sys

import numpy as np

# Megatron's DType enum: the code stored in the .idx for each numpy dtype.
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5,
               np.float64: 6, np.float32: 7, np.uint16: 8}

# Documents as lists of sequences (a document is several sequences when Megatron's
# preprocess_data.py splits sentences). Ids cover the ends of each dtype's range.
FIXTURES = {
    "tiny": (np.uint16, [
        [[5, 17, 300, 2]],
        [[65535, 0], [12], [7, 7, 7, 7, 7]],
        [[1000, 2]],
        [[9, 8, 7], [6, 5, 4, 3, 2]],
    ]),
    "tiny_int32": (np.int32, [
        [[131072, 0, 2147483647]],
        [[42], [65536, 65535]],
    ]),
}


def write_dataset(prefix, dtype, documents):
    lengths, document_indices = [], [0]
    with open(prefix + ".bin", "wb") as f:
        for document in documents:
            for sequence in document:
                f.write(np.array(sequence, dtype=dtype).tobytes(order="C"))
                lengths.append(len(sequence))
            document_indices.append(len(lengths))
    itemsize = np.dtype(dtype).itemsize
    pointers = np.concatenate([[0], np.cumsum(np.array(lengths, dtype=np.int64) * itemsize)[:-1]])
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(document_indices)))
        f.write(np.array(lengths, dtype=np.int32).tobytes(order="C"))
        f.write(np.array(pointers, dtype=np.int64).tobytes(order="C"))
        f.write(np.array(document_indices, dtype=np.int64).tobytes(order="C"))
    expected = {
        "dtype": np.dtype(dtype).name,
        "dtype_code": DTYPE_CODES[dtype],
        "sequences": [s for d in documents for s in d],
        "document_indices": document_indices,
    }
    with open(prefix + ".json", "w") as f:
        json.dump(expected, f)
        f.write("\n")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "megatron")
    os.makedirs(out_dir, exist_ok=True)
    for name, (dtype, documents) in FIXTURES.items():
        write_dataset(os.path.join(out_dir, name), dtype, documents)
        print("wrote", os.path.join(out_dir, name) + ".{bin,idx,json}")


if __name__ == "__main__":
    main()
