#include "ops/mamba_dt.h"

#include <cmath>

namespace nh::cpu {

namespace {
template <class T>
T softplus(T x) {
  return x > T(20) ? x : std::log1p(std::exp(x));
}

void check_dt(const Tensor& dt_raw, const Tensor& dt_bias) {
  const int64_t h = dt_bias.numel();
  if (dt_bias.ndim() != 1 || dt_raw.size(-1) != h)
    throw Error("mamba_dt", "shapes", "dt_raw [T, H] and dt_bias [H]",
                shape_str(dt_raw.shape()) + ", " + shape_str(dt_bias.shape()));
}
}  // namespace

void mamba_dt_forward(const Tensor& dt_raw, const Tensor& dt_bias, double lo, double hi,
                      Tensor& dt) {
  check_dt(dt_raw, dt_bias);
  with_float_type(dt_raw.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const int64_t h = dt_bias.numel(), n = dt_raw.numel();
    const T *x = dt_raw.data<T>(), *b = dt_bias.data<T>();
    T* y = dt.data<T>();
    for (int64_t i = 0; i < n; ++i)
      y[i] = std::min(std::max(softplus(x[i] + b[i % h]), T(lo)), T(hi));
  });
}

void mamba_dt_backward(const Tensor& dt_raw, const Tensor& dt_bias, double lo, double hi,
                       const Tensor& ddt, Tensor& ddt_raw, Tensor& ddt_bias) {
  check_dt(dt_raw, dt_bias);
  with_float_type(dt_raw.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const int64_t h = dt_bias.numel(), n = dt_raw.numel();
    const T *x = dt_raw.data<T>(), *b = dt_bias.data<T>(), *g = ddt.data<T>();
    T* gx = ddt_raw.data<T>();
    T* gb = ddt_bias.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      const T v = x[i] + b[i % h];
      const T sp = softplus(v);
      // torch.clamp passes the gradient where lo <= value <= hi (inclusive).
      const bool pass = sp >= T(lo) && sp <= T(hi);
      const T dsp = v > T(20) ? T(1) : T(1) / (T(1) + std::exp(-v));
      gx[i] = pass ? g[i] * dsp : T(0);
      gb[i % h] += gx[i];
    }
  });
}

void mamba_a_forward(const Tensor& A_log, Tensor& A) {
  with_float_type(A_log.dtype(), [&](auto zero) {
    using T = decltype(zero);
    for (int64_t i = 0; i < A_log.numel(); ++i) A.data<T>()[i] = -std::exp(A_log.data<T>()[i]);
  });
}

void mamba_a_backward(const Tensor& A, const Tensor& dA, Tensor& dA_log) {
  with_float_type(A.dtype(), [&](auto zero) {
    using T = decltype(zero);
    for (int64_t i = 0; i < A.numel(); ++i) dA_log.data<T>()[i] += dA.data<T>()[i] * A.data<T>()[i];
  });
}

}  // namespace nh::cpu
