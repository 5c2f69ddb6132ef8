// Megatron-LM / NeMo indexed datasets: PREFIX.bin (token ids of every document, back to back)
// and PREFIX.idx (header "MMIDIDX\0\0", version, dtype code, sequence count, document count,
// then sequence lengths, byte pointers and document indices), as megatron/core/datasets/
// indexed_dataset.py writes and reads them. Both files are memory-mapped.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"

namespace nh {

// Token dtypes the format allows, by Megatron's dtype code: 1 uint8, 2 int8, 3 int16,
// 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16.
enum class TokenDType : uint8_t {
  U8 = 1,
  I8 = 2,
  I16 = 3,
  I32 = 4,
  I64 = 5,
  F64 = 6,
  F32 = 7,
  U16 = 8
};

class IndexedDataset {
 public:
  // Opens PREFIX.idx and PREFIX.bin; every header field and pointer is bounds-checked
  // (Error naming the file and field).
  explicit IndexedDataset(const std::string& prefix);
  ~IndexedDataset();
  IndexedDataset(IndexedDataset&&) noexcept;

  int64_t num_sequences() const;
  int64_t num_documents() const;  // documents as Megatron counts them (document_indices - 1)
  TokenDType dtype() const;
  int64_t sequence_length(int64_t i) const;
  // Tokens of sequence i (optionally a window [offset, offset + length)), as int32.
  std::vector<int32_t> get(int64_t i, int64_t offset = 0, int64_t length = -1) const;
  // Sequence index range [begin, end) of document d.
  std::pair<int64_t, int64_t> document(int64_t d) const;
  int64_t total_tokens() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes PREFIX.bin / PREFIX.idx: add sequences, mark document ends, finalize. Files are
// written to temporary names and renamed by finalize(), so a failed run leaves nothing half
// written. Ids that do not fit `dtype` are an Error (the sequence is not added). finalize()
// ends a document still open, as Megatron's reader needs the last document to end at the last
// sequence.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(const std::string& prefix, TokenDType dtype);
  ~IndexedDatasetWriter();
  void add_sequence(const std::vector<int32_t>& tokens);
  void end_document();
  void finalize();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The smallest dtype Megatron would pick for a vocabulary: uint16 below 65500, else int32.
TokenDType token_dtype_for_vocab(int64_t vocab_size);

}  // namespace nh
