#include "ops/attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/harness.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;

struct AttnShape {
  int64_t batch, seqlen, q_heads, kv_heads, head_dim;
};

std::string describe(const AttnShape& s) {
  std::string text = "B";
  text += std::to_string(s.batch) + " S" + std::to_string(s.seqlen);
  text += " H" + std::to_string(s.q_heads) + "/" + std::to_string(s.kv_heads);
  return text + " dh" + std::to_string(s.head_dim);
}

// seq_idx [B, S] whose runs have the lengths `lengths` in turn (row b starts b entries into the
// list). Ids alternate 0, 1, 0, …: equal ids that are not adjacent are still different
// documents, which the kernels must get from the runs, not from the values.
Tensor document_ids(const AttnShape& s, const std::vector<int64_t>& lengths) {
  std::vector<int32_t> ids(s.batch * s.seqlen);
  for (int64_t b = 0; b < s.batch; ++b) {
    int64_t t = 0, run = 0;
    while (t < s.seqlen) {
      const int64_t len = lengths[(b + run) % lengths.size()];
      for (int64_t i = 0; i < len && t < s.seqlen; ++i, ++t)
        ids[b * s.seqlen + t] = int32_t(run % 2);
      ++run;
    }
  }
  return Tensor::from(ids, {s.batch, s.seqlen});
}

// Runs forward and backward on the CPU in F32 and on the GPU in `dtype` (lse in F32) from the
// same inputs, and compares out, lse, dq, dk and dv, for every version of the GPU kernels. The
// GPU backward uses the GPU's own out and lse, as training does.
void expect_matches_cpu(const AttnShape& s, DType dtype, const Tensor& seq_idx, uint64_t seed) {
  const Shape q_shape = {s.batch, s.seqlen, s.q_heads, s.head_dim};
  const Shape kv_shape = {s.batch, s.seqlen, s.kv_heads, s.head_dim};
  const Shape lse_shape = {s.batch, s.q_heads, s.seqlen};
  const double scale = 1.0 / std::sqrt(double(s.head_dim));
  const Tensor q = random_cpu(q_shape, seed), k = random_cpu(kv_shape, seed + 1),
               v = random_cpu(kv_shape, seed + 2), dout = random_cpu(q_shape, seed + 3);

  Tensor out = Tensor::empty(q_shape, DType::F32), lse = Tensor::empty(lse_shape, DType::F32);
  cpu::attention_forward(q, k, v, seq_idx, scale, out, lse);
  Tensor dq = Tensor::empty(q_shape, DType::F32), dk = Tensor::empty(kv_shape, DType::F32),
         dv = Tensor::empty(kv_shape, DType::F32);
  cpu::attention_backward(q, k, v, seq_idx, scale, out, lse, dout, dq, dk, dv);

  const Tensor gq = to_gpu(q, dtype), gk = to_gpu(k, dtype), gv = to_gpu(v, dtype),
               gdout = to_gpu(dout, dtype);
  const Tensor gseq = seq_idx.defined() ? to_gpu(seq_idx) : Tensor();
  test::for_each_kernel_version("attention", [&] {
    Tensor gout = gpu_empty(q_shape, dtype), glse = gpu_empty(lse_shape, DType::F32);
    cuda::attention_forward(gq, gk, gv, gseq, scale, gout, glse);
    Tensor gdq = gpu_empty(q_shape, dtype), gdk = gpu_empty(kv_shape, dtype),
           gdv = gpu_empty(kv_shape, dtype);
    cuda::attention_backward(gq, gk, gv, gseq, scale, gout, glse, gdout, gdq, gdk, gdv);

    const double tol = test::tolerance(dtype);
    const std::string tag =
        std::string(dtype_name(dtype)) + " " + describe(s) + (seq_idx.defined() ? " docs " : " ");
    expect_close(tag + "out", gout, out, tol);
    expect_close(tag + "lse", glse, lse, tol);
    expect_close(tag + "dq", gdq, dq, tol);
    expect_close(tag + "dk", gdk, dk, tol);
    expect_close(tag + "dv", gdv, dv, tol);
  });
}

// S = 1, 17 (one partial tile) and 300 (several tiles of 64 queries and 32 keys, the last
// partial); dh = 8 and 64 and 128 (the three head-dim buckets, 8 padded).
void expect_matches_cpu_for_all_sizes(int64_t q_heads, int64_t kv_heads, uint64_t seed) {
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t seqlen : {1, 17, 300})
      for (int64_t head_dim : {8, 64, 128})
        expect_matches_cpu({2, seqlen, q_heads, kv_heads, head_dim}, dtype, Tensor(), seed += 10);
}

TEST(CudaAttention, MatchesCpuForMultiHeadAttention) {
  expect_matches_cpu_for_all_sizes(4, 4, 100);
}

TEST(CudaAttention, MatchesCpuForGroupedQueryAttentionFourQueryHeadsOnTwoKvHeads) {
  expect_matches_cpu_for_all_sizes(4, 2, 200);
}

TEST(CudaAttention, MatchesCpuForGroupedQueryAttentionSixQueryHeadsOnOneKvHead) {
  expect_matches_cpu_for_all_sizes(6, 1, 300);
}

// Runs of 1 token, runs that end exactly on a 64-query or 32-key tile edge, and runs that cross
// several tiles; each batch row has its own layout.
TEST(CudaAttention, MatchesCpuWithDocumentsPackedInEachRow) {
  const std::vector<int64_t> lengths = {1, 63, 100, 1, 32, 7, 130};
  uint64_t seed = 400;
  for (DType dtype : {DType::F32, DType::BF16})
    for (const AttnShape& s :
         {AttnShape{2, 17, 4, 2, 64}, AttnShape{3, 300, 4, 2, 64}, AttnShape{2, 300, 6, 1, 128},
          AttnShape{2, 300, 4, 4, 8}, AttnShape{1, 1000, 2, 1, 64}})
      expect_matches_cpu(s, dtype, document_ids(s, lengths), seed += 10);
}

// Every token alone: each query sees only its own key, so out = v and lse = scale·q·k.
TEST(CudaAttention, MatchesCpuWhenEveryTokenIsItsOwnDocument) {
  const AttnShape s{2, 70, 4, 2, 64};
  expect_matches_cpu(s, DType::F32, document_ids(s, {1}), 500);
  expect_matches_cpu(s, DType::BF16, document_ids(s, {1}), 510);
}

// One document per row given as an explicit seq_idx of zeros: the same as no seq_idx.
TEST(CudaAttention, MatchesCpuWithOneDocumentGivenExplicitly) {
  const AttnShape s{2, 300, 4, 2, 64};
  expect_matches_cpu(s, DType::F32, document_ids(s, {300}), 600);
}

// bf16 runs on the tensor-core kernels (attention_flash.cu) for head dims that are multiples of
// 8: rows of several 64-token tiles, the 8B model's 128-dim heads with 4 query heads per KV head,
// head dims padded up to a bucket (40 → 64, 72 → 128), with and without documents.
TEST(CudaAttention, TensorCoreKernelsMatchCpuOnLongRowsAndPaddedHeadDims) {
  const std::vector<int64_t> lengths = {1, 63, 100, 1, 32, 7, 130, 700};
  uint64_t seed = 700;
  for (const AttnShape& s :
       {AttnShape{1, 1000, 8, 2, 128}, AttnShape{2, 333, 4, 1, 72}, AttnShape{1, 257, 3, 3, 40}}) {
    expect_matches_cpu(s, DType::BF16, Tensor(), seed += 10);
    expect_matches_cpu(s, DType::BF16, document_ids(s, lengths), seed += 10);
  }
}

// In fp32 (CUDA-core kernels) and bf16 (tensor-core kernels).
TEST(CudaAttention, BackwardIsBitwiseReproducible) {
  const AttnShape s{2, 300, 6, 2, 64};
  const Shape q_shape = {s.batch, s.seqlen, s.q_heads, s.head_dim};
  const Shape kv_shape = {s.batch, s.seqlen, s.kv_heads, s.head_dim};
  for (DType dtype : {DType::F32, DType::BF16}) {
    const Tensor q = to_gpu(random_cpu(q_shape, 71), dtype),
                 k = to_gpu(random_cpu(kv_shape, 72), dtype),
                 v = to_gpu(random_cpu(kv_shape, 73), dtype),
                 dout = to_gpu(random_cpu(q_shape, 74), dtype);
    const Tensor seq_idx = to_gpu(document_ids(s, {50, 130, 7}));
    Tensor out = gpu_empty(q_shape, dtype),
           lse = gpu_empty({s.batch, s.q_heads, s.seqlen}, DType::F32);
    cuda::attention_forward(q, k, v, seq_idx, 0.125, out, lse);
    std::vector<Tensor> grads[2];
    for (auto& g : grads) {
      g = {gpu_empty(q_shape, dtype), gpu_empty(kv_shape, dtype), gpu_empty(kv_shape, dtype)};
      cuda::attention_backward(q, k, v, seq_idx, 0.125, out, lse, dout, g[0], g[1], g[2]);
    }
    for (int i = 0; i < 3; ++i) {
      const Tensor a = to_cpu(grads[0][i]), b = to_cpu(grads[1][i]);
      EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0)
          << dtype_name(dtype) << " gradient " << i;
    }
  }
}

TEST(CudaAttention, RejectsBf16LseLargeHeadDimBadGroupsAndCpuTensors) {
  const Tensor q = to_gpu(random_cpu({1, 5, 4, 8}, 81)), k = to_gpu(random_cpu({1, 5, 2, 8}, 82));
  Tensor out = gpu_empty({1, 5, 4, 8}, DType::F32), lse = gpu_empty({1, 4, 5}, DType::F32);
  Tensor lse_bf16 = gpu_empty({1, 4, 5}, DType::BF16);
  EXPECT_THROW(cuda::attention_forward(q, k, k, Tensor(), 0.5, out, lse_bf16), Error);

  const Tensor q_big = to_gpu(random_cpu({1, 5, 2, 160}, 83)),
               k_big = to_gpu(random_cpu({1, 5, 2, 160}, 84));
  Tensor out_big = gpu_empty({1, 5, 2, 160}, DType::F32),
         lse_big = gpu_empty({1, 2, 5}, DType::F32);
  EXPECT_THROW(cuda::attention_forward(q_big, k_big, k_big, Tensor(), 0.5, out_big, lse_big),
               Error);

  const Tensor k3 = to_gpu(random_cpu({1, 5, 3, 8}, 85));
  EXPECT_THROW(cuda::attention_forward(q, k3, k3, Tensor(), 0.5, out, lse), Error);

  const Tensor k_cpu = random_cpu({1, 5, 2, 8}, 86);
  EXPECT_THROW(cuda::attention_forward(q, k_cpu, k, Tensor(), 0.5, out, lse), Error);

  Tensor out_bf16 = gpu_empty({1, 5, 4, 8}, DType::BF16);
  EXPECT_THROW(cuda::attention_forward(q, k, k, Tensor(), 0.5, out_bf16, lse), Error);
}

}  // namespace
}  // namespace nh
