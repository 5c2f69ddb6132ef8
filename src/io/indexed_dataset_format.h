// The byte layout of a Megatron-LM .idx file (megatron/core/datasets/indexed_dataset.py,
// _IndexWriter/_IndexReader; NeMo's MMapIndexedDataset.Index is the same), parsed from a buffer
// so that the reader, the writer's tests and the fuzzer share one bounds-checked parser.
//
//   offset 0   9 bytes   "MMIDIDX\0\0"
//          9   uint64    version, always 1
//         17   uint8     dtype code of the tokens in .bin (TokenDType)
//         18   uint64    sequence count N
//         26   uint64    document index count D (the document indices start with 0, so
//                        D = documents + 1)
//         34   int32[N]  sequence lengths, in tokens
//              int64[N]  sequence pointers, byte offsets into .bin
//              int64[D]  document indices: document d is sequences [doc[d], doc[d+1])
//             (int8[N]   sequence modes, only in multimodal datasets: rejected here)
// All little-endian. The arrays start at byte 34, so they are not aligned to their element size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "io/indexed_dataset.h"

namespace nh {

inline constexpr char kMegatronIndexMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr size_t kMegatronIndexHeaderBytes = 34;

size_t token_dtype_size(TokenDType t);
// numpy's spelling ("uint16", "int32", ...), as Megatron's DType enum names them.
const char* token_dtype_name(TokenDType t);

// A parsed .idx: views into the caller's buffer, which must outlive it. The arrays are read
// element by element through the accessors because they are unaligned.
struct MegatronIndex {
  TokenDType dtype = TokenDType::I32;
  int64_t num_sequences = 0;
  int64_t num_document_indices = 0;
  int64_t total_tokens = 0;
  const uint8_t* lengths = nullptr;           // int32 [num_sequences]
  const uint8_t* pointers = nullptr;          // int64 [num_sequences]
  const uint8_t* document_indices = nullptr;  // int64 [num_document_indices]

  int32_t length(int64_t i) const;
  int64_t pointer(int64_t i) const;
  int64_t document_index(int64_t d) const;
};

// Parses `size` bytes of an .idx file and checks every field against the buffer and against
// `bin_size`, the size of the matching .bin: the magic, version 1, a known dtype code, counts
// that fit the file, the exact file size (sequence modes of a multimodal dataset are rejected),
// lengths >= 0, pointers that start at 0 and follow one another as the lengths say, document
// indices that start at 0, never decrease and end at the sequence count, and a .bin exactly as
// long as the tokens. Throws nh::Error naming idx_path (or bin_path for the size of the .bin)
// and the field.
MegatronIndex parse_megatron_index(const uint8_t* data, size_t size, uint64_t bin_size,
                                   const std::string& idx_path, const std::string& bin_path);

// The bytes of an .idx file for sequences of these lengths (pointers computed from them) and
// these document indices, exactly as Megatron's _IndexWriter writes them.
std::string serialize_megatron_index(TokenDType dtype, const std::vector<int32_t>& lengths,
                                     const std::vector<int64_t>& document_indices);

}  // namespace nh
