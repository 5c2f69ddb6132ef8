// The GPU Mamba-2 decoding step against the CPU op over a few steps from the same random states,
// in F32 and BF16 storage (the SSM state F32 either way): odd shapes (N not a multiple of 4, G
// from 1 to H, K 2 and 4, with and without conv bias and D), permuted rows with padding entries,
// and the 8B's mixer at B = 1 and 8.
#include "ops/mamba_decode_step.h"

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "cuda/harness.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_gpu;

constexpr double kInf = std::numeric_limits<double>::infinity();

// Rounded to bf16 and back: the BF16 run then sees exactly the CPU's inputs, so the comparison
// measures the kernels' own rounding (as tests/cuda/causal_conv1d_test.cpp).
Tensor bf16_exact(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }

Tensor random_input(const Shape& shape, uint64_t seed, double scale = 1.0, double mean = 0.0) {
  return bf16_exact(random_cpu(shape, seed, scale, mean));
}

Tensor gpu_or_none(const Tensor& t, DType dtype) {
  return t.defined() ? to_gpu(t, dtype) : Tensor();
}

struct StepCase {
  int64_t batch, state_rows, heads, head_dim, groups, state, kernel;
  bool bias, with_D;
  double dt_min = 0.0, dt_max = kInf;
};

constexpr int kSteps = 3;

void expect_step_matches_cpu(const StepCase& c, DType dtype, uint64_t seed) {
  const std::string tag = std::string(dtype_name(dtype)) + " B" + std::to_string(c.batch) + " H" +
                          std::to_string(c.heads) + " P" + std::to_string(c.head_dim) + " G" +
                          std::to_string(c.groups) + " N" + std::to_string(c.state) + " K" +
                          std::to_string(c.kernel) + (c.bias ? " bias" : "") +
                          (c.with_D ? " D " : " ");
  const int64_t d_inner = c.heads * c.head_dim, conv_dim = d_inner + 2 * c.groups * c.state;
  const int64_t width = d_inner + conv_dim + c.heads;
  const Tensor conv_w = random_input({conv_dim, c.kernel}, seed, 0.5);
  const Tensor conv_b = c.bias ? random_input({conv_dim}, seed + 1, 0.5) : Tensor();
  const Tensor dt_bias = random_input({c.heads}, seed + 2, 0.5, -1.0);
  const Tensor A_log = random_input({c.heads}, seed + 3, 0.5);
  const Tensor D = c.with_D ? random_input({c.heads}, seed + 4) : Tensor();
  Tensor conv_state = random_input({c.state_rows, conv_dim, c.kernel - 1}, seed + 5);
  Tensor ssm_state = random_cpu({c.state_rows, c.heads, c.head_dim, c.state}, seed + 6);
  Tensor gconv_state = to_gpu(conv_state, dtype), gssm_state = to_gpu(ssm_state);
  // Rows from the top down, every third entry padding.
  std::vector<int32_t> row_list(c.batch);
  for (int64_t b = 0; b < c.batch; ++b)
    row_list[b] = c.batch > 1 && b % 3 == 1 ? -1 : int32_t(c.state_rows - 1 - b);
  const Tensor rows = Tensor::from(row_list, {c.batch}), grows = to_gpu(rows);
  for (int step = 0; step < kSteps; ++step) {
    const Tensor zxbcdt = random_input({c.batch, width}, seed + 10 + step);
    Tensor y = Tensor::empty({c.batch, c.heads, c.head_dim}, DType::F32);
    Tensor gy = gpu_empty(y.shape(), dtype);
    cpu::mamba_decode_step(zxbcdt, rows, conv_w, conv_b, dt_bias, A_log, D, c.dt_min, c.dt_max,
                           c.groups, c.state, conv_state, ssm_state, y);
    cuda::mamba_decode_step(to_gpu(zxbcdt, dtype), grows, to_gpu(conv_w, dtype),
                            gpu_or_none(conv_b, dtype), to_gpu(dt_bias, dtype),
                            to_gpu(A_log, dtype), gpu_or_none(D, dtype), c.dt_min, c.dt_max,
                            c.groups, c.state, gconv_state, gssm_state, gy);
    expect_close(tag + "y step " + std::to_string(step), gy, y, test::tolerance(dtype));
  }
  // The window only ever holds inputs, which are bf16-exact: a copy, not a computation.
  expect_close(tag + "conv_state", gconv_state, conv_state, 0);
  // Both sides compute the state in fp32 from the same inputs (xbc and dt too): fp32's tolerance.
  expect_close(tag + "ssm_state", gssm_state, ssm_state, test::tolerance(DType::F32));
}

TEST(CudaMambaDecodeStep, MatchesCpuForOddShapesPaddingAndThe8BMixer) {
  const StepCase cases[] = {
      {1, 1, 1, 1, 1, 1, 2, false, false},
      {2, 3, 5, 3, 5, 5, 4, true, true},                // N = 5: no float4 rows, G = H
      {3, 4, 6, 33, 2, 47, 2, false, true, 0.01, 2.0},  // the dt clamp active
      {2, 2, 4, 16, 1, 256, 4, true, false},            // N = 256: 32 lanes a row
      {5, 6, 8, 64, 1, 64, 4, true, true},              // N = 64: 4 rows a warp
      {1, 3, 128, 64, 8, 128, 4, true, true},           // Nemotron-H-8B, one sequence
      {8, 10, 128, 64, 8, 128, 4, true, true},          // and eight
  };
  uint64_t seed = 100;
  for (DType dtype : {DType::F32, DType::BF16})
    for (const StepCase& c : cases) expect_step_matches_cpu(c, dtype, seed += 100);
}

TEST(CudaMambaDecodeStep, RejectsBadShapesDtypesAndDevices) {
  // H 4, P 3, G 2, N 8, K 4: C = 12 + 32 = 44, width 60.
  const Tensor zxbcdt = to_gpu(random_cpu({2, 60}, 1)), conv_w = to_gpu(random_cpu({44, 4}, 2));
  const Tensor dt_bias = to_gpu(random_cpu({4}, 3)), A_log = to_gpu(random_cpu({4}, 4));
  const Tensor rows_cpu = Tensor::from(std::vector<int32_t>{1, 0}, {2}), rows = to_gpu(rows_cpu);
  Tensor conv_state = test::gpu_zeros({2, 44, 3}, DType::F32);
  Tensor ssm_state = test::gpu_zeros({2, 4, 3, 8}, DType::F32),
         y = gpu_empty({2, 4, 3}, DType::F32);
  auto step = [&](const Tensor& rows_, Tensor& ssm_) {
    cuda::mamba_decode_step(zxbcdt, rows_, conv_w, Tensor(), dt_bias, A_log, Tensor(), 0.0, kInf, 2,
                            ssm_.size(3), conv_state, ssm_, y);
  };
  EXPECT_NO_THROW(step(rows, ssm_state));
  EXPECT_THROW(step(rows_cpu, ssm_state), Error);
  Tensor ssm_bf16 = test::gpu_zeros({2, 4, 3, 8}, DType::BF16);
  EXPECT_THROW(step(rows, ssm_bf16), Error);
  Tensor ssm_cpu = Tensor::zeros({2, 4, 3, 8}, DType::F32);
  EXPECT_THROW(step(rows, ssm_cpu), Error);
  // N = 300 is past the kernel's bound (the shapes made to fit it).
  const Tensor zx_big = to_gpu(random_cpu({1, 12 + 12 + 1200 + 4}, 5));
  const Tensor w_big = to_gpu(random_cpu({12 + 1200, 4}, 6));
  Tensor conv_big = test::gpu_zeros({1, 1212, 3}, DType::F32);
  Tensor ssm_big = test::gpu_zeros({1, 4, 3, 300}, DType::F32),
         y_big = gpu_empty({1, 4, 3}, DType::F32);
  EXPECT_THROW(cuda::mamba_decode_step(zx_big, to_gpu(Tensor::from(std::vector<int32_t>{0}, {1})),
                                       w_big, Tensor(), dt_bias, A_log, Tensor(), 0.0, kInf, 2, 300,
                                       conv_big, ssm_big, y_big),
               Error);
}

}  // namespace
}  // namespace nh
