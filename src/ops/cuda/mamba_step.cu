// CUDA decoding steps of the Mamba-2 mixer (the contract is in ops/mamba_step.h, SPEC §2):
// storage F32 or BF16 with fp32 arithmetic; the SSM state is always F32 on the GPU, so the
// recurrence does not lose bits at every token.
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/mamba_step.h"

namespace nh::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kSsdThreads = 128;  // 4 warps per (b, h)

// One thread per (b, c): the taps over [state, x], then the state shifted by one, x appended.
template <class T>
__global__ void conv1d_step_kernel(const T* x, T* state, const T* w, const T* bias,
                                   int64_t channels, int64_t kernel, int64_t n, T* y) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t c = i % channels, hist = kernel - 1;
  const T* wc = w + c * kernel;
  T* s = state + i * hist;
  const T xi = x[i];
  float pre = bias ? to_f32(bias[c]) : 0.f;
  for (int64_t j = 0; j < hist; ++j) pre += to_f32(wc[j]) * to_f32(s[j]);
  pre += to_f32(wc[hist]) * to_f32(xi);
  for (int64_t j = 0; j + 1 < hist; ++j) s[j] = s[j + 1];
  if (hist > 0) s[hist - 1] = xi;
  y[i] = from_f32<T>(pre / (1.f + expf(-pre)));
}

// One block per (b, h). Warp w owns the state rows p = w, w + warps, …, its lanes the columns
// n = lane, lane + 32, …: a row is read and written at consecutive addresses, and y[p] is one
// warp sum (a fixed shuffle tree, so the result does not depend on scheduling).
template <class T>
__global__ void ssd_step_kernel(const T* x, const T* dt, const T* A, const T* Bm, const T* Cm,
                                const T* D, int64_t heads, int64_t groups, int64_t head_dim,
                                int64_t state_dim, float* state, T* y) {
  const int64_t bh = blockIdx.x, b = bh / heads, h = bh % heads;
  const int64_t bg = b * groups + h / (heads / groups);
  const float dtv = to_f32(dt[bh]), decay = expf(dtv * to_f32(A[h]));
  const float d = D ? to_f32(D[h]) : 0.f;
  const T* Bg = Bm + bg * state_dim;
  const T* Cg = Cm + bg * state_dim;
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t p = threadIdx.x / 32; p < head_dim; p += warps) {
    const float xp = to_f32(x[bh * head_dim + p]), dtx = dtv * xp;
    float* S = state + (bh * head_dim + p) * state_dim;
    float acc = 0.f;
    for (int64_t n = lane; n < state_dim; n += 32) {
      const float s = decay * S[n] + dtx * to_f32(Bg[n]);
      S[n] = s;
      acc += s * to_f32(Cg[n]);
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) y[bh * head_dim + p] = from_f32<T>(acc + d * xp);
  }
}

void check_dtype(const char* op, const Tensor& t, DType dtype, const std::string& what) {
  if (t.dtype() != dtype)
    throw Error(op, what + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

void check(const char* op, const Tensor& t, const Shape& shape, DType dtype,
           const std::string& what) {
  require_cuda(t, op, what.c_str());
  if (t.shape() != shape) throw Error(op, what + " shape", shape_str(shape), shape_str(t.shape()));
  check_dtype(op, t, dtype, what);
}

template <class T>
const T* optional_ptr(const Tensor& t) {
  return t.defined() ? ptr<T>(t) : nullptr;
}

}  // namespace

void conv1d_step(const Tensor& x, Tensor& conv_state, const Tensor& w, const Tensor& bias,
                 Tensor& y) {
  require_cuda(x, "conv1d_step", "x");
  require_cuda(w, "conv1d_step", "w");
  if (x.ndim() != 2) throw Error("conv1d_step", "x shape", "[B, C]", shape_str(x.shape()));
  const int64_t batch = x.size(0), channels = x.size(1);
  if (w.ndim() != 2 || w.size(0) != channels || w.size(1) < 1)
    throw Error("conv1d_step", "w shape", "[C, K] with C = " + std::to_string(channels),
                shape_str(w.shape()));
  const int64_t kernel = w.size(1);
  check_dtype("conv1d_step", w, x.dtype(), "w");
  check("conv1d_step", conv_state, {batch, channels, kernel - 1}, x.dtype(), "conv_state");
  if (bias.defined()) check("conv1d_step", bias, {channels}, x.dtype(), "bias");
  check("conv1d_step", y, x.shape(), x.dtype(), "y");
  const int64_t n = x.numel();
  with_gpu_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    if (n == 0) return;
    conv1d_step_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
        ptr<T>(x), ptr<T>(conv_state), ptr<T>(w), optional_ptr<T>(bias), channels, kernel, n,
        ptr<T>(y));
    NH_CUDA_CHECK_LAUNCH();
  });
}

void ssd_step(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
              const Tensor& Cm, const Tensor& D, Tensor& state, Tensor& y) {
  require_cuda(x, "ssd_step", "x");
  if (x.ndim() != 3) throw Error("ssd_step", "x shape", "[B, H, P]", shape_str(x.shape()));
  if (Bm.ndim() != 3) throw Error("ssd_step", "Bm shape", "[B, G, N]", shape_str(Bm.shape()));
  const int64_t batch = x.size(0), heads = x.size(1), head_dim = x.size(2);
  const int64_t groups = Bm.size(1), state_dim = Bm.size(2);
  if (groups < 1 || heads % groups != 0)
    throw Error("ssd_step", "n_groups", "a divisor of H = " + std::to_string(heads),
                std::to_string(groups));
  const DType f = x.dtype();
  check("ssd_step", Bm, {batch, groups, state_dim}, f, "Bm");
  check("ssd_step", Cm, {batch, groups, state_dim}, f, "Cm");
  check("ssd_step", dt, {batch, heads}, f, "dt");
  check("ssd_step", A, {heads}, f, "A");
  if (D.defined()) check("ssd_step", D, {heads}, f, "D");
  check("ssd_step", state, {batch, heads, head_dim, state_dim}, DType::F32, "state");
  check("ssd_step", y, x.shape(), f, "y");
  with_gpu_float_type(f, [&](auto zero) {
    using T = decltype(zero);
    if (batch * heads == 0) return;
    ssd_step_kernel<T><<<unsigned(batch * heads), kSsdThreads, 0, stream()>>>(
        ptr<T>(x), ptr<T>(dt), ptr<T>(A), ptr<T>(Bm), ptr<T>(Cm), optional_ptr<T>(D), heads, groups,
        head_dim, state_dim, ptr<float>(state), ptr<T>(y));
    NH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace nh::cuda
