#include "ops/gated_rmsnorm.h"

#include <algorithm>
#include <cmath>
#include <string>
#include "ops/cpu/parallel.h"

namespace nh::cpu {

namespace {

template <class T>
T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

void check(const Tensor& t, const Shape& shape, DType dtype, const std::string& what) {
  if (t.shape() != shape)
    throw Error("gated_rmsnorm", what + " shape", shape_str(shape), shape_str(t.shape()));
  if (t.dtype() != dtype)
    throw Error("gated_rmsnorm", what + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

// Checks x, z [R, C], w [C], groups | C and rstd (R·groups elements); returns R.
int64_t check_gated(const Tensor& x, const Tensor& z, const Tensor& w, int64_t groups,
                    const Tensor& rstd) {
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
  if (rstd.dtype() != x.dtype())
    throw Error("gated_rmsnorm", "rstd dtype", dtype_name(x.dtype()), dtype_name(rstd.dtype()));
  return rows;
}

}  // namespace

// x, z [R, C], w [C] -> y [R, C], rstd [R, groups]. g = x·silu(z) in T, sums of squares in
// double; the normalised g·rstd is rounded to T before the multiply by w, as in the reference.
void gated_rmsnorm_forward(const Tensor& x, const Tensor& z, const Tensor& w, int64_t groups,
                           double eps, Tensor& y, Tensor& rstd) {
  const int64_t rows = check_gated(x, z, w, groups, rstd);
  check(y, x.shape(), x.dtype(), "y");
  const int64_t channels = x.size(-1), group_size = channels / groups;
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.data<T>();
    const T* zp = z.data<T>();
    const T* wp = w.data<T>();
    T* yp = y.data<T>();
    T* rp = rstd.data<T>();
#pragma omp parallel for if (rows * channels >= kMinParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * channels;
      const T* zr = zp + r * channels;
      T* yr = yp + r * channels;
      // y holds g until each group's rstd is known.
      for (int64_t c = 0; c < channels; ++c) yr[c] = xr[c] * (zr[c] * sigmoid(zr[c]));
      for (int64_t j = 0; j < groups; ++j) {
        T* gj = yr + j * group_size;
        const T* wj = wp + j * group_size;
        double ss = 0;
        for (int64_t c = 0; c < group_size; ++c) ss += double(gj[c]) * double(gj[c]);
        const T rs = T(1.0 / std::sqrt(ss / double(group_size) + eps));
        rp[r * groups + j] = rs;
        for (int64_t c = 0; c < group_size; ++c) gj[c] = wj[c] * T(gj[c] * rs);
      }
    }
  });
}

// x, z, dy [R, C], w [C], rstd [R, groups] -> dx, dz [R, C] (overwritten), dw [C] (accumulated).
// Per group, with n = g·rstd: dg = rstd · (dy·w − n · mean(dy·w·n)); dx = dg·silu(z),
// dz = dg·x·silu'(z), silu'(z) = σ(z)(1 + z(1 − σ(z))); dw += Σ_r dy·n. Sums in double.
void gated_rmsnorm_backward(const Tensor& x, const Tensor& z, const Tensor& w, int64_t groups,
                            const Tensor& rstd, const Tensor& dy, Tensor& dx, Tensor& dz,
                            Tensor& dw) {
  const int64_t rows = check_gated(x, z, w, groups, rstd);
  check(dy, x.shape(), x.dtype(), "dy");
  check(dx, x.shape(), x.dtype(), "dx");
  check(dz, x.shape(), x.dtype(), "dz");
  check(dw, w.shape(), x.dtype(), "dw");
  const int64_t channels = x.size(-1), group_size = channels / groups;
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.data<T>();
    const T* zp = z.data<T>();
    const T* wp = w.data<T>();
    const T* rp = rstd.data<T>();
    const T* gp = dy.data<T>();
    T* dxp = dx.data<T>();
    T* dzp = dz.data<T>();
    T* dwp = dw.data<T>();
#pragma omp parallel for if (rows * channels >= kMinParallelWork)
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < groups; ++j) {
        const int64_t base = r * channels + j * group_size;
        const T* xj = xp + base;
        const T* zj = zp + base;
        const T* wj = wp + j * group_size;
        const T* dyj = gp + base;
        const double rs = rp[r * groups + j];
        double dot = 0;
        for (int64_t c = 0; c < group_size; ++c) {
          const double g = double(xj[c]) * zj[c] * sigmoid(double(zj[c]));
          dot += double(dyj[c]) * wj[c] * g * rs;
        }
        const double mean = dot / double(group_size);
        for (int64_t c = 0; c < group_size; ++c) {
          const double s = sigmoid(double(zj[c]));
          const double g = double(xj[c]) * zj[c] * s;
          const double dg = rs * (double(dyj[c]) * wj[c] - g * rs * mean);
          dxp[base + c] = T(dg * zj[c] * s);
          dzp[base + c] = T(dg * xj[c] * s * (1 + zj[c] * (1 - s)));
        }
      }
    }
    // Threads own blocks of columns, so each dw element sums its rows in order: the result does
    // not depend on the thread count.
    constexpr int64_t block = 64;
#pragma omp parallel for if (rows * channels >= kMinParallelWork)
    for (int64_t c0 = 0; c0 < channels; c0 += block) {
      const int64_t width = std::min(block, channels - c0);
      double acc[block] = {};
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < width; ++c) {
          const int64_t i = r * channels + c0 + c;
          const T g = xp[i] * (zp[i] * sigmoid(zp[i]));
          acc[c] += double(gp[i]) * T(g * rp[r * groups + (c0 + c) / group_size]);
        }
      }
      for (int64_t c = 0; c < width; ++c) dwp[c0 + c] += T(acc[c]);
    }
  });
}

}  // namespace nh::cpu
