// Decoding attention over a paged KV cache (SPEC §4).
//
// The cache of one attention layer is k_pages, v_pages [NP, page_size, Hkv, d], pages shared by
// all sequences; block_table I32 [R, max_pages] maps position p of table row r to slot
// p % page_size of page block_table[r, p / page_size]. capacity = max_pages · page_size.
// Every index tensor (block_table, rows, lengths, positions) lives on the device of the data, so
// a GPU step reads no index on the host and can be captured in a CUDA graph.
//
// paged_attention_decode: q, out [B, Hq, d], Hq a multiple of Hkv (query head h reads kv head
//   h / (Hq/Hkv)); rows, lengths I32 [B]. Entry b reads table row rows[b] and attends to its
//   positions [0, lengths[b]) (the newest token's k and v already written at lengths[b] - 1):
//   out[b] = softmax(q[b]·kᵀ·scale)·v, the softmax in fp32 (fp64 for F64). rows[b] < 0 or
//   lengths[b] == 0 marks a padding entry: out[b] = 0 and nothing is read.
//   q, pages and out share one float dtype (F32 or F64 on the CPU, F32 or BF16 on the GPU, where
//   d <= 256 and B <= 65535).
// kv_cache_write: fresh [N, Hkv, d] is written token by token, token n at position positions[n]
//   of table row rows[n] (rows, positions I32 [N]); rows[n] < 0 skips the token. Decoding writes
//   N = B tokens at lengths - 1, a prefill the S tokens of one row at 0..S-1. The (row,
//   position) pairs of one call are distinct. fresh and pages share one dtype.
//
// Ranges: the CPU ops check rows < R, lengths <= capacity, positions < capacity and every page
// id they use against [0, NP). The CUDA ops cannot read the indices without a sync, so the
// caller guarantees them; the kernels still never touch memory out of bounds: an entry whose
// row or length is out of range is padding, a token whose row, position or page is out of
// range is skipped, and a position on a page id out of range is left out of the softmax.
#pragma once

#include "ops/dispatch.h"

namespace nh {

// The sizes of a call once its shapes, dtypes and devices are checked (by both backends; the
// index ranges are the CPU ops' own check). tokens: B for the decode, N for the write.
struct PagedKvShape {
  int64_t tokens, q_heads, kv_heads, head_dim, num_pages, page_size, table_rows, max_pages;
  int64_t capacity() const { return max_pages * page_size; }
};
PagedKvShape check_paged_attention_decode(const Tensor& q, const Tensor& k_pages,
                                          const Tensor& v_pages, const Tensor& block_table,
                                          const Tensor& rows, const Tensor& lengths,
                                          const Tensor& out);
PagedKvShape check_kv_cache_write(const Tensor& fresh, const Tensor& block_table,
                                  const Tensor& rows, const Tensor& positions, const Tensor& pages);

namespace cpu {
void paged_attention_decode(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages,
                            const Tensor& block_table, const Tensor& rows, const Tensor& lengths,
                            double scale, Tensor& out);
void kv_cache_write(const Tensor& fresh, const Tensor& block_table, const Tensor& rows,
                    const Tensor& positions, Tensor& pages);
}  // namespace cpu
namespace cuda {
void paged_attention_decode(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages,
                            const Tensor& block_table, const Tensor& rows, const Tensor& lengths,
                            double scale, Tensor& out);
void kv_cache_write(const Tensor& fresh, const Tensor& block_table, const Tensor& rows,
                    const Tensor& positions, Tensor& pages);
}  // namespace cuda

inline void paged_attention_decode(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages,
                                   const Tensor& block_table, const Tensor& rows,
                                   const Tensor& lengths, double scale, Tensor& out) {
  NH_DISPATCH(q.device(),
              paged_attention_decode(q, k_pages, v_pages, block_table, rows, lengths, scale, out));
}
inline void kv_cache_write(const Tensor& fresh, const Tensor& block_table, const Tensor& rows,
                           const Tensor& positions, Tensor& pages) {
  NH_DISPATCH(fresh.device(), kv_cache_write(fresh, block_table, rows, positions, pages));
}

}  // namespace nh
