// Elementwise activations on the GPU (ops/activations.h): F32 or BF16 storage, fp32 arithmetic.
#include <algorithm>
#include <string>

#include "ops/activations.h"
#include "ops/cuda/common.cuh"

namespace nh::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

// SPEC §4: the MLP's squared ReLU.
struct Relu2 {
  __device__ float forward(float v) const { return v > 0.f ? v * v : 0.f; }
  __device__ float backward(float v, float g) const { return v > 0.f ? 2.f * v * g : 0.f; }
};

struct Silu {
  static __device__ float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }
  __device__ float forward(float v) const { return v * sigmoid(v); }
  __device__ float backward(float v, float g) const {
    const float s = sigmoid(v);
    return g * s * (1.f + v * (1.f - s));
  }
};

// y[i] = f(x[i]) over n packs of kVec elements, grid-stride.
template <class T, int kVec, class F>
__global__ void activation_forward_kernel(const Pack<T, kVec>* x, Pack<T, kVec>* y, int64_t n,
                                          F f) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Pack<T, kVec> xv = x[i];
    Pack<T, kVec> yv;
#pragma unroll
    for (int k = 0; k < kVec; ++k) yv.v[k] = from_f32<T>(f.forward(to_f32(xv.v[k])));
    y[i] = yv;
  }
}

// dx[i] = f'(x[i]) · dy[i] over n packs of kVec elements, grid-stride.
template <class T, int kVec, class F>
__global__ void activation_backward_kernel(const Pack<T, kVec>* x, const Pack<T, kVec>* dy,
                                           Pack<T, kVec>* dx, int64_t n, F f) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Pack<T, kVec> xv = x[i], gv = dy[i];
    Pack<T, kVec> out;
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      out.v[k] = from_f32<T>(f.backward(to_f32(xv.v[k]), to_f32(gv.v[k])));
    dx[i] = out;
  }
}


void check_like(const Tensor& t, const Tensor& x, const char* op, const char* what) {
  require_cuda(t, op, what);
  if (t.shape() != x.shape())
    throw Error(op, std::string(what) + " shape", shape_str(x.shape()), shape_str(t.shape()));
  if (t.dtype() != x.dtype())
    throw Error(op, std::string(what) + " dtype", dtype_name(x.dtype()), dtype_name(t.dtype()));
}

unsigned grid_for(int64_t n) {
  return unsigned(std::min<int64_t>(blocks_for(n, kThreads), kMaxBlocks));
}

template <class F>
void activation_forward(const char* op, const Tensor& x, Tensor& y, F f) {
  require_cuda(x, op, "x");
  check_like(y, x, op, "y");
  const int64_t n = x.numel();
  if (n == 0) return;
  with_gpu_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    with_pack<T>(n, {&x, &y}, [&](auto pack) {
      using P = decltype(pack);
      const int64_t packs = n / P::kSize;
      activation_forward_kernel<<<grid_for(packs), kThreads, 0, stream()>>>(
          static_cast<const P*>(x.raw()), static_cast<P*>(y.raw()), packs, f);
      NH_CUDA_CHECK_LAUNCH();
    });
  });
}

template <class F>
void activation_backward(const char* op, const Tensor& x, const Tensor& dy, Tensor& dx, F f) {
  require_cuda(x, op, "x");
  check_like(dy, x, op, "dy");
  check_like(dx, x, op, "dx");
  const int64_t n = x.numel();
  if (n == 0) return;
  with_gpu_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    with_pack<T>(n, {&x, &dy, &dx}, [&](auto pack) {
      using P = decltype(pack);
      const int64_t packs = n / P::kSize;
      activation_backward_kernel<<<grid_for(packs), kThreads, 0, stream()>>>(
          static_cast<const P*>(x.raw()), static_cast<const P*>(dy.raw()),
          static_cast<P*>(dx.raw()), packs, f);
      NH_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace

void relu2_forward(const Tensor& x, Tensor& y) { activation_forward("relu2", x, y, Relu2{}); }
void relu2_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  activation_backward("relu2", x, dy, dx, Relu2{});
}
void silu_forward(const Tensor& x, Tensor& y) { activation_forward("silu", x, y, Silu{}); }
void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  activation_backward("silu", x, dy, dx, Silu{});
}

}  // namespace nh::cuda
