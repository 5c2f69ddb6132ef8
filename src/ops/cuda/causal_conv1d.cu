// Causal depthwise conv1d + SiLU on the GPU (the contract is in ops/causal_conv1d.h, SPEC §2):
// storage in F32 or BF16, taps, gradients and the dw/dbias sums in fp32. Channels are last, so
// one thread per (token, channel) with consecutive threads on consecutive channels reads and
// writes whole rows of consecutive addresses.
#include <algorithm>
#include <string>

#include "ops/causal_conv1d.h"
#include "ops/cuda/common.cuh"

namespace nh::cuda {

namespace {

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

// bias[c] + Σ_j w[c,j] · x[row + t - K + 1 + j, c] over the taps inside the row and in token
// t's document (row = b·S, the first token of the batch row).
template <class T>
__device__ float conv_pre_activation(const T* x, const T* w, const T* bias, const int32_t* seq,
                                     int64_t row, int64_t t, int64_t c, int64_t channels,
                                     int64_t kernel) {
  float acc = bias ? to_f32(bias[c]) : 0.f;
  const int32_t doc = seq ? seq[row + t] : 0;
  for (int64_t j = 0; j < kernel; ++j) {
    const int64_t p = t - kernel + 1 + j;
    if (p < 0 || (seq && seq[row + p] != doc)) continue;
    acc += to_f32(w[c * kernel + j]) * to_f32(x[(row + p) * channels + c]);
  }
  return acc;
}

// One thread per (b, t, c): y = silu(pre-activation).
template <class T>
__global__ void causal_conv1d_forward_kernel(const T* x, const T* w, const T* bias,
                                             const int32_t* seq, int64_t seq_len, int64_t channels,
                                             int64_t kernel, int64_t n, T* y) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t bt = i / channels, c = i % channels, t = bt % seq_len;
  const float pre = conv_pre_activation(x, w, bias, seq, bt - t, t, c, channels, kernel);
  y[i] = from_f32<T>(pre * sigmoid(pre));
}

// One thread per (b, t, c): dpre = dy · silu'(pre), silu'(v) = σ(v)(1 + v(1 − σ(v))), in fp32.
template <class T>
__global__ void causal_conv1d_dpre_kernel(const T* x, const T* w, const T* bias, const int32_t* seq,
                                          const T* dy, int64_t seq_len, int64_t channels,
                                          int64_t kernel, int64_t n, float* dpre) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t bt = i / channels, c = i % channels, t = bt % seq_len;
  const float pre = conv_pre_activation(x, w, bias, seq, bt - t, t, c, channels, kernel);
  const float s = sigmoid(pre);
  dpre[i] = to_f32(dy[i]) * s * (1.f + pre * (1.f - s));
}

// One thread per (b, p, c): token p feeds output t = p + K - 1 - j through tap j, when t is in
// the row and in p's document; dx gathers those outputs' dpre · w.
template <class T>
__global__ void causal_conv1d_dx_kernel(const float* dpre, const T* w, const int32_t* seq,
                                        int64_t seq_len, int64_t channels, int64_t kernel,
                                        int64_t n, T* dx) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t bt = i / channels, c = i % channels, p = bt % seq_len, row = bt - p;
  const int32_t doc = seq ? seq[bt] : 0;
  float acc = 0.f;
  for (int64_t j = 0; j < kernel; ++j) {
    const int64_t t = p + kernel - 1 - j;
    if (t >= seq_len || (seq && seq[row + t] != doc)) continue;
    acc += dpre[(row + t) * channels + c] * to_f32(w[c * kernel + j]);
  }
  dx[i] = from_f32<T>(acc);
}

// partial[chunk, j, c] for j < K: Σ over the chunk's tokens, in order, of dpre[t, c] · x[tap j
// of t, c] (0 for taps outside the row or the document); j = K: Σ dpre[t, c] (the bias).
// Grid (blocks over (K+1)·C with c fastest, chunks): a warp shares j and reads consecutive c.
template <class T>
__global__ void causal_conv1d_dw_partial_kernel(const float* dpre, const T* x, const int32_t* seq,
                                                int64_t tokens, int64_t seq_len, int64_t channels,
                                                int64_t kernel, int64_t tokens_per_chunk,
                                                float* partial) {
  const int64_t slots = (kernel + 1) * channels;
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= slots) return;
  const int64_t j = i / channels, c = i % channels;
  const int64_t bt0 = blockIdx.y * tokens_per_chunk, bt1 = min(tokens, bt0 + tokens_per_chunk);
  float acc = 0.f;
  for (int64_t bt = bt0; bt < bt1; ++bt) {
    const float d = dpre[bt * channels + c];
    if (j == kernel) {
      acc += d;
      continue;
    }
    const int64_t t = bt % seq_len, row = bt - t, p = t - kernel + 1 + j;
    if (p < 0 || (seq && seq[row + p] != seq[bt])) continue;
    acc += d * to_f32(x[(row + p) * channels + c]);
  }
  partial[blockIdx.y * slots + i] = acc;
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
  if (w.ndim() != 2 || w.size(0) != x.size(2) || w.size(1) < 1)
    throw Error("causal_conv1d", "w shape", "[C, K] with C = " + std::to_string(x.size(2)),
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

}  // namespace

void causal_conv1d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                           const Tensor& seq_idx, Tensor& y) {
  check_conv(x, w, bias, seq_idx);
  check(y, x.shape(), x.dtype(), "y");
  const int64_t n = x.numel();
  if (n == 0) return;
  const int64_t seq_len = x.size(1), channels = x.size(2), kernel = w.size(1);
  with_gpu_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    causal_conv1d_forward_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
        ptr<T>(x), ptr<T>(w), optional_ptr<T>(bias), optional_ptr<int32_t>(seq_idx), seq_len,
        channels, kernel, n, ptr<T>(y));
    NH_CUDA_CHECK_LAUNCH();
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
  const int64_t n = x.numel();
  if (n == 0) return;
  const int64_t seq_len = x.size(1), channels = x.size(2), kernel = w.size(1);
  const int64_t tokens = x.size(0) * seq_len;
  // The pre-activation gradient, formed once in fp32 and read by dx, dw and dbias.
  Tensor dpre = Tensor::empty(x.shape(), DType::F32, Device::CUDA);
  // dw and dbias in two stages: per-chunk sums over tokens, then a fixed-order sum of the
  // chunks. The chunking depends only on the shape, so the result is the same on every run.
  const int64_t tokens_per_chunk = std::max<int64_t>(32, (tokens + 255) / 256);
  const int64_t chunks = (tokens + tokens_per_chunk - 1) / tokens_per_chunk;
  const int64_t slots = (kernel + 1) * channels;
  with_gpu_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const int32_t* seq = optional_ptr<int32_t>(seq_idx);
    causal_conv1d_dpre_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
        ptr<T>(x), ptr<T>(w), optional_ptr<T>(bias), seq, ptr<T>(dy), seq_len, channels, kernel, n,
        ptr<float>(dpre));
    NH_CUDA_CHECK_LAUNCH();
    causal_conv1d_dx_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
        ptr<float>(dpre), ptr<T>(w), seq, seq_len, channels, kernel, n, ptr<T>(dx));
    NH_CUDA_CHECK_LAUNCH();
    if (!dw.defined() && !dbias.defined()) return;
    Tensor partial = Tensor::empty({chunks, slots}, DType::F32, Device::CUDA);
    const dim3 grid(blocks_for(slots, kThreads), unsigned(chunks));
    causal_conv1d_dw_partial_kernel<T>
        <<<grid, kThreads, 0, stream()>>>(ptr<float>(dpre), ptr<T>(x), seq, tokens, seq_len,
                                          channels, kernel, tokens_per_chunk, ptr<float>(partial));
    NH_CUDA_CHECK_LAUNCH();
    causal_conv1d_add_partials_kernel<T><<<blocks_for(slots, kThreads), kThreads, 0, stream()>>>(
        ptr<float>(partial), chunks, channels, kernel, dw.defined() ? ptr<T>(dw) : nullptr,
        dbias.defined() ? ptr<T>(dbias) : nullptr);
    NH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace nh::cuda
