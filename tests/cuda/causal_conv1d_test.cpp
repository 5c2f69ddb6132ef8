#include "ops/causal_conv1d.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "cuda/harness.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;

// Inputs are bf16-representable, so the BF16 run sees exactly the CPU's inputs and the
// comparison measures the kernels' own rounding of the outputs to bf16, not input quantisation,
// which alone can exceed 2e-2 on a single-channel sum that nearly cancels.
Tensor random_input(const Shape& shape, uint64_t seed, double scale = 1.0, double mean = 0.0) {
  return random_cpu(shape, seed, scale, mean).to(DType::BF16).to(DType::F32);
}

// I32 [B, S] document indices: a new document starts at a token with probability 1/4, and the
// index keeps counting across rows (only equality matters), so rows hold several documents.
Tensor random_seq_idx(int64_t batch, int64_t seq_len, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> idx(size_t(batch * seq_len));
  int32_t doc = 0;
  for (int64_t i = 0; i < batch * seq_len; ++i) {
    if (i > 0 && rng.uniform() < 0.25) ++doc;
    idx[size_t(i)] = doc;
  }
  return Tensor::from(idx, {batch, seq_len});
}

struct Case {
  int64_t batch, seq_len, channels, kernel;
  bool bias, seq_idx, dw, dbias;
};

std::string describe(const Case& c, DType dtype) {
  return std::string(dtype_name(dtype)) + " B" + std::to_string(c.batch) + " S" +
         std::to_string(c.seq_len) + " C" + std::to_string(c.channels) + " K" +
         std::to_string(c.kernel) + (c.bias ? " bias" : "") + (c.seq_idx ? " seq_idx" : "") +
         (c.dw ? "" : " no-dw") + (c.dbias ? "" : " no-dbias") + " ";
}

// Runs forward and backward on the CPU in F32 and on the GPU in `dtype` from the same inputs,
// and compares y, dx and the accumulated dw and dbias (those the case asks for).
void expect_matches_cpu(const Case& c, DType dtype, uint64_t seed) {
  const Shape shape = {c.batch, c.seq_len, c.channels};
  const Tensor x = random_input(shape, seed),
               w = random_input({c.channels, c.kernel}, seed + 1, 0.5),
               dy = random_input(shape, seed + 2);
  const Tensor bias = c.bias ? random_input({c.channels}, seed + 3, 0.5) : Tensor();
  const Tensor seq = c.seq_idx ? random_seq_idx(c.batch, c.seq_len, seed + 4) : Tensor();
  const Tensor dw0 = random_input({c.channels, c.kernel}, seed + 5, 0.5),
               db0 = random_input({c.channels}, seed + 6, 0.5);

  Tensor y = Tensor::empty(shape, DType::F32);
  cpu::causal_conv1d_forward(x, w, bias, seq, y);
  Tensor dx = Tensor::empty(shape, DType::F32);
  Tensor dw = c.dw ? dw0.clone() : Tensor(), db = c.dbias ? db0.clone() : Tensor();
  cpu::causal_conv1d_backward(x, w, bias, seq, dy, dx, dw, db);

  const Tensor gx = to_gpu(x, dtype), gw = to_gpu(w, dtype), gdy = to_gpu(dy, dtype);
  const Tensor gbias = c.bias ? to_gpu(bias, dtype) : Tensor();
  const Tensor gseq = c.seq_idx ? to_gpu(seq) : Tensor();
  Tensor gy = gpu_empty(shape, dtype);
  cuda::causal_conv1d_forward(gx, gw, gbias, gseq, gy);
  Tensor gdx = gpu_empty(shape, dtype);
  Tensor gdw = c.dw ? to_gpu(dw0, dtype) : Tensor(), gdb = c.dbias ? to_gpu(db0, dtype) : Tensor();
  cuda::causal_conv1d_backward(gx, gw, gbias, gseq, gdy, gdx, gdw, gdb);

  const double tol = test::tolerance(dtype);
  const std::string tag = describe(c, dtype);
  expect_close(tag + "y", gy, y, tol);
  expect_close(tag + "dx", gdx, dx, tol);
  if (c.dw) expect_close(tag + "dw", gdw, dw, tol);
  if (c.dbias) expect_close(tag + "dbias", gdb, db, tol);
}

TEST(CudaCausalConv1d, MatchesCpuForEveryKernelWidthChannelCountLengthBiasAndDocuments) {
  uint64_t seed = 300;
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t kernel : {1, 2, 3, 4, 8})
      for (int64_t channels : {1, 33, 3000})
        for (int64_t seq_len : {1, 5, 257})
          for (bool bias : {false, true})
            for (bool seq_idx : {false, true})
              expect_matches_cpu({2, seq_len, channels, kernel, bias, seq_idx, true, true}, dtype,
                                 seed += 10);
}

// 3 rows of 4000 tokens: runs of 64 tokens whose last is partial in every row, summed over
// rows for dw and dbias.
TEST(CudaCausalConv1d, MatchesCpuOverManyRunsOfTokensInSeveralRows) {
  for (DType dtype : {DType::F32, DType::BF16}) {
    expect_matches_cpu({3, 4000, 40, 4, true, true, true, true}, dtype, 7);
    expect_matches_cpu({3, 4000, 40, 4, true, false, true, true}, dtype, 8);
  }
}

// The CPU skips undefined parameter gradients; so must the GPU, still computing the others.
TEST(CudaCausalConv1d, SkipsUndefinedParameterGradients) {
  for (DType dtype : {DType::F32, DType::BF16}) {
    expect_matches_cpu({2, 257, 33, 4, true, true, false, false}, dtype, 11);
    expect_matches_cpu({2, 257, 33, 4, true, true, true, false}, dtype, 12);
    expect_matches_cpu({2, 257, 33, 4, false, true, false, true}, dtype, 13);
  }
}

TEST(CudaCausalConv1d, ParameterGradientsAreBitwiseReproducible) {
  const Shape shape = {2, 2000, 3000};
  const Tensor x = to_gpu(random_cpu(shape, 31)), w = to_gpu(random_cpu({3000, 4}, 32, 0.5)),
               bias = to_gpu(random_cpu({3000}, 33, 0.5)), dy = to_gpu(random_cpu(shape, 34)),
               seq = to_gpu(random_seq_idx(2, 2000, 35));
  Tensor dx = gpu_empty(shape, DType::F32);
  Tensor dw1 = test::gpu_zeros({3000, 4}, DType::F32), dw2 = test::gpu_zeros({3000, 4}, DType::F32);
  Tensor db1 = test::gpu_zeros({3000}, DType::F32), db2 = test::gpu_zeros({3000}, DType::F32);
  cuda::causal_conv1d_backward(x, w, bias, seq, dy, dx, dw1, db1);
  cuda::causal_conv1d_backward(x, w, bias, seq, dy, dx, dw2, db2);
  const Tensor a = to_cpu(dw1), b = to_cpu(dw2), c = to_cpu(db1), d = to_cpu(db2);
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
  EXPECT_EQ(std::memcmp(c.raw(), d.raw(), c.nbytes()), 0);
}

TEST(CudaCausalConv1d, RejectsBadShapesDtypesAndCpuTensors) {
  const Tensor x = to_gpu(random_cpu({2, 5, 8}, 41)), w = to_gpu(random_cpu({8, 4}, 42));
  Tensor y = gpu_empty({2, 5, 8}, DType::F32);
  const Tensor w_bad = to_gpu(random_cpu({7, 4}, 43)), bias_bad = to_gpu(random_cpu({7}, 44));
  const Tensor seq_f32 = to_gpu(random_cpu({2, 5}, 45)), x_cpu = random_cpu({2, 5, 8}, 46);
  EXPECT_THROW(cuda::causal_conv1d_forward(x, w_bad, Tensor(), Tensor(), y), Error);
  EXPECT_THROW(cuda::causal_conv1d_forward(x, w, bias_bad, Tensor(), y), Error);
  EXPECT_THROW(cuda::causal_conv1d_forward(x, w, Tensor(), seq_f32, y), Error);
  EXPECT_THROW(cuda::causal_conv1d_forward(x_cpu, w, Tensor(), Tensor(), y), Error);
  const Tensor w_wide = to_gpu(random_cpu({8, 9}, 47));  // more taps than the kernels hold
  EXPECT_THROW(cuda::causal_conv1d_forward(x, w_wide, Tensor(), Tensor(), y), Error);
}

}  // namespace
}  // namespace nh
