#include "ops/causal_conv1d.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>
#include "ops/cpu/parallel.h"

namespace nh::cpu {

namespace {

void check(const Tensor& t, const Shape& shape, DType dtype, const std::string& what) {
  if (t.shape() != shape)
    throw Error("causal_conv1d", what + " shape", shape_str(shape), shape_str(t.shape()));
  if (t.dtype() != dtype)
    throw Error("causal_conv1d", what + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

// x [B, S, C], w [C, K], bias [C] when defined, seq_idx I32 [B, S] when defined.
void check_conv(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& seq_idx) {
  if (x.ndim() != 3) throw Error("causal_conv1d", "x shape", "[B, S, C]", shape_str(x.shape()));
  if (w.ndim() != 2 || w.size(0) != x.size(2) || w.size(1) < 1)
    throw Error("causal_conv1d", "w shape", "[C, K] with C = " + std::to_string(x.size(2)),
                shape_str(w.shape()));
  if (w.dtype() != x.dtype())
    throw Error("causal_conv1d", "w dtype", dtype_name(x.dtype()), dtype_name(w.dtype()));
  if (bias.defined()) check(bias, {x.size(2)}, x.dtype(), "bias");
  if (seq_idx.defined()) check(seq_idx, {x.size(0), x.size(1)}, DType::I32, "seq_idx");
}

// The conv without its SiLU for token (b, t): all C channels into out.
template <class T>
void pre_activation(const T* x, const T* w, const T* bias, const int32_t* seq, int64_t b, int64_t t,
                    int64_t seq_len, int64_t channels, int64_t kernel, double* out) {
  for (int64_t c = 0; c < channels; ++c) out[c] = bias ? double(bias[c]) : 0.0;
  const int64_t row = b * seq_len;
  for (int64_t j = 0; j < kernel; ++j) {
    const int64_t p = t - kernel + 1 + j;
    if (p < 0 || (seq && seq[row + p] != seq[row + t])) continue;
    const T* xp = x + (row + p) * channels;
    for (int64_t c = 0; c < channels; ++c) out[c] += double(w[c * kernel + j]) * xp[c];
  }
}

double sigmoid(double v) { return 1 / (1 + std::exp(-v)); }

}  // namespace

// x [B, S, C], w [C, K], bias [C] or undefined, seq_idx I32 [B, S] or undefined -> y [B, S, C].
// Taps are summed in double.
void causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                           const Tensor& seq_idx, Tensor& y) {
  check_conv(x, w, bias, seq_idx);
  check(y, x.shape(), x.dtype(), "y");
  const int64_t batch = x.size(0), seq_len = x.size(1), channels = x.size(2), kernel = w.size(1);
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.data<T>();
    const T* wp = w.data<T>();
    const T* bs = bias.defined() ? bias.data<T>() : nullptr;
    const int32_t* sp = seq_idx.defined() ? seq_idx.data<int32_t>() : nullptr;
    T* yp = y.data<T>();
#pragma omp parallel if (batch * seq_len * channels * kernel >= kMinParallelWork)
    {
      std::vector<double> pre(channels);
#pragma omp for
      for (int64_t bt = 0; bt < batch * seq_len; ++bt) {
        pre_activation(xp, wp, bs, sp, bt / seq_len, bt % seq_len, seq_len, channels, kernel,
                       pre.data());
        T* yr = yp + bt * channels;
        for (int64_t c = 0; c < channels; ++c) yr[c] = T(pre[c] * sigmoid(pre[c]));
      }
    }
  });
}

// dx [B, S, C] overwritten; dw [C, K] and dbias [C] accumulated, skipped when undefined.
// The pre-activation gradient is formed once in double, then each output is gathered by the
// thread that owns it, so sums run in a fixed order.
void causal_conv1d_backward(const Tensor& x, const Tensor& w, const Tensor& bias,
                            const Tensor& seq_idx, const Tensor& dy, Tensor& dx, Tensor& dw,
                            Tensor& dbias) {
  check_conv(x, w, bias, seq_idx);
  check(dy, x.shape(), x.dtype(), "dy");
  check(dx, x.shape(), x.dtype(), "dx");
  if (dw.defined()) check(dw, w.shape(), x.dtype(), "dw");
  if (dbias.defined()) check(dbias, {x.size(2)}, x.dtype(), "dbias");
  const int64_t batch = x.size(0), seq_len = x.size(1), channels = x.size(2), kernel = w.size(1);
  const int64_t tokens = batch * seq_len;
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.data<T>();
    const T* wp = w.data<T>();
    const T* bs = bias.defined() ? bias.data<T>() : nullptr;
    const int32_t* sp = seq_idx.defined() ? seq_idx.data<int32_t>() : nullptr;
    const T* gp = dy.data<T>();
    std::vector<double> dpre(tokens * channels);
#pragma omp parallel for if (tokens * channels >= kMinParallelWork)
    for (int64_t bt = 0; bt < tokens; ++bt) {
      double* d = dpre.data() + bt * channels;
      pre_activation(xp, wp, bs, sp, bt / seq_len, bt % seq_len, seq_len, channels, kernel, d);
      const T* gr = gp + bt * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const double s = sigmoid(d[c]);
        d[c] = double(gr[c]) * s * (1 + d[c] * (1 - s));
      }
    }

    // Token p feeds output t = p + K - 1 - j through tap j, when t is in the row and p in t's
    // document.
    T* dxp = dx.data<T>();
#pragma omp parallel if (tokens * channels * kernel >= kMinParallelWork)
    {
      std::vector<double> acc(channels);
#pragma omp for
      for (int64_t q = 0; q < tokens; ++q) {
        const int64_t row = q / seq_len * seq_len, p = q % seq_len;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = 0; j < kernel; ++j) {
          const int64_t t = p + kernel - 1 - j;
          if (t >= seq_len || (sp && sp[row + t] != sp[row + p])) continue;
          const double* d = dpre.data() + (row + t) * channels;
          for (int64_t c = 0; c < channels; ++c) acc[c] += d[c] * wp[c * kernel + j];
        }
        T* dxr = dxp + q * channels;
        for (int64_t c = 0; c < channels; ++c) dxr[c] = T(acc[c]);
      }
    }

    if (!dw.defined() && !dbias.defined()) return;
    T* dwp = dw.defined() ? dw.data<T>() : nullptr;
    T* dbp = dbias.defined() ? dbias.data<T>() : nullptr;
    // Threads own blocks of channels; within a block every sum runs over tokens in order.
    constexpr int64_t block = 16;
#pragma omp parallel if (tokens * channels * kernel >= kMinParallelWork)
    {
      std::vector<double> acc_w(block * kernel), acc_b(block);
#pragma omp for
      for (int64_t c0 = 0; c0 < channels; c0 += block) {
        const int64_t width = std::min(block, channels - c0);
        std::fill(acc_w.begin(), acc_w.end(), 0.0);
        std::fill(acc_b.begin(), acc_b.end(), 0.0);
        for (int64_t bt = 0; bt < tokens; ++bt) {
          const int64_t row = bt / seq_len * seq_len, t = bt % seq_len;
          const double* d = dpre.data() + bt * channels + c0;
          for (int64_t c = 0; c < width; ++c) acc_b[c] += d[c];
          for (int64_t j = 0; j < kernel; ++j) {
            const int64_t p = t - kernel + 1 + j;
            if (p < 0 || (sp && sp[row + p] != sp[row + t])) continue;
            const T* xr = xp + (row + p) * channels + c0;
            for (int64_t c = 0; c < width; ++c) acc_w[c * kernel + j] += d[c] * xr[c];
          }
        }
        for (int64_t c = 0; c < width; ++c) {
          if (dbp) dbp[c0 + c] += T(acc_b[c]);
          if (dwp)
            for (int64_t j = 0; j < kernel; ++j)
              dwp[(c0 + c) * kernel + j] += T(acc_w[c * kernel + j]);
        }
      }
    }
  });
}

}  // namespace nh::cpu
