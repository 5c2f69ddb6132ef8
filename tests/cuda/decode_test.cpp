// GPU decoding steps against the CPU ops: conv1d_step and ssd_step over a few tokens from the
// same state, in F32 and BF16 storage (the SSM state is F32 on the GPU either way).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "cuda/harness.h"
#include "ops/mamba_step.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_gpu;

// Rounded to bf16 and back: the BF16 run then sees exactly the CPU's inputs, so the comparison
// measures the kernels' own rounding (as tests/cuda/causal_conv1d_test.cpp).
Tensor bf16_exact(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }

Tensor random_input(const Shape& shape, uint64_t seed, double scale = 1.0) {
  return bf16_exact(random_cpu(shape, seed, scale));
}

Tensor gpu_or_none(const Tensor& t, DType dtype) {
  return t.defined() ? to_gpu(t, dtype) : Tensor();
}

constexpr int kSteps = 3;

// ---- conv1d_step ------------------------------------------------------------------------

struct ConvCase {
  int64_t batch, channels, kernel;
  bool bias;
};

void expect_conv_matches_cpu(const ConvCase& c, DType dtype, uint64_t seed) {
  const std::string tag = std::string(dtype_name(dtype)) + " B" + std::to_string(c.batch) + " C" +
                          std::to_string(c.channels) + " K" + std::to_string(c.kernel) +
                          (c.bias ? " bias " : " ");
  const Tensor w = random_input({c.channels, c.kernel}, seed, 0.5);
  const Tensor bias = c.bias ? random_input({c.channels}, seed + 1, 0.5) : Tensor();
  Tensor state = random_input({c.batch, c.channels, c.kernel - 1}, seed + 2);
  const Tensor gw = to_gpu(w, dtype), gbias = gpu_or_none(bias, dtype);
  Tensor gstate = to_gpu(state, dtype);
  for (int step = 0; step < kSteps; ++step) {
    const Tensor x = random_input({c.batch, c.channels}, seed + 10 + step);
    Tensor y = Tensor::empty(x.shape(), DType::F32), gy = gpu_empty(x.shape(), dtype);
    cpu::conv1d_step(x, state, w, bias, y);
    cuda::conv1d_step(to_gpu(x, dtype), gstate, gw, gbias, gy);
    expect_close(tag + "y step " + std::to_string(step), gy, y, test::tolerance(dtype));
  }
  // The state only ever holds inputs, which are bf16-exact: a copy, not a computation.
  expect_close(tag + "conv_state", gstate, state, 0);
}

TEST(CudaConv1dStep, MatchesCpuForEveryKernelWidthChannelCountAndBias) {
  uint64_t seed = 100;
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t kernel : {1, 2, 3, 4})
      for (int64_t channels : {1, 7, 33, 3000})
        for (bool bias : {false, true})
          for (int64_t batch : {1, 3})
            expect_conv_matches_cpu({batch, channels, kernel, bias}, dtype, seed += 20);
}

// ---- ssd_step ---------------------------------------------------------------------------

struct SsdCase {
  int64_t batch, heads, groups, head_dim, state;
  bool with_D;
};

// One token's inputs in the model's ranges: dt = softplus(N(0, 1)), A = -exp(0.5·N(0, 1)).
struct SsdToken {
  Tensor x, dt, Bm, Cm;
};

SsdToken make_token(const SsdCase& c, uint64_t seed) {
  SsdToken t{random_input({c.batch, c.heads, c.head_dim}, seed),
             random_cpu({c.batch, c.heads}, seed + 1),
             random_input({c.batch, c.groups, c.state}, seed + 2),
             random_input({c.batch, c.groups, c.state}, seed + 3)};
  for (int64_t i = 0; i < t.dt.numel(); ++i) {
    float& v = t.dt.data<float>()[i];
    v = std::log1p(std::exp(v));
  }
  t.dt = bf16_exact(t.dt);
  return t;
}

void expect_ssd_matches_cpu(const SsdCase& c, DType dtype, uint64_t seed) {
  const std::string tag = std::string(dtype_name(dtype)) + " B" + std::to_string(c.batch) + " H" +
                          std::to_string(c.heads) + " G" + std::to_string(c.groups) + " P" +
                          std::to_string(c.head_dim) + " N" + std::to_string(c.state) +
                          (c.with_D ? " D " : " ");
  Tensor A = random_cpu({c.heads}, seed, 0.5);
  for (int64_t i = 0; i < A.numel(); ++i) A.data<float>()[i] = -std::exp(A.data<float>()[i]);
  A = bf16_exact(A);
  const Tensor D = c.with_D ? random_input({c.heads}, seed + 1) : Tensor();
  Tensor state = random_cpu({c.batch, c.heads, c.head_dim, c.state}, seed + 2);
  const Tensor gA = to_gpu(A, dtype), gD = gpu_or_none(D, dtype);
  Tensor gstate = to_gpu(state);  // F32 whatever the storage dtype
  for (int step = 0; step < kSteps; ++step) {
    const SsdToken t = make_token(c, seed + 10 * (step + 1));
    Tensor y = Tensor::empty(t.x.shape(), DType::F32), gy = gpu_empty(t.x.shape(), dtype);
    cpu::ssd_step(t.x, t.dt, A, t.Bm, t.Cm, D, state, y);
    cuda::ssd_step(to_gpu(t.x, dtype), to_gpu(t.dt, dtype), gA, to_gpu(t.Bm, dtype),
                   to_gpu(t.Cm, dtype), gD, gstate, gy);
    expect_close(tag + "y step " + std::to_string(step), gy, y, test::tolerance(dtype));
  }
  // The state is F32 and computed from the same inputs in both runs: fp32's tolerance for both.
  expect_close(tag + "state", gstate, state, test::tolerance(DType::F32));
}

TEST(CudaSsdStep, MatchesCpuForOddAndModelSizedShapes) {
  const SsdCase cases[] = {
      {1, 1, 1, 1, 1, false},    {2, 6, 2, 5, 3, true},      {3, 5, 5, 33, 47, true},
      {2, 8, 1, 64, 128, false}, {1, 128, 8, 64, 128, true},
  };
  uint64_t seed = 1000;
  for (DType dtype : {DType::F32, DType::BF16})
    for (const SsdCase& c : cases) expect_ssd_matches_cpu(c, dtype, seed += 100);
}

// ---- errors -----------------------------------------------------------------------------

TEST(CudaDecodeSteps, RejectBadShapesDtypesAndDevices) {
  const Tensor x = to_gpu(random_cpu({2, 8}, 1)), w = to_gpu(random_cpu({8, 4}, 2));
  Tensor conv_state = test::gpu_zeros({2, 8, 3}, DType::F32), y = gpu_empty({2, 8}, DType::F32);
  Tensor conv_state_cpu = Tensor::zeros({2, 8, 3}, DType::F32);
  Tensor conv_state_bad = test::gpu_zeros({2, 8, 4}, DType::F32);
  EXPECT_NO_THROW(cuda::conv1d_step(x, conv_state, w, Tensor(), y));
  EXPECT_THROW(cuda::conv1d_step(x, conv_state_cpu, w, Tensor(), y), Error);
  EXPECT_THROW(cuda::conv1d_step(x, conv_state_bad, w, Tensor(), y), Error);

  const Tensor xs = to_gpu(random_cpu({2, 4, 3}, 3)), dt = to_gpu(random_cpu({2, 4}, 4)),
               A = to_gpu(random_cpu({4}, 5)), Bm = to_gpu(random_cpu({2, 2, 5}, 6));
  Tensor state = test::gpu_zeros({2, 4, 3, 5}, DType::F32), ys = gpu_empty({2, 4, 3}, DType::F32);
  Tensor state_bf16 = test::gpu_zeros({2, 4, 3, 5}, DType::BF16);
  EXPECT_NO_THROW(cuda::ssd_step(xs, dt, A, Bm, Bm, Tensor(), state, ys));
  EXPECT_THROW(cuda::ssd_step(xs, dt, A, Bm, Bm, Tensor(), state_bf16, ys), Error);
  const Tensor Bm3 = to_gpu(random_cpu({2, 3, 5}, 7));  // G = 3 does not divide H = 4
  EXPECT_THROW(cuda::ssd_step(xs, dt, A, Bm3, Bm3, Tensor(), state, ys), Error);
}

}  // namespace
}  // namespace nh
