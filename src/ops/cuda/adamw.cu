// AdamW and the squared norm on the GPU (ops/adamw.h). param, m, v: F32; grad: F32 or BF16.
// The step computes in fp32 (the bias corrections and lr are formed in double on the host).
// sums_of_squares accumulates in double over a fixed partition: at most kSumBlocks blocks, their
// number set by the element count alone, a fixed-shape tree in each block, then one block adds
// the partials by the same tree; the same result on every run and GPU.
#include <algorithm>
#include <cmath>
#include <string>

#include "core/kernel_versions.h"
#include "ops/adamw.h"
#include "ops/cuda/common.cuh"

namespace nh::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;
// Threads of the sum-of-squares blocks, and the most blocks of its first pass (also the width
// of its second pass, one thread per partial).
constexpr int kSumThreads = 1024;
constexpr int64_t kSumBlocks = 1024;

struct AdamWScalars {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  float inv_c1, inv_c2;  // 1 / (1 − β^t)
};

__device__ __forceinline__ void adamw_update(float& w, float& m, float& v, float grad,
                                             const AdamWScalars& s) {
  const float g = grad * s.grad_scale;
  m = s.beta1 * m + (1.f - s.beta1) * g;
  v = s.beta2 * v + (1.f - s.beta2) * g * g;
  w -= s.lr * ((m * s.inv_c1) / (sqrtf(v * s.inv_c2) + s.eps) + s.weight_decay * w);
}

// Four consecutive elements of a float or bf16 array, 16 or 8 bytes at a time.
__device__ __forceinline__ void load4(const float* p, float (&x)[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
}
__device__ __forceinline__ void load4(const bf16* p, float (&x)[4]) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  x[0] = lo.x, x[1] = lo.y, x[2] = hi.x, x[3] = hi.y;
}
__device__ __forceinline__ void store4(float* p, const float (&x)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
}
__device__ __forceinline__ void store4(bf16* p, const float (&x)[4]) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(x[0], x[1]), hi = __floats2bfloat162_rn(x[2], x[3]);
  *reinterpret_cast<uint2*>(p) =
      make_uint2(*reinterpret_cast<const unsigned*>(&lo), *reinterpret_cast<const unsigned*>(&hi));
}

// One fused AdamW update per element, grid-stride, kVec (1 or 4) elements at a time; with
// `copy`, the updated parameter is also written there in C (the model's bf16 weights).
template <int kVec, class G, class C>
__global__ void adamw_step_kernel(float* param, const G* grad, float* m, float* v, int64_t n,
                                  AdamWScalars s, C* copy) {
  for (int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * kVec; i < n;
       i += int64_t(gridDim.x) * blockDim.x * kVec) {
    if constexpr (kVec == 4) {
      float w[4], mi[4], vi[4], g[4];
      load4(param + i, w), load4(m + i, mi), load4(v + i, vi), load4(grad + i, g);
#pragma unroll
      for (int k = 0; k < 4; ++k) adamw_update(w[k], mi[k], vi[k], g[k], s);
      store4(param + i, w), store4(m + i, mi), store4(v + i, vi);
      if (copy != nullptr) store4(copy + i, w);
    } else {
      float w = param[i], mi = m[i], vi = v[i];
      adamw_update(w, mi, vi, to_f32(grad[i]), s);
      param[i] = w, m[i] = mi, v[i] = vi;
      if (copy != nullptr) copy[i] = from_f32<C>(w);
    }
  }
}

// The sum of `value` over the block, in a fixed order: a shuffle tree within each warp, then
// warp 0 adds the warp sums by the same tree. The result is valid in thread 0.
__device__ double block_sum(double value) {
  __shared__ double warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_down_sync(0xffffffffu, value, offset);
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / 32;
    value = lane < warps ? warp_sums[lane] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2)
      value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;
}

// partial[block] = Σ t[i]² over the block's grid-stride share of the n packs of elements, in
// double.
template <class T, int kVec>
__global__ void sum_of_squares_partial_kernel(const Pack<T, kVec>* t, int64_t n, double* partial) {
  double sum = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const Pack<T, kVec> p = t[i];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const double x = to_f32(p.v[k]);
      sum += x * x;
    }
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

// total[0] = Σ partial[0 .. count), one block of kSumThreads >= count threads.
__global__ void sum_partials_kernel(const double* partial, int64_t count, double* total) {
  const double sum = block_sum(threadIdx.x < count ? partial[threadIdx.x] : 0.0);
  if (threadIdx.x == 0) total[0] = sum;
}

void check_state(const Tensor& t, const Tensor& param, const char* name) {
  require_cuda(t, "adamw", name);
  if (t.numel() != param.numel())
    throw Error("adamw", "shapes", "param, grad, m and v of one size",
                shape_str(param.shape()) + ", " + name + " " + shape_str(t.shape()));
}

}  // namespace

void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWStep& s,
                Tensor* copy) {
  require_cuda(param, "adamw", "param");
  check_state(grad, param, "grad");
  check_state(m, param, "m");
  check_state(v, param, "v");
  if (copy != nullptr) check_state(*copy, param, "copy");
  for (const Tensor* t : {&param, &m, &v})
    if (t->dtype() != DType::F32)
      throw Error("adamw", "param, m and v dtype", "F32 (on the GPU)", dtype_name(t->dtype()));
  const int64_t n = param.numel();
  if (n == 0) return;
  const AdamWScalars scalars{float(s.lr),
                             float(s.beta1),
                             float(s.beta2),
                             float(s.eps),
                             float(s.weight_decay),
                             float(s.grad_scale),
                             float(1 / (1 - std::pow(s.beta1, double(s.step)))),
                             float(1 / (1 - std::pow(s.beta2, double(s.step))))};
  // Four elements at a time where every array allows (tensors inside flat buffers may not),
  // unless NH_KERNELS=adamw=scalar asks for one.
  bool vec = n % 4 == 0 && kernel_version("adamw") == 0;
  const Tensor* arrays[] = {&param, &grad, &m, &v, copy};
  for (const Tensor* t : arrays)
    if (t != nullptr)
      vec = vec && reinterpret_cast<uintptr_t>(t->raw()) % (4 * dtype_size(t->dtype())) == 0;
  const unsigned blocks =
      unsigned(std::min<int64_t>(blocks_for(vec ? n / 4 : n, kThreads), kMaxBlocks));
  with_gpu_float_type(grad.dtype(), [&](auto zero) {
    using G = decltype(zero);
    with_gpu_float_type(copy != nullptr ? copy->dtype() : DType::BF16, [&](auto czero) {
      using C = decltype(czero);
      C* out = copy != nullptr ? ptr<C>(*copy) : nullptr;
      if (vec)
        adamw_step_kernel<4><<<blocks, kThreads, 0, stream()>>>(
            ptr<float>(param), ptr<G>(grad), ptr<float>(m), ptr<float>(v), n, scalars, out);
      else
        adamw_step_kernel<1><<<blocks, kThreads, 0, stream()>>>(
            ptr<float>(param), ptr<G>(grad), ptr<float>(m), ptr<float>(v), n, scalars, out);
      NH_CUDA_CHECK_LAUNCH();
    });
  });
}

std::vector<double> sums_of_squares(const std::vector<Tensor>& ts) {
  // Each tensor's partials, then its total: one buffer, one read-back at the end.
  std::vector<int64_t> blocks, first;
  int64_t count = 0;
  for (const Tensor& t : ts) {
    require_cuda(t, "sums_of_squares", "t");
    first.push_back(count);
    blocks.push_back(std::clamp<int64_t>(blocks_for(t.numel(), kSumThreads), 1, kSumBlocks));
    count += blocks.back();
  }
  const int64_t n_tensors = int64_t(ts.size());
  Tensor buffer = Tensor::empty({count + n_tensors}, DType::F64, Device::CUDA);
  double* partials = ptr<double>(buffer);
  double* totals = partials + count;
  for (int64_t i = 0; i < n_tensors; ++i) {
    const Tensor& t = ts[size_t(i)];
    double* mine = partials + first[size_t(i)];
    with_gpu_float_type(t.dtype(), [&](auto zero) {
      using T = decltype(zero);
      // 16 bytes at a time where the tensor allows (the partition stays fixed).
      with_pack<T>(t.numel(), {&t}, [&](auto pack) {
        using P = decltype(pack);
        sum_of_squares_partial_kernel<<<unsigned(blocks[size_t(i)]), kSumThreads, 0, stream()>>>(
            static_cast<const P*>(t.raw()), t.numel() / P::kSize, mine);
        NH_CUDA_CHECK_LAUNCH();
      });
    });
    sum_partials_kernel<<<1, kSumThreads, 0, stream()>>>(mine, blocks[size_t(i)], totals + i);
    NH_CUDA_CHECK_LAUNCH();
  }
  std::vector<double> result(size_t(n_tensors), 0.0);
  if (n_tensors > 0) {
    NH_CUDA_CHECK(cudaMemcpyAsync(result.data(), totals, sizeof(double) * size_t(n_tensors),
                                  cudaMemcpyDeviceToHost, stream()));
    NH_CUDA_CHECK(cudaStreamSynchronize(stream()));
  }
  return result;
}

}  // namespace nh::cuda
