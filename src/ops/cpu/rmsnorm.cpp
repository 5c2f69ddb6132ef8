#include "ops/rmsnorm.h"

#include <algorithm>
#include <cmath>
#include <string>
#include "ops/cpu/parallel.h"
#include "ops/elementwise.h"

namespace nh::cpu {

namespace {

void check(const Tensor& t, const Shape& shape, DType dtype, const std::string& what) {
  if (t.shape() != shape)
    throw Error("rmsnorm", what + " shape", shape_str(shape), shape_str(t.shape()));
  if (t.dtype() != dtype)
    throw Error("rmsnorm", what + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

// Checks x [R, D], w [D] and rstd (R elements, any shape); returns R.
int64_t check_rmsnorm(const Tensor& x, const Tensor& w, const Tensor& rstd) {
  if (x.ndim() < 1 || x.size(-1) == 0)
    throw Error("rmsnorm", "x shape", "[..., D] with D > 0", shape_str(x.shape()));
  const int64_t dim = x.size(-1), rows = x.numel() / dim;
  check(w, {dim}, x.dtype(), "w");
  if (rstd.numel() != rows)
    throw Error("rmsnorm", "rstd shape", std::to_string(rows) + " elements (one per row)",
                shape_str(rstd.shape()));
  if (rstd.dtype() != x.dtype())
    throw Error("rmsnorm", "rstd dtype", dtype_name(x.dtype()), dtype_name(rstd.dtype()));
  return rows;
}

}  // namespace

// x [R, D], w [D] -> y [R, D], rstd [R]. The sum of squares is accumulated in double; SPEC §1:
// the normalised value x·rstd is rounded to the input type before the multiply by w.
void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) {
  const int64_t rows = check_rmsnorm(x, w, rstd);
  check(y, x.shape(), x.dtype(), "y");
  const int64_t dim = x.size(-1);
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.data<T>();
    const T* wp = w.data<T>();
    T* yp = y.data<T>();
    T* rp = rstd.data<T>();
#pragma omp parallel for if (rows * dim >= kMinParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * dim;
      double ss = 0;
      for (int64_t d = 0; d < dim; ++d) ss += double(xr[d]) * double(xr[d]);
      const T rs = T(1.0 / std::sqrt(ss / double(dim) + eps));
      rp[r] = rs;
      T* yr = yp + r * dim;
      for (int64_t d = 0; d < dim; ++d) yr[d] = wp[d] * T(xr[d] * rs);
    }
  });
}

void add_rmsnorm_forward(Tensor& x, const Tensor& delta, const Tensor& w, double eps, Tensor& y,
                         Tensor& rstd) {
  check(delta, x.shape(), x.dtype(), "delta");
  cpu::add_inplace(x, delta);
  cpu::rmsnorm_forward(x, w, eps, y, rstd);
}

// x, dy [R, D], w [D], rstd [R] -> dx [R, D] (overwritten), dw [D] (accumulated).
// With n = x·rstd: dx = rstd · (dy·w − n · mean_d(dy·w·n)), dw += Σ_r dy·n; sums in double.
void rmsnorm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                      Tensor& dx, Tensor& dw) {
  const int64_t rows = check_rmsnorm(x, w, rstd);
  check(dy, x.shape(), x.dtype(), "dy");
  check(dx, x.shape(), x.dtype(), "dx");
  check(dw, w.shape(), x.dtype(), "dw");
  const int64_t dim = x.size(-1);
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.data<T>();
    const T* wp = w.data<T>();
    const T* rp = rstd.data<T>();
    const T* gp = dy.data<T>();
    T* dxp = dx.data<T>();
    T* dwp = dw.data<T>();
#pragma omp parallel for if (rows * dim >= kMinParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * dim;
      const T* gr = gp + r * dim;
      const double rs = rp[r];
      double dot = 0;
      for (int64_t d = 0; d < dim; ++d) dot += double(gr[d]) * wp[d] * (xr[d] * rs);
      const double mean = dot / double(dim);
      T* dxr = dxp + r * dim;
      for (int64_t d = 0; d < dim; ++d)
        dxr[d] = T(rs * (double(gr[d]) * wp[d] - xr[d] * rs * mean));
    }
    // Threads own blocks of columns, so each dw element sums its rows in order: the result does
    // not depend on the thread count.
    constexpr int64_t block = 64;
#pragma omp parallel for if (rows * dim >= kMinParallelWork)
    for (int64_t d0 = 0; d0 < dim; d0 += block) {
      const int64_t width = std::min(block, dim - d0);
      double acc[block] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const T* xr = xp + r * dim + d0;
        const T* gr = gp + r * dim + d0;
        for (int64_t d = 0; d < width; ++d) acc[d] += double(gr[d]) * T(xr[d] * rp[r]);
      }
      for (int64_t d = 0; d < width; ++d) dwp[d0 + d] += T(acc[d]);
    }
  });
}

}  // namespace nh::cpu
