// mamba_dt (softplus + clamp of dt) and mamba_a (A = −exp(A_log)) on the GPU against the CPU.
#include "ops/mamba_dt.h"

#include <limits>
#include <string>

#include "cuda/harness.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;
using test::tolerance;

const DType kDtypes[] = {DType::F32, DType::BF16};
const Shape kShapes[] = {{1, 1}, {7, 3}, {300, 40}, {1000, 128}, {2, 600, 24}, {70000, 3}};

struct Clamp {
  double lo, hi, raw_scale;
};
// Unclamped with wide inputs (softplus's x > 20 branch shows), and both clamps active.
const Clamp kClamps[] = {{0.0, std::numeric_limits<double>::infinity(), 8.0}, {0.2, 2.0, 2.0}};

// The inputs as the GPU holds them in `dtype`. The clamp's gradient is 0 or 1: if the CPU saw
// the unrounded fp32 inputs, bf16 rounding would move elements across lo or hi and each such
// element would differ by its whole gradient. Rounding the CPU's inputs too leaves only the
// output rounding, which test::tolerance covers.
Tensor as_stored(const Tensor& t, DType dtype) { return t.to(dtype).to(DType::F32); }

TEST(CudaMambaDt, ForwardAndBackwardMatchCpuWithAndWithoutActiveClamps) {
  uint64_t seed = 1;
  for (DType dtype : kDtypes)
    for (const Clamp& c : kClamps)
      for (const Shape& shape : kShapes) {
        const int64_t h = shape.back();
        Tensor raw = as_stored(random_cpu(shape, seed++, c.raw_scale), dtype);
        Tensor bias = as_stored(random_cpu({h}, seed++), dtype);
        Tensor ddt = as_stored(random_cpu(shape, seed++), dtype);
        Tensor dbias0 = as_stored(random_cpu({h}, seed++), dtype);
        Tensor dt = Tensor::empty(shape, DType::F32), draw = random_cpu(shape, seed++);
        Tensor dbias = dbias0.clone();
        cpu::mamba_dt_forward(raw, bias, c.lo, c.hi, dt);
        cpu::mamba_dt_backward(raw, bias, c.lo, c.hi, ddt, draw, dbias);

        Tensor graw = to_gpu(raw, dtype), gbias = to_gpu(bias, dtype);
        Tensor gdt = gpu_empty(shape, dtype);
        Tensor gdraw = to_gpu(random_cpu(shape, seed++), dtype);  // overwritten
        Tensor gdbias = to_gpu(dbias0, dtype);
        cuda::mamba_dt_forward(graw, gbias, c.lo, c.hi, gdt);
        cuda::mamba_dt_backward(graw, gbias, c.lo, c.hi, to_gpu(ddt, dtype), gdraw, gdbias);
        const std::string what = shape_str(shape) + " lo " + std::to_string(c.lo) + " hi " +
                                 std::to_string(c.hi) + " " + dtype_name(dtype);
        expect_close("mamba_dt dt " + what, gdt, dt, tolerance(dtype));
        expect_close("mamba_dt ddt_raw " + what, gdraw, draw, tolerance(dtype));
        expect_close("mamba_dt ddt_bias " + what, gdbias, dbias, tolerance(dtype));
      }
}

// The dt_bias gradient sums T rows over several blocks, in a fixed order.
TEST(CudaMambaDt, BiasGradientIsDeterministic) {
  const Shape shape{5000, 24};
  Tensor raw = to_gpu(random_cpu(shape, 100)), bias = to_gpu(random_cpu({24}, 101));
  Tensor ddt = to_gpu(random_cpu(shape, 102)), draw = gpu_empty(shape, DType::F32);
  Tensor db1 = test::gpu_zeros({24}, DType::F32), db2 = test::gpu_zeros({24}, DType::F32);
  cuda::mamba_dt_backward(raw, bias, 0.0, 1e9, ddt, draw, db1);
  cuda::mamba_dt_backward(raw, bias, 0.0, 1e9, ddt, draw, db2);
  const Tensor h1 = to_cpu(db1), h2 = to_cpu(db2);
  for (int64_t i = 0; i < 24; ++i) EXPECT_EQ(h1.data<float>()[i], h2.data<float>()[i]) << i;
}

TEST(CudaMambaA, ForwardAndBackwardMatchCpu) {
  uint64_t seed = 200;
  for (DType dtype : kDtypes)
    for (int64_t h : {1, 24, 128, 1000}) {
      Tensor a_log = as_stored(random_cpu({h}, seed++, 1.0, 0.5), dtype);
      Tensor da = as_stored(random_cpu({h}, seed++), dtype);
      Tensor da_log0 = as_stored(random_cpu({h}, seed++), dtype);
      Tensor a = Tensor::empty({h}, DType::F32), da_log = da_log0.clone();
      cpu::mamba_a_forward(a_log, a);
      cpu::mamba_a_backward(a, da, da_log);
      Tensor ga = gpu_empty({h}, dtype), gda_log = to_gpu(da_log0, dtype);
      cuda::mamba_a_forward(to_gpu(a_log, dtype), ga);
      // The backward reads A as the forward stored it, as the model does.
      cuda::mamba_a_backward(ga, to_gpu(da, dtype), gda_log);
      const std::string what = std::to_string(h) + " " + dtype_name(dtype);
      expect_close("mamba_a A " + what, ga, a, tolerance(dtype));
      expect_close("mamba_a dA_log " + what, gda_log, da_log, tolerance(dtype));
    }
}

TEST(CudaMambaDt, MismatchedShapesAndDtypesThrow) {
  Tensor raw = test::gpu_zeros({4, 3}, DType::F32), dt = gpu_empty({4, 3}, DType::F32);
  Tensor bias_bad = test::gpu_zeros({4}, DType::F32), bias_bf16 = test::gpu_zeros({3}, DType::BF16);
  EXPECT_THROW(cuda::mamba_dt_forward(raw, bias_bad, 0, 1, dt), Error);
  EXPECT_THROW(cuda::mamba_dt_forward(raw, bias_bf16, 0, 1, dt), Error);
  Tensor bias = test::gpu_zeros({3}, DType::F32), dt_bad = gpu_empty({3, 4}, DType::F32);
  EXPECT_THROW(cuda::mamba_dt_forward(raw, bias, 0, 1, dt_bad), Error);
  Tensor a = gpu_empty({5}, DType::F32), a_log = test::gpu_zeros({4}, DType::F32);
  EXPECT_THROW(cuda::mamba_a_forward(a_log, a), Error);
}

}  // namespace
}  // namespace nh
