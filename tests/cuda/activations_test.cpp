// relu² and SiLU, forward and backward, on the GPU against the CPU.
#include "ops/activations.h"

#include <string>

#include "cuda/harness.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_gpu;
using test::tolerance;

const DType kDtypes[] = {DType::F32, DType::BF16};
const Shape kShapes[] = {{1}, {5, 3}, {257, 129}, {2, 1000, 7}, {1 << 20}};

using Forward = void (*)(const Tensor&, Tensor&);
using Backward = void (*)(const Tensor&, const Tensor&, Tensor&);

// x spread over [-12, 12] (scale 4) so SiLU's saturated tails and relu's zero side both show.
void check_activation(const char* name, Forward cpu_fwd, Forward gpu_fwd, Backward cpu_bwd,
                      Backward gpu_bwd) {
  uint64_t seed = 1;
  for (DType dtype : kDtypes)
    for (const Shape& shape : kShapes) {
      Tensor x = random_cpu(shape, seed++, 4.0), dy = random_cpu(shape, seed++);
      Tensor y = Tensor::empty(shape, DType::F32), dx = Tensor::empty(shape, DType::F32);
      cpu_fwd(x, y);
      cpu_bwd(x, dy, dx);
      Tensor gx = to_gpu(x, dtype), gy = gpu_empty(shape, dtype), gdx = gpu_empty(shape, dtype);
      gpu_fwd(gx, gy);
      gpu_bwd(gx, to_gpu(dy, dtype), gdx);
      const std::string what = std::string(name) + " " + shape_str(shape) + " " + dtype_name(dtype);
      expect_close(what + " y", gy, y, tolerance(dtype));
      expect_close(what + " dx", gdx, dx, tolerance(dtype));
    }
}

TEST(CudaActivations, Relu2ForwardAndBackwardMatchCpu) {
  check_activation("relu2", cpu::relu2_forward, cuda::relu2_forward, cpu::relu2_backward,
                   cuda::relu2_backward);
}

TEST(CudaActivations, SiluForwardAndBackwardMatchCpu) {
  check_activation("silu", cpu::silu_forward, cuda::silu_forward, cpu::silu_backward,
                   cuda::silu_backward);
}

TEST(CudaActivations, MismatchedShapesAndDtypesThrow) {
  Tensor x = test::gpu_zeros({4, 5}, DType::F32);
  Tensor y_shape = gpu_empty({5, 4}, DType::F32), y_dtype = gpu_empty({4, 5}, DType::BF16);
  EXPECT_THROW(cuda::relu2_forward(x, y_shape), Error);
  EXPECT_THROW(cuda::silu_forward(x, y_dtype), Error);
  Tensor dx = gpu_empty({4, 5}, DType::F32);
  EXPECT_THROW(cuda::silu_backward(x, y_shape, dx), Error);
  Tensor y_cpu = Tensor::empty({4, 5}, DType::F32);
  EXPECT_THROW(cuda::relu2_forward(x, y_cpu), Error);
}

}  // namespace
}  // namespace nh
