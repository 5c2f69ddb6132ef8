// libFuzzer target: the Megatron .idx parser on arbitrary bytes (a whole .idx file) with a
// synthetic .bin. The .bin's size is the one the input's own lengths imply (when they can be
// read), so inputs get past the size check into the pointer and document checks. Every input
// must either parse or raise nh::Error; a crash, a sanitizer report or any other exception is a
// finding, and so is a parsed index that points outside the .bin. Seeds:
// fuzz/corpus/megatron_index.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "io/indexed_dataset_format.h"

namespace {

// The .bin size the lengths in `data` add up to, or 0 when the header cannot say.
uint64_t implied_bin_size(const uint8_t* data, size_t size) {
  if (size < nh::kMegatronIndexHeaderBytes || data[17] < 1 || data[17] > 8) return 0;
  uint64_t n;
  std::memcpy(&n, data + 18, 8);
  if (n > (size - nh::kMegatronIndexHeaderBytes) / 4) return 0;
  const uint64_t item = nh::token_dtype_size(nh::TokenDType(data[17]));
  uint64_t total = 0;
  for (uint64_t i = 0; i < n; ++i) {
    int32_t len;
    std::memcpy(&len, data + nh::kMegatronIndexHeaderBytes + 4 * i, 4);
    if (len > 0) total += uint64_t(len) * item;
  }
  return total;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint64_t bin_size = implied_bin_size(data, size);
  try {
    const nh::MegatronIndex ix =
        nh::parse_megatron_index(data, size, bin_size, "fuzz.idx", "fuzz.bin");
    const uint64_t item = nh::token_dtype_size(ix.dtype);
    for (int64_t i = 0; i < ix.num_sequences; ++i) {
      const int64_t ptr = ix.pointer(i), len = ix.length(i);
      if (ptr < 0 || len < 0 || uint64_t(ptr) + uint64_t(len) * item > bin_size) __builtin_trap();
    }
    for (int64_t d = 1; d < ix.num_document_indices; ++d)
      if (ix.document_index(d) < ix.document_index(d - 1) ||
          ix.document_index(d) > ix.num_sequences)
        __builtin_trap();
  } catch (const nh::Error&) {
  }
  return 0;
}
