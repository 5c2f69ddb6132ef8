// GPU paged attention decoding and KV page writes against the CPU ops, in F32 and BF16 storage:
// odd head dims, groups 1 to 16, page sizes 1 to 64, lengths from 1 to 5000 positions (several
// splits, and CTAs that take several chunks), 64 entries, padding, and rows or lengths out of
// range (padding on the GPU).
#include "ops/paged_attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cuda/harness.h"
#include "support/paged_kv.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::i32;
using test::random_cpu;
using test::to_gpu;

// Rounded to bf16 and back: the BF16 run then sees exactly the CPU's inputs, so the comparison
// measures the kernels' own rounding (as tests/cuda/causal_conv1d_test.cpp).
Tensor bf16_exact(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }

struct DecodeCase {
  int64_t q_heads, kv_heads, head_dim, page_size, table_rows;
  std::vector<int32_t> rows, lengths;
  int64_t capacity;
};

std::string describe(const DecodeCase& c, DType dtype) {
  return std::string(dtype_name(dtype)) + " H" + std::to_string(c.q_heads) + "/" +
         std::to_string(c.kv_heads) + " dh" + std::to_string(c.head_dim) + " page" +
         std::to_string(c.page_size) + " B" + std::to_string(c.rows.size()) + " cap" +
         std::to_string(c.capacity) + " ";
}

// The GPU's out for the entries (gpu_rows, gpu_lengths) against the CPU's for (rows, lengths).
void expect_decode_matches_cpu(const DecodeCase& c, DType dtype, uint64_t seed,
                               const std::vector<int32_t>& gpu_rows = {},
                               const std::vector<int32_t>& gpu_lengths = {}) {
  const test::PagedKv kv =
      test::make_paged_kv(test::fill_of(c.table_rows, c.rows, c.lengths), c.capacity, c.kv_heads,
                          c.head_dim, c.page_size, seed);
  const int64_t batch = int64_t(c.rows.size());
  const Tensor q = bf16_exact(random_cpu({batch, c.q_heads, c.head_dim}, seed + 1));
  const Tensor k = bf16_exact(kv.k_pages.to(DType::F32)), v = bf16_exact(kv.v_pages.to(DType::F32));
  const double scale = 1.0 / std::sqrt(double(c.head_dim));
  Tensor out = Tensor::empty(q.shape(), DType::F32), gout = gpu_empty(q.shape(), dtype);
  cpu::paged_attention_decode(q, k, v, kv.block_table, i32(c.rows), i32(c.lengths), scale, out);
  cuda::paged_attention_decode(
      to_gpu(q, dtype), to_gpu(k, dtype), to_gpu(v, dtype), to_gpu(kv.block_table),
      to_gpu(i32(gpu_rows.empty() ? c.rows : gpu_rows)),
      to_gpu(i32(gpu_lengths.empty() ? c.lengths : gpu_lengths)), scale, gout);
  expect_close(describe(c, dtype) + "out", gout, out, test::tolerance(dtype));
}

TEST(CudaPagedAttentionDecode, MatchesCpuForOddShapesGroupsPageSizesAndPadding) {
  const DecodeCase cases[] = {
      {1, 1, 1, 1, 1, {0}, {1}, 1},
      {4, 2, 5, 3, 4, {2, 0, 3, 1}, {7, 1, 9, 4}, 14},
      {6, 3, 3, 1, 3, {1, -1, 2, 0}, {5, 4, 1, 6}, 8},
      {4, 1, 7, 4, 3, {0, 2, 1}, {8, 13, 0}, 13},
      {2, 2, 9, 16, 2, {1, 0, 1}, {16, 37, 20}, 53},
      {8, 2, 16, 4, 5, {4, 3, 2, 1, 0, -1}, {11, 2, 12, 5, 30, 0}, 37},
      {6, 2, 33, 7, 2, {1, 0}, {50, 301}, 301},    // group 3, a dim no vector divides
      {16, 1, 256, 5, 2, {0, 1}, {700, 3}, 1000},  // group 16 in two slices, d 256
      {8, 1, 64, 2, 2, {1, 0}, {257, 512}, 600},   // group 8
      {4, 4, 80, 16, 3, {2, 1, 0}, {96, 1, 250}, 256},
      {32, 8, 128, 16, 3, {2, -1, 0, 1}, {1000, 7, 17, 256}, 1024},  // the 8B's attention
  };
  uint64_t seed = 100;
  for (DType dtype : {DType::F32, DType::BF16})
    for (const DecodeCase& c : cases) expect_decode_matches_cpu(c, dtype, seed += 10);
}

// 5000 positions in pages of 64 with room for 8192: 32 splits, of which a row of 4097 positions
// fills 17; and 64 entries over 4 rows with up to 3000 positions: 2 splits, so each CTA takes
// several chunks.
TEST(CudaPagedAttentionDecode, MatchesCpuForLongContextsAndManyEntries) {
  uint64_t seed = 1000;
  DecodeCase many{32, 8, 128, 16, 4, {}, {}, 3008};
  for (int32_t b = 0; b < 64; ++b) {
    many.rows.push_back(b % 9 == 8 ? -1 : (b * 3) % 4);
    many.lengths.push_back(1 + (b * 397) % 3000);
  }
  for (DType dtype : {DType::F32, DType::BF16}) {
    expect_decode_matches_cpu({32, 8, 128, 64, 2, {1, 0}, {5000, 4097}, 8192}, dtype, seed += 10);
    expect_decode_matches_cpu(many, dtype, seed += 10);
  }
}

// The CUDA op cannot check indices; a row or a length out of range makes the entry padding.
TEST(CudaPagedAttentionDecode, RowsAndLengthsOutOfRangeAreSkippedAsPadding) {
  const DecodeCase c{4, 2, 8, 4, 3, {-1, 1, -1, -1}, {5, 9, 7, 3}, 12};
  for (DType dtype : {DType::F32, DType::BF16})
    expect_decode_matches_cpu(c, dtype, 2000, {3, 1, 0, -5}, {5, 9, 13, 3});
}

// ---- kv_cache_write ---------------------------------------------------------------------

void expect_write_matches_cpu(int64_t kv_heads, int64_t head_dim, DType dtype, uint64_t seed) {
  const std::string tag = std::string(dtype_name(dtype)) + " Hkv" + std::to_string(kv_heads) +
                          " dh" + std::to_string(head_dim) + " ";
  const std::vector<int64_t> fill = {9, 0, 20};
  const test::PagedKv kv = test::make_paged_kv(fill, 24, kv_heads, head_dim, 4, seed);
  Tensor pages = bf16_exact(kv.k_pages.to(DType::F32));
  Tensor gpages = to_gpu(pages, dtype);
  const Tensor table = kv.block_table, gtable = to_gpu(table);
  auto write = [&](const Tensor& fresh, const std::vector<int32_t>& rows,
                   const std::vector<int32_t>& pos) {
    cpu::kv_cache_write(fresh, table, i32(rows), i32(pos), pages);
    cuda::kv_cache_write(to_gpu(fresh, dtype), gtable, to_gpu(i32(rows)), to_gpu(i32(pos)), gpages);
  };
  // A prefill of row 2, then decoding steps of rows 0 and 2 (row 0 padding after its fill).
  std::vector<int32_t> rows(16, 2), pos(16);
  for (int32_t p = 0; p < 16; ++p) pos[p] = p;
  write(bf16_exact(random_cpu({16, kv_heads, head_dim}, seed + 1)), rows, pos);
  for (int32_t t = 0; t < 4; ++t) {
    const int32_t r0 = 7 + t < 9 ? 0 : -1;
    write(bf16_exact(random_cpu({2, kv_heads, head_dim}, seed + 2 + t)), {2, r0},
          {16 + t, r0 < 0 ? 1 << 30 : 7 + t});
  }
  // Copies only: the pages must be equal bit for bit.
  expect_close(tag + "pages", gpages, pages, 0);
}

TEST(CudaKvCacheWrite, MatchesCpuForVectorAndElementCopies) {
  uint64_t seed = 3000;
  for (DType dtype : {DType::F32, DType::BF16})
    for (auto [heads, dim] : {std::pair{8, 128}, std::pair{2, 3}, std::pair{1, 4}})
      expect_write_matches_cpu(heads, dim, dtype, seed += 10);
}

// ---- errors -----------------------------------------------------------------------------

TEST(CudaPagedAttention, RejectsBadShapesDtypesAndDevices) {
  const test::PagedKv kv = test::make_paged_kv({3, 5}, 8, 2, 8, 4, 4000);
  const Tensor q = to_gpu(random_cpu({2, 4, 8}, 4001)), k = to_gpu(kv.k_pages.to(DType::F32)),
               v = to_gpu(kv.v_pages.to(DType::F32)), table = to_gpu(kv.block_table);
  const Tensor rows = to_gpu(i32({1, 0})), lengths = to_gpu(i32({5, 3}));
  Tensor out = gpu_empty({2, 4, 8}, DType::F32);
  EXPECT_NO_THROW(cuda::paged_attention_decode(q, k, v, table, rows, lengths, 0.5, out));
  EXPECT_THROW(cuda::paged_attention_decode(q, k, v, table, i32({1, 0}), lengths, 0.5, out), Error);
  EXPECT_THROW(cuda::paged_attention_decode(q, k, v, kv.block_table, rows, lengths, 0.5, out),
               Error);
  EXPECT_THROW(
      cuda::paged_attention_decode(q, k.to(Device::CPU), v, table, rows, lengths, 0.5, out), Error);
  const Tensor k3 = to_gpu(random_cpu({kv.k_pages.size(0), 4, 3, 8}, 4002));  // 3 does not divide 4
  EXPECT_THROW(cuda::paged_attention_decode(q, k3, k3, table, rows, lengths, 0.5, out), Error);
  const Tensor q_big = to_gpu(random_cpu({2, 4, 264}, 4003));
  const Tensor k_big = to_gpu(random_cpu({kv.k_pages.size(0), 4, 2, 264}, 4004));
  Tensor out_big = gpu_empty({2, 4, 264}, DType::F32);
  EXPECT_THROW(
      cuda::paged_attention_decode(q_big, k_big, k_big, table, rows, lengths, 0.5, out_big), Error);

  const Tensor fresh = to_gpu(random_cpu({2, 2, 8}, 4005));
  Tensor pages = to_gpu(kv.k_pages.to(DType::F32));
  EXPECT_NO_THROW(cuda::kv_cache_write(fresh, table, rows, lengths, pages));
  EXPECT_THROW(cuda::kv_cache_write(fresh, table, rows, i32({5, 3}), pages), Error);
  Tensor pages_bf16 = to_gpu(kv.k_pages.to(DType::F32), DType::BF16);
  EXPECT_THROW(cuda::kv_cache_write(fresh, table, rows, lengths, pages_bf16), Error);
}

}  // namespace
}  // namespace nh
