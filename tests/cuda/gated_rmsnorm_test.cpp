#include "ops/gated_rmsnorm.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "cuda/harness.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;

// Inputs are bf16-representable, so the BF16 run sees exactly the CPU's inputs and the
// comparison measures the kernels' own roundings (g·rstd and the outputs to bf16), not input
// quantisation, which alone can exceed 2e-2 on a single-channel sum that nearly cancels.
Tensor random_input(const Shape& shape, uint64_t seed, double scale = 1.0, double mean = 0.0) {
  return random_cpu(shape, seed, scale, mean).to(DType::BF16).to(DType::F32);
}

// With one channel per group, n = g/sqrt(g² + eps) and dg ∝ 1 − n² = eps/(g² + eps): with a
// small eps that is a difference of nearly equal numbers, and the backends would only be
// compared on rounding noise. A large eps keeps that case well conditioned.
double eps_for(int64_t group_size) { return group_size == 1 ? 1.0 : 1e-5; }

// Runs forward and backward on the CPU in F32 and on the GPU in `dtype` (rstd stored in
// `rstd_dtype`) from the same inputs, and compares y, rstd, dx, dz and the accumulated dw.
void expect_matches_cpu_once(const Shape& shape, int64_t groups, DType dtype, DType rstd_dtype,
                             uint64_t seed) {
  const int64_t channels = shape.back(), rows = shape_numel(shape) / channels;
  const double eps = eps_for(channels / groups);
  const Tensor x = random_input(shape, seed), z = random_input(shape, seed + 1),
               w = random_input({channels}, seed + 2, 0.5, 1.0), dy = random_input(shape, seed + 3),
               dw0 = random_input({channels}, seed + 4, 0.5);

  Tensor y = Tensor::empty(shape, DType::F32), rstd = Tensor::empty({rows, groups}, DType::F32);
  cpu::gated_rmsnorm_forward(x, z, w, groups, eps, y, rstd);
  Tensor dx = Tensor::empty(shape, DType::F32), dz = Tensor::empty(shape, DType::F32),
         dw = dw0.clone();
  cpu::gated_rmsnorm_backward(x, z, w, groups, rstd, dy, dx, dz, dw);

  const Tensor gx = to_gpu(x, dtype), gz = to_gpu(z, dtype), gw = to_gpu(w, dtype),
               gdy = to_gpu(dy, dtype);
  Tensor gy = gpu_empty(shape, dtype), grstd = gpu_empty({rows, groups}, rstd_dtype);
  cuda::gated_rmsnorm_forward(gx, gz, gw, groups, eps, gy, grstd);
  Tensor gdx = gpu_empty(shape, dtype), gdz = gpu_empty(shape, dtype), gdw = to_gpu(dw0, dtype);
  cuda::gated_rmsnorm_backward(gx, gz, gw, groups, grstd, gdy, gdx, gdz, gdw);

  const double tol = test::tolerance(dtype);
  const std::string tag = std::string(dtype_name(dtype)) + " rstd " + dtype_name(rstd_dtype) + " " +
                          shape_str(shape) + " groups " + std::to_string(groups) + " ";
  expect_close(tag + "y", gy, y, tol);
  expect_close(tag + "rstd", grstd, rstd, tol);
  expect_close(tag + "dx", gdx, dx, tol);
  expect_close(tag + "dz", gdz, dz, tol);
  expect_close(tag + "dw", gdw, dw, tol);
}

// The above for every version of the GPU kernels (core/kernel_versions.h).
void expect_matches_cpu(const Shape& shape, int64_t groups, DType dtype, DType rstd_dtype,
                        uint64_t seed) {
  test::for_each_kernel_version(
      "gated_rmsnorm", [&] { expect_matches_cpu_once(shape, groups, dtype, rstd_dtype, seed); });
}

// Channel counts give group sizes from 1 (8 channels in 8 groups) through odd ones (7, 125) to
// 4096.
TEST(CudaGatedRmsnorm, MatchesCpuForEveryRowCountWidthAndGroupCount) {
  uint64_t seed = 200;
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t rows : {1, 3, 1000})
      for (int64_t channels : {8, 56, 1000, 4096})
        for (int64_t groups : {1, 2, 8})
          expect_matches_cpu({rows, channels}, groups, dtype, DType::F32, seed += 10);
}

// 9999 rows: more than 256 chunks of 32 rows, so chunks grow to 40 rows and the last is partial.
TEST(CudaGatedRmsnorm, MatchesCpuWhenWeightGradientChunksAreUneven) {
  expect_matches_cpu({9999, 96}, 2, DType::F32, DType::F32, 7);
  expect_matches_cpu({9999, 96}, 2, DType::BF16, DType::F32, 8);
}

TEST(CudaGatedRmsnorm, MatchesCpuWithLeadingDimensions) {
  expect_matches_cpu({2, 5, 48}, 8, DType::F32, DType::F32, 11);
  expect_matches_cpu({2, 5, 48}, 8, DType::BF16, DType::F32, 12);
}

// The Mamba mixer may allocate rstd in the activation dtype; the forward then normalises with
// the rounded rstd it stored, so the backward stays consistent with it.
TEST(CudaGatedRmsnorm, MatchesCpuWithRstdStoredInBf16) {
  expect_matches_cpu({3, 4096}, 8, DType::BF16, DType::BF16, 21);
  expect_matches_cpu({1000, 1000}, 2, DType::BF16, DType::BF16, 22);
}

TEST(CudaGatedRmsnorm, WeightGradientIsBitwiseReproducible) {
  const Shape shape = {1000, 4096};
  const Tensor x = to_gpu(random_cpu(shape, 31)), z = to_gpu(random_cpu(shape, 32)),
               w = to_gpu(random_cpu({4096}, 33, 0.5, 1.0)), dy = to_gpu(random_cpu(shape, 34));
  Tensor y = gpu_empty(shape, DType::F32), rstd = gpu_empty({1000, 8}, DType::F32),
         dx = gpu_empty(shape, DType::F32), dz = gpu_empty(shape, DType::F32);
  cuda::gated_rmsnorm_forward(x, z, w, 8, 1e-5, y, rstd);
  Tensor dw1 = test::gpu_zeros({4096}, DType::F32), dw2 = test::gpu_zeros({4096}, DType::F32);
  cuda::gated_rmsnorm_backward(x, z, w, 8, rstd, dy, dx, dz, dw1);
  cuda::gated_rmsnorm_backward(x, z, w, 8, rstd, dy, dx, dz, dw2);
  const Tensor a = to_cpu(dw1), b = to_cpu(dw2);
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
}

TEST(CudaGatedRmsnorm, RejectsBadGroupsShapesAndCpuTensors) {
  const Tensor x = to_gpu(random_cpu({3, 8}, 41)), z = to_gpu(random_cpu({3, 8}, 42)),
               w = to_gpu(random_cpu({8}, 43));
  Tensor y = gpu_empty({3, 8}, DType::F32), rstd = gpu_empty({3, 2}, DType::F32);
  Tensor z_bad = to_gpu(random_cpu({3, 7}, 44)), rstd_bad = gpu_empty({3, 4}, DType::F32);
  const Tensor x_cpu = random_cpu({3, 8}, 45);
  EXPECT_THROW(cuda::gated_rmsnorm_forward(x, z, w, 3, 1e-5, y, rstd), Error);
  EXPECT_THROW(cuda::gated_rmsnorm_forward(x, z_bad, w, 2, 1e-5, y, rstd), Error);
  EXPECT_THROW(cuda::gated_rmsnorm_forward(x, z, w, 2, 1e-5, y, rstd_bad), Error);
  EXPECT_THROW(cuda::gated_rmsnorm_forward(x_cpu, z, w, 2, 1e-5, y, rstd), Error);
}

}  // namespace
}  // namespace nh
