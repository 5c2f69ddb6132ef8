// RMSNorm on the GPU (the contract is in ops/rmsnorm.h, SPEC §1): storage in F32 or BF16,
// arithmetic, statistics and the dw sums in fp32. rstd is stored in F32 or in x's dtype (the
// value used by the forward is the stored one, so the backward sees what the forward used).
#include <algorithm>
#include <climits>
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/cuda/reduce.cuh"
#include "ops/rmsnorm.h"

namespace nh::cuda {

namespace {

// Elements per thread loaded together: a row is walked in tiles of kTile · blockDim.x, each
// tile's loads issued at once (a decode step normalises a single row, so its latency counts).
constexpr int kTile = 8;

// One block per row: with delta, first x += delta (rounded to T and stored); then
// rstd[row] = 1/sqrt(mean x² + eps), y = w · T(x · rstd). Each thread reads back only the
// elements it wrote.
template <class T, class R>
__global__ void rmsnorm_forward_kernel(T* __restrict__ x, const T* __restrict__ delta,
                                       const T* __restrict__ w, float eps, int64_t dim,
                                       T* __restrict__ y, R* __restrict__ rstd) {
  const int64_t row = blockIdx.x, tile = int64_t(kTile) * blockDim.x;
  T* xr = x + row * dim;
  T* yr = y + row * dim;
  float ss = 0.f;
  for (int64_t base = threadIdx.x; base < dim; base += tile) {
    float v[kTile];
#pragma unroll
    for (int i = 0; i < kTile; ++i) {
      const int64_t d = base + int64_t(i) * blockDim.x;
      v[i] = d < dim ? to_f32(xr[d]) : 0.f;
      if (delta && d < dim) v[i] += to_f32(delta[row * dim + d]);
    }
#pragma unroll
    for (int i = 0; i < kTile; ++i) {
      const int64_t d = base + int64_t(i) * blockDim.x;
      if (delta && d < dim) {
        const T sum = from_f32<T>(v[i]);
        xr[d] = sum;
        v[i] = to_f32(sum);
      }
      ss += v[i] * v[i];
    }
  }
  ss = block_sum(ss);
  const R stored = from_f32<R>(1.f / sqrtf(ss / float(dim) + eps));
  if (threadIdx.x == 0) rstd[row] = stored;
  const float rs = to_f32(stored);
  for (int64_t base = threadIdx.x; base < dim; base += tile) {
    float v[kTile], g[kTile];
#pragma unroll
    for (int i = 0; i < kTile; ++i) {
      const int64_t d = base + int64_t(i) * blockDim.x;
      v[i] = d < dim ? to_f32(xr[d]) : 0.f;
      g[i] = d < dim ? to_f32(w[d]) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < kTile; ++i) {
      const int64_t d = base + int64_t(i) * blockDim.x;
      if (d < dim) yr[d] = from_f32<T>(g[i] * to_f32(from_f32<T>(v[i] * rs)));
    }
  }
}

// One block per row: with n = x·rstd, dx = rstd · (dy·w − n · mean(dy·w·n)).
template <class T, class R>
__global__ void rmsnorm_backward_dx_kernel(const T* x, const T* w, const R* rstd, const T* dy,
                                           int64_t dim, T* dx) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * dim;
  const T* gr = dy + row * dim;
  T* dxr = dx + row * dim;
  const float rs = to_f32(rstd[row]);
  float dot = 0.f;
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x)
    dot += to_f32(gr[d]) * to_f32(w[d]) * (to_f32(xr[d]) * rs);
  const float mean = block_sum(dot) / float(dim);
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x)
    dxr[d] = from_f32<T>(rs * (to_f32(gr[d]) * to_f32(w[d]) - to_f32(xr[d]) * rs * mean));
}

// partial[chunk, d] = Σ over the chunk's rows, in order, of dy · T(x · rstd). Grid
// (column blocks, chunks), one thread per column: loads are coalesced along the row.
template <class T, class R>
__global__ void rmsnorm_dw_partial_kernel(const T* x, const R* rstd, const T* dy, int64_t rows,
                                          int64_t dim, int64_t rows_per_chunk, float* partial) {
  const int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (d >= dim) return;
  const int64_t r0 = blockIdx.y * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
  float acc = 0.f;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i = r * dim + d;
    acc += to_f32(dy[i]) * to_f32(from_f32<T>(to_f32(x[i]) * to_f32(rstd[r])));
  }
  partial[blockIdx.y * dim + d] = acc;
}

// Threads for one block per row of `dim` elements: a warp multiple, at most 512.
int row_threads(int64_t dim) { return int(std::min<int64_t>(512, (dim + 31) / 32 * 32)); }

void check(const Tensor& t, const Shape& shape, DType dtype, const std::string& what) {
  require_cuda(t, "rmsnorm", what.c_str());
  if (t.shape() != shape)
    throw Error("rmsnorm", what + " shape", shape_str(shape), shape_str(t.shape()));
  if (t.dtype() != dtype)
    throw Error("rmsnorm", what + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

// Checks x [R, D], w [D] and rstd (R elements, F32 or x's dtype); returns R.
int64_t check_rmsnorm(const Tensor& x, const Tensor& w, const Tensor& rstd) {
  require_cuda(x, "rmsnorm", "x");
  require_cuda(rstd, "rmsnorm", "rstd");
  if (x.ndim() < 1 || x.size(-1) == 0)
    throw Error("rmsnorm", "x shape", "[..., D] with D > 0", shape_str(x.shape()));
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  check(w, {dim}, x.dtype(), "w");
  if (rstd.numel() != rows)
    throw Error("rmsnorm", "rstd shape", std::to_string(rows) + " elements (one per row)",
                shape_str(rstd.shape()));
  if (rstd.dtype() != x.dtype() && rstd.dtype() != DType::F32)
    throw Error("rmsnorm", "rstd dtype", std::string("F32 or ") + dtype_name(x.dtype()),
                dtype_name(rstd.dtype()));
  if (rows > INT_MAX) throw Error("rmsnorm", "rows", "at most 2^31 - 1", std::to_string(rows));
  return rows;
}

}  // namespace

namespace {

// rmsnorm_forward of x, after x += delta when delta is defined.
void launch_forward(const Tensor& x, const Tensor& delta, const Tensor& w, double eps, Tensor& y,
                    Tensor& rstd) {
  const int64_t rows = check_rmsnorm(x, w, rstd);
  check(y, x.shape(), x.dtype(), "y");
  if (delta.defined()) check(delta, x.shape(), x.dtype(), "delta");
  if (rows == 0) return;
  const int64_t dim = x.size(-1);
  with_norm_types(x, rstd, [&](auto t, auto r) {
    using T = decltype(t);
    using R = decltype(r);
    rmsnorm_forward_kernel<T, R><<<unsigned(rows), row_threads(dim), 0, stream()>>>(
        ptr<T>(x), delta.defined() ? ptr<T>(delta) : nullptr, ptr<T>(w), float(eps), dim,
        ptr<T>(y), ptr<R>(rstd));
    NH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) {
  launch_forward(x, Tensor(), w, eps, y, rstd);
}

void add_rmsnorm_forward(Tensor& x, const Tensor& delta, const Tensor& w, double eps, Tensor& y,
                         Tensor& rstd) {
  launch_forward(x, delta, w, eps, y, rstd);
}

void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                      Tensor& dx, Tensor& dw) {
  const int64_t rows = check_rmsnorm(x, w, rstd);
  check(dy, x.shape(), x.dtype(), "dy");
  check(dx, x.shape(), x.dtype(), "dx");
  check(dw, w.shape(), x.dtype(), "dw");
  if (rows == 0) return;
  const int64_t dim = x.size(-1);
  // dw in two stages: per-chunk column sums, then a fixed-order sum of the chunks. The chunking
  // depends only on the shape, so dw is the same on every run and every GPU.
  const int64_t rows_per_chunk = std::max<int64_t>(32, (rows + 255) / 256);
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  Tensor partial = Tensor::empty({chunks, dim}, DType::F32, Device::CUDA);
  constexpr int kThreads = 256;
  with_norm_types(x, rstd, [&](auto t, auto r) {
    using T = decltype(t);
    using R = decltype(r);
    rmsnorm_backward_dx_kernel<T, R><<<unsigned(rows), row_threads(dim), 0, stream()>>>(
        ptr<T>(x), ptr<T>(w), ptr<R>(rstd), ptr<T>(dy), dim, ptr<T>(dx));
    NH_CUDA_CHECK_LAUNCH();
    const dim3 grid(blocks_for(dim, kThreads), unsigned(chunks));
    rmsnorm_dw_partial_kernel<T, R><<<grid, kThreads, 0, stream()>>>(
        ptr<T>(x), ptr<R>(rstd), ptr<T>(dy), rows, dim, rows_per_chunk, ptr<float>(partial));
    NH_CUDA_CHECK_LAUNCH();
    add_partial_sums_kernel<T><<<blocks_for(dim, kThreads), kThreads, 0, stream()>>>(
        ptr<float>(partial), chunks, dim, ptr<T>(dw));
    NH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace nh::cuda
