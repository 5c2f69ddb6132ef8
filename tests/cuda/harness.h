// The GPU op harness (llama.cpp's test-backend-ops, for forward and backward): each test runs
// an op on the CPU in fp32 and on the GPU in fp32 and in bf16 from the same random inputs, and
// checks ‖gpu − cpu‖ / ‖cpu‖ against a tolerance for that dtype. Built only with CUDA; the
// tests carry the ctest label `cuda` and need a GPU.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "core/kernel_versions.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace nh::test {

// Relative tolerances: fp32 kernels differ from the CPU only in summation order; bf16
// storage rounds every stored value to 8 significant bits (2^-9 relative).
inline double tolerance(DType dtype) { return dtype == DType::BF16 ? 2e-2 : 1e-4; }

inline Tensor random_cpu(const Shape& shape, uint64_t seed, double scale = 1.0, double mean = 0.0) {
  Rng rng(seed);
  Tensor t = Tensor::empty(shape, DType::F32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(mean + scale * rng.normal());
  return t;
}

// Calls f() once per kernel version of `op` in the playground (core/kernel_versions.h), with
// NH_KERNELS selecting it and its name in the messages of failures.
template <class F>
void for_each_kernel_version(const std::string& op, F&& f) {
  for (const std::string& version : kernel_versions(op)) {
    const KernelVersionScope scope(op, version);
    SCOPED_TRACE(op + "=" + version);
    f();
  }
}

// A GPU copy of a CPU tensor in `dtype` (float tensors are converted; integer ones keep theirs).
inline Tensor to_gpu(const Tensor& cpu, DType dtype = DType::F32) {
  const Tensor host = is_float(cpu.dtype()) ? cpu.to(dtype) : cpu;
  Tensor g = Tensor::empty(host.shape(), host.dtype(), Device::CUDA);
  g.copy_from(host);
  return g;
}

// A CPU fp32 (or integer) copy of a GPU tensor.
inline Tensor to_cpu(const Tensor& gpu) {
  Tensor h = Tensor::empty(gpu.shape(), gpu.dtype(), Device::CPU);
  h.copy_from(gpu);
  return is_float(h.dtype()) ? h.to(DType::F32) : h;
}

inline Tensor gpu_empty(const Shape& shape, DType dtype) {
  return Tensor::empty(shape, dtype, Device::CUDA);
}
inline Tensor gpu_zeros(const Shape& shape, DType dtype) {
  return Tensor::zeros(shape, dtype, Device::CUDA);
}

// Checks ‖gpu − cpu‖/‖cpu‖ <= tol and prints the figure (the harness's report).
inline void expect_close(const std::string& what, const Tensor& gpu, const Tensor& cpu,
                         double tol) {
  const Tensor g = to_cpu(gpu);
  ASSERT_EQ(g.numel(), cpu.numel()) << what;
  double num = 0, den = 0, max_abs = 0;
  for (int64_t i = 0; i < cpu.numel(); ++i) {
    const double a = read_float(g, i), b = read_float(cpu, i);
    num += (a - b) * (a - b);
    den += b * b;
    max_abs = std::max(max_abs, std::fabs(a - b));
  }
  const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  std::printf("  %-48s rel %.2e  max_abs %.2e  (tol %.0e)\n", what.c_str(), rel, max_abs, tol);
  EXPECT_TRUE(std::isfinite(rel) && rel <= tol) << what << ": rel " << rel << " > " << tol;
}

}  // namespace nh::test
