// Causal depthwise conv1d + SiLU on the GPU (the contract is in ops/causal_conv1d.h, SPEC §2):
// storage in F32 or BF16, taps, gradients and the dw/dbias sums in fp32. Channels are last, so
// consecutive threads on consecutive channels read and write whole rows of consecutive addresses.
#include <string>
#include <type_traits>

#include "ops/causal_conv1d.h"
#include "ops/cuda/common.cuh"

namespace nh::cuda {

namespace {

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

// Both kernels stream: a thread owns one channel of a run of kRun tokens of a batch row and
// walks them in order, holding the last K inputs (and their document ids) in registers, so each
// input is read once (plus K − 1 tokens of halo). K is a template parameter so that the windows
// stay in registers.
constexpr int kRun = 64;
constexpr int kMaxTaps = 8;

// Shifts a window one token left and puts v last.
template <int K, class V>
__device__ __forceinline__ void push(V (&win)[K], V v) {
#pragma unroll
  for (int i = 0; i + 1 < K; ++i) win[i] = win[i + 1];
  win[K - 1] = v;
}

// bias + Σ_j w[j] · x[t − K + 1 + j] over the taps in token t's document (the window's last).
template <int K>
__device__ __forceinline__ float pre_activation(const float (&w)[K], float bias,
                                                const float (&xw)[K], const int (&doc)[K]) {
  float acc = bias;
#pragma unroll
  for (int j = 0; j < K; ++j)
    if (doc[j] == doc[K - 1]) acc += w[j] * xw[j];
  return acc;
}

// The thread's channel (past the last one for spare threads of the last block), its batch
// row, and the first token of its run and the run's end.
struct RunPlace {
  int64_t c, row, t0, t1;
  __device__ RunPlace(int64_t seq_len, int64_t channels)
      : c(int64_t(blockIdx.x) * blockDim.x + threadIdx.x),
        row(int64_t(blockIdx.z) * seq_len),
        t0(int64_t(blockIdx.y) * kRun),
        t1(t0 + kRun < seq_len ? t0 + kRun : seq_len) {}
};

// Loads w[c, :] and bias[c], and the window of the K − 1 tokens before t0 (0 before the row).
template <class T, int K>
__device__ void load_window(const T* x, const T* w, const T* bias, const int32_t* seq,
                            const RunPlace& r, int64_t channels, float (&wv)[K], float& b,
                            float (&xw)[K], int (&doc)[K]) {
#pragma unroll
  for (int j = 0; j < K; ++j) wv[j] = to_f32(w[r.c * K + j]);
  b = bias ? to_f32(bias[r.c]) : 0.f;
#pragma unroll
  for (int i = 1; i < K; ++i) {
    const int64_t p = r.t0 - K + i;
    xw[i] = p >= 0 ? to_f32(x[(r.row + p) * channels + r.c]) : 0.f;
    doc[i] = p >= 0 && seq ? seq[r.row + p] : 0;
  }
}

__device__ __forceinline__ float silu_grad(float pre) {
  const float s = sigmoid(pre);
  return s * (1.f + pre * (1.f - s));
}

// Grid (channel blocks, runs, B): y = silu(pre-activation).
template <class T, int K>
__global__ void causal_conv1d_forward_kernel(const T* x, const T* w, const T* bias,
                                             const int32_t* seq, int64_t seq_len, int64_t channels,
                                             T* y) {
  const RunPlace r(seq_len, channels);
  if (r.c >= channels) return;
  float wv[K], b, xw[K];
  int doc[K];
  load_window<T, K>(x, w, bias, seq, r, channels, wv, b, xw, doc);
  for (int64_t t = r.t0; t < r.t1; ++t) {
    const int64_t i = (r.row + t) * channels + r.c;
    push(xw, to_f32(x[i]));
    push(doc, seq ? int(seq[r.row + t]) : 0);
    const float pre = pre_activation(wv, b, xw, doc);
    y[i] = from_f32<T>(pre * sigmoid(pre));
  }
}

// Grid (channel blocks, runs, B), the whole backward in one pass: dpre = dy · silu'(pre) for the
// run's tokens and the K − 1 after it (recomputed: dx of the run's last tokens needs them),
// dx[p] = Σ_j dpre[p + K − 1 − j] · w[j] over taps in p's document, and the run's shares of dw
// and dbias into partial[run, j, c] (j = K: dbias), summed in order by add_partials.
template <class T, int K>
__global__ void causal_conv1d_backward_kernel(const T* x, const T* w, const T* bias,
                                              const int32_t* seq, const T* dy, int64_t seq_len,
                                              int64_t channels, T* dx, float* partial) {
  const RunPlace r(seq_len, channels);
  if (r.c >= channels) return;
  float wv[K], b, xw[K], dwin[K] = {}, dw_run[K] = {}, db_run = 0.f;
  int doc[K], dwin_doc[K] = {};
  load_window<T, K>(x, w, bias, seq, r, channels, wv, b, xw, doc);
  for (int64_t t = r.t0; t < r.t1 + K - 1; ++t) {
    float dpre = 0.f;
    if (t < seq_len) {
      const int64_t i = (r.row + t) * channels + r.c;
      push(xw, to_f32(x[i]));
      push(doc, seq ? int(seq[r.row + t]) : 0);
      dpre = to_f32(dy[i]) * silu_grad(pre_activation(wv, b, xw, doc));
      if (t < r.t1) {
#pragma unroll
        for (int j = 0; j < K; ++j)
          if (doc[j] == doc[K - 1]) dw_run[j] += dpre * xw[j];
        db_run += dpre;
      }
    }
    push(dwin, dpre);  // tokens past the row give 0
    push(dwin_doc, doc[K - 1]);
    const int64_t p = t - (K - 1);  // dpre[p .. p + K − 1] are in the window now
    if (p >= r.t0 && p < r.t1) {
      float acc = 0.f;
#pragma unroll
      for (int j = 0; j < K; ++j)
        if (dwin_doc[K - 1 - j] == dwin_doc[0]) acc += dwin[K - 1 - j] * wv[j];
      dx[(r.row + p) * channels + r.c] = from_f32<T>(acc);
    }
  }
  if (partial == nullptr) return;
  const int64_t run = int64_t(blockIdx.z) * gridDim.y + blockIdx.y, slots = (K + 1) * channels;
#pragma unroll
  for (int j = 0; j < K; ++j) partial[run * slots + j * channels + r.c] = dw_run[j];
  partial[run * slots + K * channels + r.c] = db_run;
}

// Sums partial over chunks in order into dw[c, j] (j < K) and dbias[c] (j = K); a null
// output is skipped.
template <class T>
__global__ void causal_conv1d_add_partials_kernel(const float* partial, int64_t chunks,
                                                  int64_t channels, int64_t kernel, T* dw,
                                                  T* dbias) {
  const int64_t slots = (kernel + 1) * channels;
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= slots) return;
  const int64_t j = i / channels, c = i % channels;
  T* out = j == kernel ? (dbias ? dbias + c : nullptr) : (dw ? dw + c * kernel + j : nullptr);
  if (!out) return;
  float s = 0.f;
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * slots + i];
  *out = from_f32<T>(to_f32(*out) + s);
}

void check(const Tensor& t, const Shape& shape, DType dtype, const std::string& what) {
  require_cuda(t, "causal_conv1d", what.c_str());
  if (t.shape() != shape)
    throw Error("causal_conv1d", what + " shape", shape_str(shape), shape_str(t.shape()));
  if (t.dtype() != dtype)
    throw Error("causal_conv1d", what + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

// x [B, S, C], w [C, K], bias [C] when defined, seq_idx I32 [B, S] when defined.
void check_conv(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& seq_idx) {
  require_cuda(x, "causal_conv1d", "x");
  require_cuda(w, "causal_conv1d", "w");
  if (x.ndim() != 3) throw Error("causal_conv1d", "x shape", "[B, S, C]", shape_str(x.shape()));
  if (w.ndim() != 2 || w.size(0) != x.size(2) || w.size(1) < 1 || w.size(1) > kMaxTaps)
    throw Error("causal_conv1d", "w shape",
                "[C, K] with C = " + std::to_string(x.size(2)) + " and K in [1, " +
                    std::to_string(kMaxTaps) + "] on CUDA",
                shape_str(w.shape()));
  if (w.dtype() != x.dtype())
    throw Error("causal_conv1d", "w dtype", dtype_name(x.dtype()), dtype_name(w.dtype()));
  if (bias.defined()) check(bias, {x.size(2)}, x.dtype(), "bias");
  if (seq_idx.defined()) check(seq_idx, {x.size(0), x.size(1)}, DType::I32, "seq_idx");
}

template <class T>
const T* optional_ptr(const Tensor& t) {
  return t.defined() ? ptr<T>(t) : nullptr;
}

constexpr int kThreads = 256;

// Calls f(std::integral_constant<int, K>) for the kernel width K (checked: 1 to kMaxTaps).
template <class F>
void with_taps(int64_t kernel, F&& f) {
  switch (kernel) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 5:
      return f(std::integral_constant<int, 5>{});
    case 6:
      return f(std::integral_constant<int, 6>{});
    case 7:
      return f(std::integral_constant<int, 7>{});
    default:
      return f(std::integral_constant<int, kMaxTaps>{});
  }
}

// Grid of the streaming kernels: channel blocks × runs of a row × rows.
dim3 run_grid(const Tensor& x) {
  return dim3(blocks_for(x.size(2), kThreads), unsigned((x.size(1) + kRun - 1) / kRun),
              unsigned(x.size(0)));
}

}  // namespace

void causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                           const Tensor& seq_idx, Tensor& y) {
  check_conv(x, w, bias, seq_idx);
  check(y, x.shape(), x.dtype(), "y");
  if (x.numel() == 0) return;
  with_gpu_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    with_taps(w.size(1), [&](auto taps) {
      causal_conv1d_forward_kernel<T, decltype(taps)::value>
          <<<run_grid(x), kThreads, 0, stream()>>>(ptr<T>(x), ptr<T>(w), optional_ptr<T>(bias),
                                                   optional_ptr<int32_t>(seq_idx), x.size(1),
                                                   x.size(2), ptr<T>(y));
      NH_CUDA_CHECK_LAUNCH();
    });
  });
}

void causal_conv1d_backward(const Tensor& x, const Tensor& w, const Tensor& bias,
                            const Tensor& seq_idx, const Tensor& dy, Tensor& dx, Tensor& dw,
                            Tensor& dbias) {
  check_conv(x, w, bias, seq_idx);
  check(dy, x.shape(), x.dtype(), "dy");
  check(dx, x.shape(), x.dtype(), "dx");
  if (dw.defined()) check(dw, w.shape(), x.dtype(), "dw");
  if (dbias.defined()) check(dbias, {x.size(2)}, x.dtype(), "dbias");
  if (x.numel() == 0) return;
  const int64_t channels = x.size(2), kernel = w.size(1);
  const dim3 grid = run_grid(x);
  // dw and dbias in two stages: per-run sums over tokens, then a fixed-order sum of the runs.
  // The runs depend only on the shape, so the result is the same on every run.
  const int64_t runs = int64_t(grid.y) * grid.z, slots = (kernel + 1) * channels;
  const bool params = dw.defined() || dbias.defined();
  const Tensor partial = params ? Tensor::empty({runs, slots}, DType::F32, Device::CUDA) : Tensor();
  with_gpu_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    with_taps(kernel, [&](auto taps) {
      causal_conv1d_backward_kernel<T, decltype(taps)::value><<<grid, kThreads, 0, stream()>>>(
          ptr<T>(x), ptr<T>(w), optional_ptr<T>(bias), optional_ptr<int32_t>(seq_idx), ptr<T>(dy),
          x.size(1), channels, ptr<T>(dx), params ? ptr<float>(partial) : nullptr);
      NH_CUDA_CHECK_LAUNCH();
    });
    if (!params) return;
    causal_conv1d_add_partials_kernel<T><<<blocks_for(slots, kThreads), kThreads, 0, stream()>>>(
        ptr<float>(partial), runs, channels, kernel, dw.defined() ? ptr<T>(dw) : nullptr,
        dbias.defined() ? ptr<T>(dbias) : nullptr);
    NH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace nh::cuda
