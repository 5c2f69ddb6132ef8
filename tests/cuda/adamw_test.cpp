// AdamW steps and the squared norm on the GPU against the CPU.
#include "ops/adamw.h"

#include <cmath>
#include <iterator>
#include <string>
#include <vector>

#include "cuda/harness.h"

namespace nh {
namespace {

using test::expect_close;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;
using test::tolerance;

const Shape kShapes[] = {{1}, {7, 3}, {1000}, {257, 129}, {1 << 20}, {3, 1000003}};

// Three steps (bias corrections change each step) with weight decay and a gradient scale. The
// step is computed in fp32 on the GPU and in double on the CPU; lr = 0.1 makes the update large
// enough that comparing param − param₀ (not only param ≈ param₀) checks the update itself.
void expect_three_steps_match_cpu() {
  uint64_t seed = 1;
  for (DType grad_dtype : {DType::F32, DType::BF16})
    for (const Shape& shape : kShapes) {
      Tensor param = random_cpu(shape, seed++), m = random_cpu(shape, seed++, 0.1);
      Tensor v = random_cpu(shape, seed++, 0.01);
      for (int64_t i = 0; i < v.numel(); ++i) v.data<float>()[i] = std::fabs(v.data<float>()[i]);
      const Tensor param0 = param.clone();
      Tensor gparam = to_gpu(param), gm = to_gpu(m), gv = to_gpu(v);
      Tensor gcopy = test::gpu_zeros(shape, DType::BF16);  // the model's weights, written too
      for (int64_t step = 1; step <= 3; ++step) {
        const Tensor grad = random_cpu(shape, seed++);
        const AdamWStep s{.lr = 0.1,
                          .beta1 = 0.9,
                          .beta2 = 0.95,
                          .eps = 1e-8,
                          .weight_decay = 0.1,
                          .step = step,
                          .grad_scale = 0.5};
        cpu::adamw_step(param, grad, m, v, s);
        cuda::adamw_step(gparam, to_gpu(grad, grad_dtype), gm, gv, s, &gcopy);
      }
      Tensor delta = param.clone(), gdelta = to_cpu(gparam);
      for (int64_t i = 0; i < delta.numel(); ++i) {
        delta.data<float>()[i] -= param0.data<float>()[i];
        gdelta.data<float>()[i] -= param0.data<float>()[i];
      }
      const std::string what = shape_str(shape) + " grad " + dtype_name(grad_dtype);
      // A bf16 gradient changes m, v and the update by its rounding (2^-9 relative).
      const double tol = tolerance(grad_dtype);
      expect_close("adamw param " + what, gparam, param, tol);
      expect_close("adamw update " + what, to_gpu(gdelta), delta, tol);
      expect_close("adamw m " + what, gm, m, tol);
      expect_close("adamw v " + what, gv, v, tol);
      expect_close("adamw bf16 copy " + what, gcopy, param, test::tolerance(DType::BF16));
    }
}

// Every version of the kernel (core/kernel_versions.h).
TEST(CudaAdamW, ThreeStepsMatchCpuWithF32AndBf16Gradients) {
  test::for_each_kernel_version("adamw", expect_three_steps_match_cpu);
}

TEST(CudaAdamW, MismatchedSizesAndDtypesThrow) {
  Tensor p = test::gpu_zeros({4}, DType::F32), g = test::gpu_zeros({4}, DType::F32);
  Tensor m = test::gpu_zeros({4}, DType::F32), v_bad = test::gpu_zeros({5}, DType::F32);
  Tensor m_bf16 = test::gpu_zeros({4}, DType::BF16);
  const AdamWStep s{.lr = 1e-3};
  EXPECT_THROW(cuda::adamw_step(p, g, m, v_bad, s), Error);
  EXPECT_THROW(cuda::adamw_step(p, g, m_bf16, m, s), Error);
}

// The GPU squares in double the same values the CPU does and sums them in another order:
// double rounding over ≤ 3·10^6 positive terms stays below 1e-12 relative. All shapes in one
// call (with an empty tensor and one that starts unaligned, inside another), twice.
TEST(CudaSumsOfSquares, MatchCpuAndAreDeterministic) {
  uint64_t seed = 100;
  for (DType dtype : {DType::F32, DType::BF16}) {
    std::vector<Tensor> cpu_ts, gpu_ts;
    for (const Shape& shape : kShapes) {
      // The CPU sums the values as the GPU stores them.
      cpu_ts.push_back(random_cpu(shape, seed++).to(dtype).to(DType::F32));
      gpu_ts.push_back(to_gpu(cpu_ts.back(), dtype));
    }
    cpu_ts.push_back(Tensor::zeros({0}, DType::F32));
    gpu_ts.push_back(test::gpu_zeros({0}, dtype));
    const Tensor whole = random_cpu({4097}, seed++).to(dtype).to(DType::F32);
    cpu_ts.push_back(whole.slice0(1, 4097).clone());
    gpu_ts.push_back(to_gpu(whole, dtype).slice0(1, 4097));
    const std::vector<double> want = cpu::sums_of_squares(cpu_ts);
    const std::vector<double> got = cuda::sums_of_squares(gpu_ts),
                              again = cuda::sums_of_squares(gpu_ts);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_NEAR(got[i], want[i], 1e-12 * want[i]) << i << " " << dtype_name(dtype);
      EXPECT_EQ(got[i], again[i]) << i << " " << dtype_name(dtype);
    }
    EXPECT_EQ(got[std::size(kShapes)], 0.0);
  }
}

}  // namespace
}  // namespace nh
