#include <algorithm>
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/dropout.h"

namespace nh::cuda {

namespace {

template <class T>
__global__ void dropout_kernel(const T* x, int64_t n, float p, float scale, uint64_t seed, T* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_f32<T>(dropout_keep(seed, i, p) ? to_f32(x[i]) * scale : 0.f);
}

}  // namespace

void dropout_forward(const Tensor& x, double p, uint64_t seed, Tensor& y) {
  require_cuda(x, "dropout", "x");
  require_cuda(y, "dropout", "y");
  if (x.numel() != y.numel() || x.dtype() != y.dtype())
    throw Error("dropout", "y", "x's size and dtype",
                shape_str(y.shape()) + " " + dtype_name(y.dtype()));
  if (!(p >= 0 && p < 1)) throw Error("dropout", "p", "in [0, 1)", std::to_string(p));
  const int64_t n = x.numel();
  if (n == 0) return;
  constexpr int kThreads = 256;
  const unsigned blocks = unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
  with_gpu_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    dropout_kernel<T><<<blocks, kThreads, 0, stream()>>>(ptr<T>(x), n, float(p),
                                                         float(1.0 / (1.0 - p)), seed, ptr<T>(y));
  });
  NH_CUDA_CHECK_LAUNCH();
}

}  // namespace nh::cuda
