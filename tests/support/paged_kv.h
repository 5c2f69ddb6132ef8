// A paged KV cache for the paged attention tests (CPU and GPU): random keys and values of a few
// sequences, stored in pages assigned in a shuffled order, with junk wherever no position is.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace nh::test {

struct PagedKv {
  Tensor k_seq, v_seq;      // [R, S, Hkv, d] F64: the keys and values of each table row
  Tensor k_pages, v_pages;  // [NP, page_size, Hkv, d] F64
  Tensor block_table;       // I32 [R, max_pages]
};

// Table row r holds the first fill[r] positions of its sequence (S = the largest fill, at least
// 1); max_pages = ceil(capacity / page_size). The R · max_pages table entries take the pages in a
// shuffled order, and two spare pages are never used. Every slot that holds no position, every
// spare page, holds junk 50 times larger than the keys, which would swamp the softmax if it were
// read; table entries past a row's fill name pages out of range (-1 or NP + 3), which no op may
// read either.
inline PagedKv make_paged_kv(const std::vector<int64_t>& fill, int64_t capacity, int64_t kv_heads,
                             int64_t head_dim, int64_t page_size, uint64_t seed) {
  const int64_t rows = int64_t(fill.size());
  const int64_t seq = std::max<int64_t>(1, *std::max_element(fill.begin(), fill.end()));
  const int64_t max_pages = (capacity + page_size - 1) / page_size;
  const int64_t num_pages = rows * max_pages + 2, slot = kv_heads * head_dim;
  Rng rng(seed);
  auto random = [&](const Shape& shape, double scale) {
    Tensor t = Tensor::empty(shape, DType::F64);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = scale * rng.normal();
    return t;
  };
  PagedKv kv;
  kv.k_seq = random({rows, seq, kv_heads, head_dim}, 1.0);
  kv.v_seq = random({rows, seq, kv_heads, head_dim}, 1.0);
  kv.k_pages = random({num_pages, page_size, kv_heads, head_dim}, 50.0);
  kv.v_pages = random({num_pages, page_size, kv_heads, head_dim}, 50.0);
  std::vector<int32_t> order(num_pages);
  std::iota(order.begin(), order.end(), 0);
  for (int64_t i = num_pages - 1; i > 0; --i)
    std::swap(order[i], order[int64_t(rng.next() % uint64_t(i + 1))]);
  kv.block_table = Tensor::empty({rows, max_pages}, DType::I32);
  int32_t* table = kv.block_table.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < max_pages; ++j) {
      const bool used = j * page_size < fill[r];
      table[r * max_pages + j] =
          used ? order[r * max_pages + j] : (j % 2 ? -1 : int32_t(num_pages + 3));
    }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t p = 0; p < fill[r]; ++p) {
      const int64_t dst = (table[r * max_pages + p / page_size] * page_size + p % page_size) * slot;
      const int64_t src = (r * seq + p) * slot;
      std::copy_n(kv.k_seq.data<double>() + src, slot, kv.k_pages.data<double>() + dst);
      std::copy_n(kv.v_seq.data<double>() + src, slot, kv.v_pages.data<double>() + dst);
    }
  return kv;
}

// fill[r] for the entries of a batch: the longest length of an entry reading table row r.
inline std::vector<int64_t> fill_of(int64_t table_rows, const std::vector<int32_t>& rows,
                                    const std::vector<int32_t>& lengths) {
  std::vector<int64_t> fill(table_rows, 0);
  for (size_t b = 0; b < rows.size(); ++b)
    if (rows[b] >= 0) fill[rows[b]] = std::max<int64_t>(fill[rows[b]], lengths[b]);
  return fill;
}

inline Tensor i32(const std::vector<int32_t>& values) {
  return Tensor::from(values, {int64_t(values.size())});
}

}  // namespace nh::test
