// The Mamba-2 discretisation parameters on the GPU (ops/mamba_dt.h, SPEC §2): every tensor of
// one call in one dtype (F32 or BF16), fp32 arithmetic. The dt_bias gradient is a column sum
// over the T rows, made deterministic by a fixed partition: per-block partial sums over
// kRowsPerBlock rows, then the partials added in block order.
#include <algorithm>
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/mamba_dt.h"

namespace nh::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;
constexpr int kRowsPerBlock = 256;
constexpr int kColumnTile = 32;
constexpr int kRowLanes = 8;

// softplus as torch computes it: x above 20, log1p(exp(x)) otherwise.
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }

// dt[i] = clamp(softplus(dt_raw[i] + dt_bias[i % h]), lo, hi), grid-stride.
template <class T>
__global__ void mamba_dt_forward_kernel(const T* dt_raw, const T* dt_bias, float lo, float hi,
                                        T* dt, int64_t n, int64_t h) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float sp = softplus(to_f32(dt_raw[i]) + to_f32(dt_bias[i % h]));
    dt[i] = from_f32<T>(fminf(fmaxf(sp, lo), hi));
  }
}

// ddt_raw[t, c] = ddt[t, c] · softplus'(v) where lo <= softplus(v) <= hi (torch.clamp passes the
// gradient at the bounds too), 0 elsewhere; partial[blockIdx.y, c] = Σ of those over the block's
// rows, in fp32. Block (kColumnTile, kRowLanes): threadIdx.x a head, threadIdx.y strides rows.
template <class T>
__global__ void mamba_dt_backward_kernel(const T* dt_raw, const T* dt_bias, float lo, float hi,
                                         const T* ddt, T* ddt_raw, float* partial, int64_t rows,
                                         int64_t h) {
  __shared__ float lanes[kRowLanes][kColumnTile];
  const int64_t col = blockIdx.x * int64_t(kColumnTile) + threadIdx.x;
  const int64_t row0 = blockIdx.y * int64_t(kRowsPerBlock);
  const int64_t row1 = min(rows, row0 + kRowsPerBlock);
  float sum = 0.f;
  if (col < h) {
    const float bias = to_f32(dt_bias[col]);
    for (int64_t r = row0 + threadIdx.y; r < row1; r += kRowLanes) {
      const int64_t i = r * h + col;
      const float v = to_f32(dt_raw[i]) + bias;
      const float sp = softplus(v);
      const bool pass = sp >= lo && sp <= hi;
      const float dsp = v > 20.f ? 1.f : 1.f / (1.f + expf(-v));
      const float g = pass ? to_f32(ddt[i]) * dsp : 0.f;
      ddt_raw[i] = from_f32<T>(g);
      sum += g;
    }
  }
  lanes[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < h) {
    float total = 0.f;
    for (int lane = 0; lane < kRowLanes; ++lane) total += lanes[lane][threadIdx.x];
    partial[blockIdx.y * h + col] = total;
  }
}

// ddt_bias[c] += Σ_chunks partial[chunk, c], chunks in order; one thread per head.
template <class T>
__global__ void add_head_partials_kernel(const float* partial, int64_t chunks, int64_t h,
                                         T* ddt_bias) {
  const int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (col >= h) return;
  float total = 0.f;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partial[chunk * h + col];
  ddt_bias[col] = from_f32<T>(to_f32(ddt_bias[col]) + total);
}

// A[i] = -exp(A_log[i]).
template <class T>
__global__ void mamba_a_forward_kernel(const T* a_log, T* a, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    a[i] = from_f32<T>(-expf(to_f32(a_log[i])));
}

// dA_log[i] += dA[i] · A[i]  (d(-exp(x))/dx = -exp(x) = A).
template <class T>
__global__ void mamba_a_backward_kernel(const T* a, const T* da, T* da_log, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    da_log[i] = from_f32<T>(to_f32(da_log[i]) + to_f32(da[i]) * to_f32(a[i]));
}

void check_same(const Tensor& t, const Tensor& like, const Shape& shape, const char* op,
                const char* name) {
  require_cuda(t, op, name);
  if (t.shape() != shape)
    throw Error(op, std::string(name) + " shape", shape_str(shape), shape_str(t.shape()));
  if (t.dtype() != like.dtype())
    throw Error(op, std::string(name) + " dtype", dtype_name(like.dtype()), dtype_name(t.dtype()));
}

void check_dt(const Tensor& dt_raw, const Tensor& dt_bias) {
  const int64_t h = dt_bias.numel();
  if (dt_bias.ndim() != 1 || dt_raw.ndim() < 1 || dt_raw.size(-1) != h)
    throw Error("mamba_dt", "shapes", "dt_raw [T, H] and dt_bias [H]",
                shape_str(dt_raw.shape()) + ", " + shape_str(dt_bias.shape()));
  require_cuda(dt_raw, "mamba_dt", "dt_raw");
  check_same(dt_bias, dt_raw, dt_bias.shape(), "mamba_dt", "dt_bias");
}

unsigned grid_for(int64_t n) {
  return unsigned(std::min<int64_t>(blocks_for(n, kThreads), kMaxBlocks));
}

}  // namespace

void mamba_dt_forward(const Tensor& dt_raw, const Tensor& dt_bias, double lo, double hi,
                      Tensor& dt) {
  check_dt(dt_raw, dt_bias);
  check_same(dt, dt_raw, dt_raw.shape(), "mamba_dt", "dt");
  const int64_t n = dt_raw.numel(), h = dt_bias.numel();
  if (n == 0) return;
  with_gpu_float_type(dt_raw.dtype(), [&](auto zero) {
    using T = decltype(zero);
    mamba_dt_forward_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(
        ptr<T>(dt_raw), ptr<T>(dt_bias), float(lo), float(hi), ptr<T>(dt), n, h);
    NH_CUDA_CHECK_LAUNCH();
  });
}

void mamba_dt_backward(const Tensor& dt_raw, const Tensor& dt_bias, double lo, double hi,
                       const Tensor& ddt, Tensor& ddt_raw, Tensor& ddt_bias) {
  check_dt(dt_raw, dt_bias);
  check_same(ddt, dt_raw, dt_raw.shape(), "mamba_dt", "ddt");
  check_same(ddt_raw, dt_raw, dt_raw.shape(), "mamba_dt", "ddt_raw");
  check_same(ddt_bias, dt_raw, dt_bias.shape(), "mamba_dt", "ddt_bias");
  const int64_t h = dt_bias.numel(), rows = h ? dt_raw.numel() / h : 0;
  if (rows == 0 || h == 0) return;
  const int64_t chunks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  if (chunks > 65535)
    throw Error("mamba_dt", "rows", "at most " + std::to_string(65535LL * kRowsPerBlock),
                std::to_string(rows));
  Tensor partial = Tensor::empty({chunks, h}, DType::F32, Device::CUDA);
  with_gpu_float_type(dt_raw.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const dim3 grid(blocks_for(h, kColumnTile), unsigned(chunks));
    mamba_dt_backward_kernel<T><<<grid, dim3(kColumnTile, kRowLanes), 0, stream()>>>(
        ptr<T>(dt_raw), ptr<T>(dt_bias), float(lo), float(hi), ptr<T>(ddt), ptr<T>(ddt_raw),
        ptr<float>(partial), rows, h);
    NH_CUDA_CHECK_LAUNCH();
    add_head_partials_kernel<T><<<blocks_for(h, kThreads), kThreads, 0, stream()>>>(
        ptr<float>(partial), chunks, h, ptr<T>(ddt_bias));
    NH_CUDA_CHECK_LAUNCH();
  });
}

void mamba_a_forward(const Tensor& A_log, Tensor& A) {
  require_cuda(A_log, "mamba_a", "A_log");
  check_same(A, A_log, A_log.shape(), "mamba_a", "A");
  const int64_t n = A_log.numel();
  if (n == 0) return;
  with_gpu_float_type(A_log.dtype(), [&](auto zero) {
    using T = decltype(zero);
    mamba_a_forward_kernel<T><<<grid_for(n), kThreads, 0, stream()>>>(ptr<T>(A_log), ptr<T>(A), n);
    NH_CUDA_CHECK_LAUNCH();
  });
}

void mamba_a_backward(const Tensor& A, const Tensor& dA, Tensor& dA_log) {
  require_cuda(A, "mamba_a", "A");
  check_same(dA, A, A.shape(), "mamba_a", "dA");
  check_same(dA_log, A, A.shape(), "mamba_a", "dA_log");
  const int64_t n = A.numel();
  if (n == 0) return;
  with_gpu_float_type(A.dtype(), [&](auto zero) {
    using T = decltype(zero);
    mamba_a_backward_kernel<T>
        <<<grid_for(n), kThreads, 0, stream()>>>(ptr<T>(A), ptr<T>(dA), ptr<T>(dA_log), n);
    NH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace nh::cuda
