// RMSNorm on the GPU (the contract is in ops/rmsnorm.h, SPEC §1): storage in F32 or BF16,
// arithmetic, statistics and the dw sums in fp32. rstd is stored in F32 or in x's dtype (the
// value used by the forward is the stored one, so the backward sees what the forward used).
#include <algorithm>
#include <climits>
#include <string>

#include "core/kernel_versions.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/reduce.cuh"
#include "ops/rmsnorm.h"

namespace nh::cuda {

namespace {

// One block per row, threads taking packs of kVec elements (16 bytes where the row length and
// alignment allow): with delta, first x += delta (rounded to T and stored); then
// rstd[row] = 1/sqrt(mean x² + eps), y = w · T(x · rstd). Each thread reads back only the
// packs it wrote.
template <class T, class R, int kVec>
__global__ void rmsnorm_forward_kernel(T* __restrict__ x, const T* __restrict__ delta,
                                       const T* __restrict__ w, float eps, int64_t dim,
                                       T* __restrict__ y, R* __restrict__ rstd) {
  using P = Pack<T, kVec>;
  const int64_t row = blockIdx.x, packs = dim / kVec;
  P* xr = reinterpret_cast<P*>(x + row * dim);
  const P* dr = delta ? reinterpret_cast<const P*>(delta + row * dim) : nullptr;
  const P* wp = reinterpret_cast<const P*>(w);
  P* yr = reinterpret_cast<P*>(y + row * dim);
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < packs; c += blockDim.x) {
    P v = xr[c];
    if (dr) {
      const P dv = dr[c];
#pragma unroll
      for (int k = 0; k < kVec; ++k) v.v[k] = from_f32<T>(to_f32(v.v[k]) + to_f32(dv.v[k]));
      xr[c] = v;
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) ss += to_f32(v.v[k]) * to_f32(v.v[k]);
  }
  ss = block_sum(ss);
  const R stored = from_f32<R>(1.f / sqrtf(ss / float(dim) + eps));
  if (threadIdx.x == 0) rstd[row] = stored;
  const float rs = to_f32(stored);
  for (int64_t c = threadIdx.x; c < packs; c += blockDim.x) {
    const P v = xr[c], g = wp[c];
    P out;
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      out.v[k] = from_f32<T>(to_f32(g.v[k]) * to_f32(from_f32<T>(to_f32(v.v[k]) * rs)));
    yr[c] = out;
  }
}

// One block per row, packs of kVec elements: with n = x·rstd,
// dx = rstd · (dy·w − n · mean(dy·w·n)).
template <class T, class R, int kVec>
__global__ void rmsnorm_backward_dx_kernel(const T* x, const T* w, const R* rstd, const T* dy,
                                           int64_t dim, T* dx) {
  using P = Pack<T, kVec>;
  const int64_t row = blockIdx.x, packs = dim / kVec;
  const P* xr = reinterpret_cast<const P*>(x + row * dim);
  const P* gr = reinterpret_cast<const P*>(dy + row * dim);
  const P* wp = reinterpret_cast<const P*>(w);
  P* dxr = reinterpret_cast<P*>(dx + row * dim);
  const float rs = to_f32(rstd[row]);
  float dot = 0.f;
  for (int64_t c = threadIdx.x; c < packs; c += blockDim.x) {
    const P xv = xr[c], gv = gr[c], wv = wp[c];
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      dot += to_f32(gv.v[k]) * to_f32(wv.v[k]) * (to_f32(xv.v[k]) * rs);
  }
  const float mean = block_sum(dot) / float(dim);
  for (int64_t c = threadIdx.x; c < packs; c += blockDim.x) {
    const P xv = xr[c], gv = gr[c], wv = wp[c];
    P out;
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      out.v[k] = from_f32<T>(
          rs * (to_f32(gv.v[k]) * to_f32(wv.v[k]) - to_f32(xv.v[k]) * rs * mean));
    dxr[c] = out;
  }
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

// Threads for one block per row of `n` packs: a warp multiple, at most 512.
int row_threads(int64_t n) { return int(std::min<int64_t>(512, (n + 31) / 32 * 32)); }

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
    const Tensor* d = delta.defined() ? &delta : &x;  // x stands in: its alignment is checked
    with_pack<T>(dim, {&x, d, &w, &y}, [&](auto pack) {
      constexpr int kVec = decltype(pack)::kSize;
      rmsnorm_forward_kernel<T, R, kVec><<<unsigned(rows), row_threads(dim / kVec), 0, stream()>>>(
          ptr<T>(x), delta.defined() ? ptr<T>(delta) : nullptr, ptr<T>(w), float(eps), dim,
          ptr<T>(y), ptr<R>(rstd));
      NH_CUDA_CHECK_LAUNCH();
    }, kernel_version("rmsnorm") == 0);
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
    with_pack<T>(dim, {&x, &w, &dy, &dx}, [&](auto pack) {
      constexpr int kVec = decltype(pack)::kSize;
      rmsnorm_backward_dx_kernel<T, R, kVec>
          <<<unsigned(rows), row_threads(dim / kVec), 0, stream()>>>(
              ptr<T>(x), ptr<T>(w), ptr<R>(rstd), ptr<T>(dy), dim, ptr<T>(dx));
      NH_CUDA_CHECK_LAUNCH();
    }, kernel_version("rmsnorm") == 0);
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
