// CPU decoding steps of the Mamba-2 mixer (SPEC §2): conv1d_step sums its taps in double in the
// order causal_conv1d_forward does, and ssd_step runs the update of ssd_recurrence_forward in T,
// so a prompt decoded token by token gives what the sequence ops give.
#include "ops/cpu/mamba_step.h"

#include <cmath>
#include <string>

#include "ops/cpu/parallel.h"
#include "ops/dispatch.h"

namespace nh::cpu {

namespace {

void check_dtype(const char* op, const Tensor& t, DType dtype, const std::string& what) {
  if (t.dtype() != dtype)
    throw Error(op, what + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

void check(const char* op, const Tensor& t, const Shape& shape, DType dtype,
           const std::string& what) {
  if (t.shape() != shape) throw Error(op, what + " shape", shape_str(shape), shape_str(t.shape()));
  check_dtype(op, t, dtype, what);
}

}  // namespace

void conv1d_step(const Tensor& x, Tensor& conv_state, const Tensor& w, const Tensor& bias,
                 Tensor& y) {
  if (x.ndim() != 2) throw Error("conv1d_step", "x shape", "[B, C]", shape_str(x.shape()));
  const int64_t batch = x.size(0), channels = x.size(1);
  if (w.ndim() != 2 || w.size(0) != channels || w.size(1) < 1)
    throw Error("conv1d_step", "w shape", "[C, K] with C = " + std::to_string(channels),
                shape_str(w.shape()));
  const int64_t kernel = w.size(1), hist = kernel - 1;
  check_dtype("conv1d_step", w, x.dtype(), "w");
  check("conv1d_step", conv_state, {batch, channels, hist}, x.dtype(), "conv_state");
  if (bias.defined()) check("conv1d_step", bias, {channels}, x.dtype(), "bias");
  check("conv1d_step", y, x.shape(), x.dtype(), "y");
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.data<T>();
    const T* wp = w.data<T>();
    const T* bs = bias.defined() ? bias.data<T>() : nullptr;
    T* sp = conv_state.data<T>();
    T* yp = y.data<T>();
#pragma omp parallel for if (batch * channels * kernel >= kMinParallelWork)
    for (int64_t bc = 0; bc < batch * channels; ++bc) {
      const int64_t c = bc % channels;
      const T* wc = wp + c * kernel;
      T* s = sp + bc * hist;
      double pre = bs ? double(bs[c]) : 0.0;
      for (int64_t j = 0; j < hist; ++j) pre += double(wc[j]) * s[j];
      pre += double(wc[hist]) * xp[bc];
      for (int64_t j = 0; j + 1 < hist; ++j) s[j] = s[j + 1];
      if (hist > 0) s[hist - 1] = xp[bc];
      yp[bc] = T(pre / (1 + std::exp(-pre)));
    }
  });
}

void ssd_step(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
              const Tensor& Cm, const Tensor& D, Tensor& state, Tensor& y) {
  if (x.ndim() != 3) throw Error("ssd_step", "x shape", "[B, H, P]", shape_str(x.shape()));
  if (Bm.ndim() != 3) throw Error("ssd_step", "Bm shape", "[B, G, N]", shape_str(Bm.shape()));
  const int64_t batch = x.size(0), heads = x.size(1), P = x.size(2);
  const int64_t groups = Bm.size(1), N = Bm.size(2);
  if (groups < 1 || heads % groups != 0)
    throw Error("ssd_step", "n_groups", "a divisor of H = " + std::to_string(heads),
                std::to_string(groups));
  const DType f = x.dtype();
  check("ssd_step", Bm, {batch, groups, N}, f, "Bm");
  check("ssd_step", Cm, {batch, groups, N}, f, "Cm");
  check("ssd_step", dt, {batch, heads}, f, "dt");
  check("ssd_step", A, {heads}, f, "A");
  if (D.defined()) check("ssd_step", D, {heads}, f, "D");
  check("ssd_step", state, {batch, heads, P, N}, f, "state");
  check("ssd_step", y, x.shape(), f, "y");
  const int64_t heads_per_group = heads / groups;
  with_float_type(f, [&](auto zero) {
    using T = decltype(zero);
#pragma omp parallel for if (batch * heads * P * N >= kMinParallelWork)
    for (int64_t bh = 0; bh < batch * heads; ++bh) {
      const int64_t b = bh / heads, h = bh % heads, bg = b * groups + h / heads_per_group;
      const T *xh = x.data<T>() + bh * P, *Bg = Bm.data<T>() + bg * N, *Cg = Cm.data<T>() + bg * N;
      const T dtv = dt.data<T>()[bh], decay = std::exp(dtv * A.data<T>()[h]);
      const T d = D.defined() ? D.data<T>()[h] : T(0);
      T* S = state.data<T>() + bh * P * N;
      T* yh = y.data<T>() + bh * P;
      for (int64_t p = 0; p < P; ++p) {
        T acc = 0;
        for (int64_t n = 0; n < N; ++n) {
          T& s = S[p * N + n];
          s = decay * s + dtv * xh[p] * Bg[n];
          acc += s * Cg[n];
        }
        yh[p] = acc + d * xh[p];
      }
    }
  });
}

}  // namespace nh::cpu
