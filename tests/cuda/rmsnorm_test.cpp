#include "ops/rmsnorm.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "cuda/harness.h"
#include "ops/elementwise.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;

// Inputs are bf16-representable, so the BF16 run sees exactly the CPU's inputs and the
// comparison measures the kernels' own roundings (x·rstd and the outputs to bf16), not input
// quantisation, which alone can exceed 2e-2 on a single-channel sum that nearly cancels.
Tensor random_input(const Shape& shape, uint64_t seed, double scale = 1.0, double mean = 0.0) {
  return random_cpu(shape, seed, scale, mean).to(DType::BF16).to(DType::F32);
}

// With D = 1, n = x/sqrt(x² + eps) and dx ∝ 1 − n² = eps/(x² + eps): with a small eps that is a
// difference of nearly equal numbers, and the backends would only be compared on rounding
// noise. A large eps keeps the single-channel case well conditioned.
double eps_for(int64_t dim) { return dim == 1 ? 1.0 : 1e-5; }

// Runs forward and backward on the CPU in F32 and on the GPU in `dtype` (rstd stored in
// `rstd_dtype`) from the same inputs, and compares y, rstd, dx and the accumulated dw.
void expect_matches_cpu_once(const Shape& shape, DType dtype, DType rstd_dtype, uint64_t seed) {
  const int64_t dim = shape.back(), rows = shape_numel(shape) / dim;
  const double eps = eps_for(dim);
  const Tensor x = random_input(shape, seed), w = random_input({dim}, seed + 1, 0.5, 1.0),
               dy = random_input(shape, seed + 2), dw0 = random_input({dim}, seed + 3, 0.5);

  Tensor y = Tensor::empty(shape, DType::F32), rstd = Tensor::empty({rows}, DType::F32);
  cpu::rmsnorm_forward(x, w, eps, y, rstd);
  Tensor dx = Tensor::empty(shape, DType::F32), dw = dw0.clone();
  cpu::rmsnorm_backward(x, w, rstd, dy, dx, dw);

  const Tensor gx = to_gpu(x, dtype), gw = to_gpu(w, dtype), gdy = to_gpu(dy, dtype);
  Tensor gy = gpu_empty(shape, dtype), grstd = gpu_empty({rows}, rstd_dtype);
  cuda::rmsnorm_forward(gx, gw, eps, gy, grstd);
  Tensor gdx = gpu_empty(shape, dtype), gdw = to_gpu(dw0, dtype);
  cuda::rmsnorm_backward(gx, gw, grstd, gdy, gdx, gdw);

  const double tol = test::tolerance(dtype);
  const std::string tag = std::string(dtype_name(dtype)) + " rstd " + dtype_name(rstd_dtype) + " " +
                          shape_str(shape) + " ";
  expect_close(tag + "y", gy, y, tol);
  expect_close(tag + "rstd", grstd, rstd, tol);
  expect_close(tag + "dx", gdx, dx, tol);
  expect_close(tag + "dw", gdw, dw, tol);
}

// The above for every version of the GPU kernels (core/kernel_versions.h).
void expect_matches_cpu(const Shape& shape, DType dtype, DType rstd_dtype, uint64_t seed) {
  test::for_each_kernel_version("rmsnorm",
                                [&] { expect_matches_cpu_once(shape, dtype, rstd_dtype, seed); });
}

TEST(CudaRmsnorm, MatchesCpuForEveryRowCountAndWidth) {
  uint64_t seed = 100;
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t rows : {1, 3, 1000})
      for (int64_t dim : {1, 7, 64, 1000, 4096})
        expect_matches_cpu({rows, dim}, dtype, DType::F32, seed += 10);
}

// 9999 rows: more than 256 chunks of 32 rows, so chunks grow to 40 rows and the last is partial.
TEST(CudaRmsnorm, MatchesCpuWhenWeightGradientChunksAreUneven) {
  expect_matches_cpu({9999, 96}, DType::F32, DType::F32, 7);
  expect_matches_cpu({9999, 96}, DType::BF16, DType::F32, 8);
}

TEST(CudaRmsnorm, MatchesCpuWithLeadingDimensions) {
  expect_matches_cpu({2, 5, 33}, DType::F32, DType::F32, 11);
  expect_matches_cpu({2, 5, 33}, DType::BF16, DType::F32, 12);
}

// The model may allocate rstd in the activation dtype; the forward then normalises with the
// rounded rstd it stored, so the backward stays consistent with it.
TEST(CudaRmsnorm, MatchesCpuWithRstdStoredInBf16) {
  expect_matches_cpu({3, 4096}, DType::BF16, DType::BF16, 21);
  expect_matches_cpu({1000, 1000}, DType::BF16, DType::BF16, 22);
}

TEST(CudaRmsnorm, WeightGradientIsBitwiseReproducible) {
  const Shape shape = {1000, 4096};
  const Tensor x = to_gpu(random_cpu(shape, 31)), w = to_gpu(random_cpu({4096}, 32, 0.5, 1.0)),
               dy = to_gpu(random_cpu(shape, 33));
  Tensor y = gpu_empty(shape, DType::F32), rstd = gpu_empty({1000}, DType::F32),
         dx = gpu_empty(shape, DType::F32);
  cuda::rmsnorm_forward(x, w, 1e-5, y, rstd);
  Tensor dw1 = test::gpu_zeros({4096}, DType::F32), dw2 = test::gpu_zeros({4096}, DType::F32);
  cuda::rmsnorm_backward(x, w, rstd, dy, dx, dw1);
  cuda::rmsnorm_backward(x, w, rstd, dy, dx, dw2);
  const Tensor a = to_cpu(dw1), b = to_cpu(dw2);
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
}

// The fused residual add + norm equals the add then the norm on the same device bit for bit
// (the same roundings in the same order), and the CPU's within the dtype's tolerance.
TEST(CudaRmsnorm, AddThenNormInOnePassEqualsTheTwoOps) {
  for (DType dtype : {DType::F32, DType::BF16})
    for (const Shape& shape : {Shape{1, 4096}, Shape{5, 333}, Shape{64, 1024}}) {
      const int64_t dim = shape.back(), rows = shape_numel(shape) / dim;
      const Tensor x = random_input(shape, 7), delta = random_input(shape, 8),
                   w = random_input({dim}, 9, 0.5, 1.0);
      Tensor sum = x.clone(), y = Tensor::empty(shape, DType::F32),
             rstd = Tensor::empty({rows}, DType::F32);
      cpu::add_rmsnorm_forward(sum, delta, w, 1e-5, y, rstd);

      Tensor fused_x = to_gpu(x, dtype), two_x = to_gpu(x, dtype);
      const Tensor gd = to_gpu(delta, dtype), gw = to_gpu(w, dtype);
      Tensor fused_y = gpu_empty(shape, dtype), two_y = gpu_empty(shape, dtype),
             fused_r = gpu_empty({rows}, DType::F32), two_r = gpu_empty({rows}, DType::F32);
      cuda::add_rmsnorm_forward(fused_x, gd, gw, 1e-5, fused_y, fused_r);
      cuda::add_inplace(two_x, gd);
      cuda::rmsnorm_forward(two_x, gw, 1e-5, two_y, two_r);
      const std::string tag = std::string(dtype_name(dtype)) + " " + shape_str(shape) + " ";
      expect_close(tag + "x", fused_x, to_cpu(two_x), 0.0);
      expect_close(tag + "y", fused_y, to_cpu(two_y), 0.0);
      expect_close(tag + "x vs cpu", fused_x, sum, test::tolerance(dtype));
      expect_close(tag + "y vs cpu", fused_y, y, test::tolerance(dtype));
      expect_close(tag + "rstd vs cpu", fused_r, rstd, test::tolerance(dtype));
    }
}

TEST(CudaRmsnorm, RejectsBadShapesDtypesAndCpuTensors) {
  const Tensor x = to_gpu(random_cpu({3, 8}, 41)), w = to_gpu(random_cpu({8}, 42));
  Tensor y = gpu_empty({3, 8}, DType::F32), rstd = gpu_empty({3}, DType::F32);
  Tensor w_bad = to_gpu(random_cpu({7}, 43)), rstd_bad = gpu_empty({4}, DType::F32);
  Tensor rstd_int = gpu_empty({3}, DType::I32), x_cpu = random_cpu({3, 8}, 44);
  EXPECT_THROW(cuda::rmsnorm_forward(x, w_bad, 1e-5, y, rstd), Error);
  EXPECT_THROW(cuda::rmsnorm_forward(x, w, 1e-5, y, rstd_bad), Error);
  EXPECT_THROW(cuda::rmsnorm_forward(x, w, 1e-5, y, rstd_int), Error);
  EXPECT_THROW(cuda::rmsnorm_forward(x_cpu, w, 1e-5, y, rstd), Error);
}

}  // namespace
}  // namespace nh
