// Gated grouped RMSNorm on the GPU (the contract is in ops/gated_rmsnorm.h, SPEC §2): storage in
// F32 or BF16; the gate g = x·silu(z), the statistics, the gradients and the dw sums in fp32.
// As in the reference (and the CPU version) the normalised g·rstd is rounded to the storage
// type before the multiply by w. rstd is stored in F32 or in x's dtype; the forward uses the
// stored value, so the backward sees what the forward used.
#include <algorithm>
#include <climits>
#include <string>

#include "core/kernel_versions.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/reduce.cuh"
#include "ops/gated_rmsnorm.h"

namespace nh::cuda {

namespace {

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

// The gate x·silu(z) of kVec elements.
template <class T, int kVec>
__device__ __forceinline__ void gates(const Pack<T, kVec>& x, const Pack<T, kVec>& z,
                                      float (&g)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const float zv = to_f32(z.v[k]);
    g[k] = to_f32(x.v[k]) * (zv * sigmoid(zv));
  }
}

// One block per (row, group) = blockIdx.x: rstd[row, group] = 1/sqrt(mean g² + eps) over the
// group's channels, y = w · T(g · rstd). Threads take packs of kVec channels (16 bytes where the
// group size and alignment allow).
template <class T, class R, int kVec>
__global__ void gated_rmsnorm_forward_kernel(const T* __restrict__ x, const T* __restrict__ z,
                                             const T* __restrict__ w, float eps, int64_t channels,
                                             int64_t groups, T* __restrict__ y,
                                             R* __restrict__ rstd) {
  using P = Pack<T, kVec>;
  const int64_t group_size = channels / groups, packs = group_size / kVec;
  const int64_t row = blockIdx.x / groups, j = blockIdx.x % groups;
  const int64_t base = row * channels + j * group_size;
  const P* xp = reinterpret_cast<const P*>(x + base);
  const P* zp = reinterpret_cast<const P*>(z + base);
  const P* wp = reinterpret_cast<const P*>(w + j * group_size);
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < packs; c += blockDim.x) {
    float g[kVec];
    gates(xp[c], zp[c], g);
#pragma unroll
    for (int k = 0; k < kVec; ++k) ss += g[k] * g[k];
  }
  ss = block_sum(ss);
  const R stored = from_f32<R>(1.f / sqrtf(ss / float(group_size) + eps));
  if (threadIdx.x == 0) rstd[blockIdx.x] = stored;
  const float rs = to_f32(stored);
  P* yp = reinterpret_cast<P*>(y + base);
  for (int64_t c = threadIdx.x; c < packs; c += blockDim.x) {
    float g[kVec];
    gates(xp[c], zp[c], g);
    const P wv = wp[c];
    P out;
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      out.v[k] = from_f32<T>(to_f32(wv.v[k]) * to_f32(from_f32<T>(g[k] * rs)));
    yp[c] = out;
  }
}

// One block per (row, group): with n = g·rstd, dg = rstd · (dy·w − n · mean(dy·w·n)),
// dx = dg · silu(z), dz = dg · x · σ(z)(1 + z(1 − σ(z))). Packs of kVec channels as the forward.
template <class T, class R, int kVec>
__global__ void gated_rmsnorm_backward_dxdz_kernel(const T* x, const T* z, const T* w,
                                                   const R* rstd, const T* dy, int64_t channels,
                                                   int64_t groups, T* dx, T* dz) {
  using P = Pack<T, kVec>;
  const int64_t group_size = channels / groups, packs = group_size / kVec;
  const int64_t row = blockIdx.x / groups, j = blockIdx.x % groups;
  const int64_t base = row * channels + j * group_size;
  const P* xp = reinterpret_cast<const P*>(x + base);
  const P* zp = reinterpret_cast<const P*>(z + base);
  const P* dyp = reinterpret_cast<const P*>(dy + base);
  const P* wp = reinterpret_cast<const P*>(w + j * group_size);
  const float rs = to_f32(rstd[blockIdx.x]);
  float dot = 0.f;
  for (int64_t c = threadIdx.x; c < packs; c += blockDim.x) {
    float g[kVec];
    gates(xp[c], zp[c], g);
    const P dyv = dyp[c], wv = wp[c];
#pragma unroll
    for (int k = 0; k < kVec; ++k) dot += to_f32(dyv.v[k]) * to_f32(wv.v[k]) * (g[k] * rs);
  }
  const float mean = block_sum(dot) / float(group_size);
  P* dxp = reinterpret_cast<P*>(dx + base);
  P* dzp = reinterpret_cast<P*>(dz + base);
  for (int64_t c = threadIdx.x; c < packs; c += blockDim.x) {
    const P xv = xp[c], zv = zp[c], dyv = dyp[c], wv = wp[c];
    P dxo, dzo;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float xf = to_f32(xv.v[k]), zf = to_f32(zv.v[k]);
      const float s = sigmoid(zf), g = xf * (zf * s);
      const float dg = rs * (to_f32(dyv.v[k]) * to_f32(wv.v[k]) - g * rs * mean);
      dxo.v[k] = from_f32<T>(dg * zf * s);
      dzo.v[k] = from_f32<T>(dg * xf * s * (1.f + zf * (1.f - s)));
    }
    dxp[c] = dxo;
    dzp[c] = dzo;
  }
}

// partial[chunk, c] = Σ over the chunk's rows, in order, of dy · T(g · rstd[row, c's group]).
// Grid (channel blocks, chunks), one thread per channel: loads are coalesced along the row.
template <class T, class R>
__global__ void gated_rmsnorm_dw_partial_kernel(const T* x, const T* z, const R* rstd, const T* dy,
                                                int64_t rows, int64_t channels, int64_t groups,
                                                int64_t rows_per_chunk, float* partial) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= channels) return;
  const int64_t j = c / (channels / groups);
  const int64_t r0 = blockIdx.y * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
  float acc = 0.f;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i = r * channels + c;
    const float zv = to_f32(z[i]);
    const float g = to_f32(x[i]) * (zv * sigmoid(zv));
    acc += to_f32(dy[i]) * to_f32(from_f32<T>(g * to_f32(rstd[r * groups + j])));
  }
  partial[blockIdx.y * channels + c] = acc;
}

// Threads for one block per group of `n` packs: a warp multiple, at most 512.
int group_threads(int64_t n) { return int(std::min<int64_t>(512, (n + 31) / 32 * 32)); }

void check(const Tensor& t, const Shape& shape, DType dtype, const std::string& what) {
  require_cuda(t, "gated_rmsnorm", what.c_str());
  if (t.shape() != shape)
    throw Error("gated_rmsnorm", what + " shape", shape_str(shape), shape_str(t.shape()));
  if (t.dtype() != dtype)
    throw Error("gated_rmsnorm", what + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

// Checks x, z [R, C], w [C], groups | C and rstd (R·groups elements, F32 or x's dtype);
// returns R.
int64_t check_gated(const Tensor& x, const Tensor& z, const Tensor& w, int64_t groups,
                    const Tensor& rstd) {
  require_cuda(x, "gated_rmsnorm", "x");
  require_cuda(rstd, "gated_rmsnorm", "rstd");
  if (x.ndim() < 1 || x.size(-1) == 0)
    throw Error("gated_rmsnorm", "x shape", "[..., C] with C > 0", shape_str(x.shape()));
  const int64_t channels = x.size(-1), rows = x.numel() / channels;
  if (groups < 1 || channels % groups != 0)
    throw Error("gated_rmsnorm", "groups", "a divisor of C = " + std::to_string(channels),
                std::to_string(groups));
  check(z, x.shape(), x.dtype(), "z");
  check(w, {channels}, x.dtype(), "w");
  if (rstd.numel() != rows * groups)
    throw Error("gated_rmsnorm", "rstd shape",
                "[" + std::to_string(rows) + ", " + std::to_string(groups) + "]",
                shape_str(rstd.shape()));
  if (rstd.dtype() != x.dtype() && rstd.dtype() != DType::F32)
    throw Error("gated_rmsnorm", "rstd dtype", std::string("F32 or ") + dtype_name(x.dtype()),
                dtype_name(rstd.dtype()));
  if (rows * groups > INT_MAX)
    throw Error("gated_rmsnorm", "rows · groups", "at most 2^31 - 1",
                std::to_string(rows * groups));
  return rows;
}

}  // namespace

void gated_rmsnorm_forward(const Tensor& x, const Tensor& z, const Tensor& w, int64_t groups,
                           double eps, Tensor& y, Tensor& rstd) {
  const int64_t rows = check_gated(x, z, w, groups, rstd);
  check(y, x.shape(), x.dtype(), "y");
  if (rows == 0) return;
  const int64_t channels = x.size(-1);
  with_norm_types(x, rstd, [&](auto t, auto r) {
    using T = decltype(t);
    using R = decltype(r);
    const int64_t group_size = channels / groups;
    with_pack<T>(group_size, {&x, &z, &w, &y}, [&](auto pack) {
      constexpr int kVec = decltype(pack)::kSize;
      gated_rmsnorm_forward_kernel<T, R, kVec>
          <<<unsigned(rows * groups), group_threads(group_size / kVec), 0, stream()>>>(
              ptr<T>(x), ptr<T>(z), ptr<T>(w), float(eps), channels, groups, ptr<T>(y),
              ptr<R>(rstd));
      NH_CUDA_CHECK_LAUNCH();
    }, kernel_version("gated_rmsnorm") == 0);
  });
}

void gated_rmsnorm_backward(const Tensor& x, const Tensor& z, const Tensor& w, int64_t groups,
                            const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor& dz,
                            Tensor& dw) {
  const int64_t rows = check_gated(x, z, w, groups, rstd);
  check(dy, x.shape(), x.dtype(), "dy");
  check(dx, x.shape(), x.dtype(), "dx");
  check(dz, x.shape(), x.dtype(), "dz");
  check(dw, w.shape(), x.dtype(), "dw");
  if (rows == 0) return;
  const int64_t channels = x.size(-1);
  // dw in two stages: per-chunk column sums, then a fixed-order sum of the chunks. The chunking
  // depends only on the shape, so dw is the same on every run and every GPU.
  const int64_t rows_per_chunk = std::max<int64_t>(32, (rows + 255) / 256);
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  Tensor partial = Tensor::empty({chunks, channels}, DType::F32, Device::CUDA);
  constexpr int kThreads = 256;
  with_norm_types(x, rstd, [&](auto t, auto r) {
    using T = decltype(t);
    using R = decltype(r);
    const int64_t group_size = channels / groups;
    with_pack<T>(group_size, {&x, &z, &w, &dy, &dx, &dz}, [&](auto pack) {
      constexpr int kVec = decltype(pack)::kSize;
      gated_rmsnorm_backward_dxdz_kernel<T, R, kVec>
          <<<unsigned(rows * groups), group_threads(group_size / kVec), 0, stream()>>>(
              ptr<T>(x), ptr<T>(z), ptr<T>(w), ptr<R>(rstd), ptr<T>(dy), channels, groups,
              ptr<T>(dx), ptr<T>(dz));
      NH_CUDA_CHECK_LAUNCH();
    }, kernel_version("gated_rmsnorm") == 0);
    const dim3 grid(blocks_for(channels, kThreads), unsigned(chunks));
    gated_rmsnorm_dw_partial_kernel<T, R>
        <<<grid, kThreads, 0, stream()>>>(ptr<T>(x), ptr<T>(z), ptr<R>(rstd), ptr<T>(dy), rows,
                                          channels, groups, rows_per_chunk, ptr<float>(partial));
    NH_CUDA_CHECK_LAUNCH();
    add_partial_sums_kernel<T><<<blocks_for(channels, kThreads), kThreads, 0, stream()>>>(
        ptr<float>(partial), chunks, channels, ptr<T>(dw));
    NH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace nh::cuda
