// CUDA Mamba-2 decoding step (the contract is in ops/mamba_decode_step.h, SPEC §2): storage F32 or
// BF16, fp32 arithmetic, the SSM state F32. Two kernels:
//   conv_dt: one thread per (entry, conv channel) — the conv step over [state, x], the state
//     shifted — and per (entry, head) for dt; xbc and dt go to fp32 scratch tensors.
//   ssd: a CTA updates a few state rows p of one (entry, head), so even one entry spreads over
//     many CTAs (512 for the 8B's 4 MiB state) and streams its state at full bandwidth. L lanes
//     hold a state row (8 elements a lane, 16-byte loads when N allows), a warp 32 / L rows at a
//     time, kUnroll times for loads in flight; y[p] is an L-lane shuffle sum (fixed order).
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/mamba_decode_step.h"

namespace nh::cuda {

namespace {

constexpr int kConvThreads = 256;
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kLaneElems = 8;
constexpr int64_t kMaxStateSize = 32 * kLaneElems;
constexpr int kUnroll = 2;

// softplus as torch computes it: x above 20, log1p(exp(x)) otherwise.
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }

__device__ __forceinline__ bool is_padding(int row, int state_rows) {
  return row < 0 || row >= state_rows;
}

// Grid (ceil((C + H) / kConvThreads), B).
template <class T>
__global__ void conv_dt_kernel(const T* zxbcdt, const int32_t* rows, const T* conv_w,
                               const T* conv_b, const T* dt_bias, float dt_min, float dt_max,
                               int state_rows, int d_inner, int conv_dim, int heads, int kernel,
                               T* conv_state, float* xbc, float* dt) {
  const int b = blockIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
  const int row = rows[b];
  if (is_padding(row, state_rows)) return;
  const T* in = zxbcdt + int64_t(b) * (d_inner + conv_dim + heads);
  if (i < conv_dim) {
    const int hist = kernel - 1;
    const T* w = conv_w + int64_t(i) * kernel;
    T* s = conv_state + (int64_t(row) * conv_dim + i) * hist;
    const T x = in[d_inner + i];
    float pre = conv_b ? to_f32(conv_b[i]) : 0.f;
    for (int j = 0; j < hist; ++j) pre += to_f32(w[j]) * to_f32(s[j]);
    pre += to_f32(w[hist]) * to_f32(x);
    for (int j = 0; j + 1 < hist; ++j) s[j] = s[j + 1];
    if (hist > 0) s[hist - 1] = x;
    xbc[int64_t(b) * conv_dim + i] = pre / (1.f + expf(-pre));
  } else if (i < conv_dim + heads) {
    const int h = i - conv_dim;
    const float v = softplus(to_f32(in[d_inner + conv_dim + h]) + to_f32(dt_bias[h]));
    dt[int64_t(b) * heads + h] = fminf(fmaxf(v, dt_min), dt_max);
  }
}

// A lane's kLaneElems elements of a state row: element i is row element (lane + L·c)·kVec + j for
// i = c·kVec + j, read and written as float4 (kVectorized: N a multiple of 4) or one by one.
template <bool kVectorized>
struct StateSlice {
  static constexpr int kVec = kVectorized ? 4 : 1;
  float v[kLaneElems];
  __device__ void clear() {
#pragma unroll
    for (int i = 0; i < kLaneElems; ++i) v[i] = 0.f;
  }
  __device__ static int element(int lane, int lanes, int i) {
    return (lane + lanes * (i / kVec)) * kVec + i % kVec;
  }
  __device__ void load(const float* row, int lane, int lanes, int n) {
#pragma unroll
    for (int c = 0; c < kLaneElems / kVec; ++c) {
      const int e = (lane + lanes * c) * kVec;
      if constexpr (kVectorized) {
        const float4 f = e < n ? *reinterpret_cast<const float4*>(row + e) : float4{0, 0, 0, 0};
        v[4 * c] = f.x;
        v[4 * c + 1] = f.y;
        v[4 * c + 2] = f.z;
        v[4 * c + 3] = f.w;
      } else {
        v[c] = e < n ? row[e] : 0.f;
      }
    }
  }
  __device__ void store(float* row, int lane, int lanes, int n) const {
#pragma unroll
    for (int c = 0; c < kLaneElems / kVec; ++c) {
      const int e = (lane + lanes * c) * kVec;
      if (e >= n) continue;
      if constexpr (kVectorized)
        *reinterpret_cast<float4*>(row + e) = {v[4 * c], v[4 * c + 1], v[4 * c + 2], v[4 * c + 3]};
      else
        row[e] = v[c];
    }
  }
};

// Grid (ceil(P / rows_per_cta), H, B), rows_per_cta = kWarps · (32 / L) · kUnroll.
template <class T, bool kVectorized>
__global__ void __launch_bounds__(kThreads)
    ssd_kernel(const float* xbc, const float* dt, const int32_t* rows, const T* A_log, const T* D,
               int state_rows, int heads, int head_dim, int groups, int state_size, int lanes,
               float* ssm_state, T* y) {
  using Slice = StateSlice<kVectorized>;
  const int b = blockIdx.z, h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rl = lane % lanes, per_warp = 32 / lanes;
  const int p0 = (blockIdx.x * kWarps + warp) * per_warp * kUnroll + lane / lanes;
  T* yh = y + (int64_t(b) * heads + h) * head_dim;
  const int row = rows[b];
  if (is_padding(row, state_rows)) {
    if (rl == 0)
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        if (p0 + u * per_warp < head_dim) yh[p0 + u * per_warp] = from_f32<T>(0.f);
    return;
  }
  const int d_inner = heads * head_dim, gn = groups * state_size, g = h / (heads / groups);
  const float* xb = xbc + int64_t(b) * (d_inner + 2 * gn);
  const float* Bg = xb + d_inner + g * state_size;
  const float* Cg = xb + d_inner + gn + g * state_size;
  const float dtv = dt[int64_t(b) * heads + h];
  const float decay = expf(dtv * -expf(to_f32(A_log[h])));
  const float d = D ? to_f32(D[h]) : 0.f;
  float Bv[kLaneElems], Cv[kLaneElems];
#pragma unroll
  for (int i = 0; i < kLaneElems; ++i) {
    const int n = Slice::element(rl, lanes, i);
    Bv[i] = n < state_size ? Bg[n] : 0.f;
    Cv[i] = n < state_size ? Cg[n] : 0.f;
  }
  float* S = ssm_state + (int64_t(row) * heads + h) * head_dim * state_size;
  Slice st[kUnroll];
  float x[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int p = p0 + u * per_warp;
    x[u] = p < head_dim ? xb[h * head_dim + p] : 0.f;
    if (p < head_dim)
      st[u].load(S + int64_t(p) * state_size, rl, lanes, state_size);
    else
      st[u].clear();
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int p = p0 + u * per_warp;
    const float dtx = dtv * x[u];
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < kLaneElems; ++i) {
      st[u].v[i] = decay * st[u].v[i] + dtx * Bv[i];
      acc += st[u].v[i] * Cv[i];
    }
    for (int o = lanes / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (p < head_dim) {
      st[u].store(S + int64_t(p) * state_size, rl, lanes, state_size);
      if (rl == 0) yh[p] = from_f32<T>(acc + d * x[u]);
    }
  }
}

template <class T>
const T* optional_ptr(const Tensor& t) {
  return t.defined() ? ptr<T>(t) : nullptr;
}

int next_pow2(int64_t n) {
  int p = 1;
  while (p < n) p *= 2;
  return p;
}

}  // namespace

void mamba_decode_step(const Tensor& zxbcdt, const Tensor& rows, const Tensor& conv_w,
                       const Tensor& conv_b, const Tensor& dt_bias, const Tensor& A_log,
                       const Tensor& D, double dt_min, double dt_max, int64_t groups,
                       int64_t state_size, Tensor& conv_state, Tensor& ssm_state, Tensor& y) {
  const char* op = "mamba_decode_step";
  require_cuda(zxbcdt, op, "zxbcdt");
  const MambaDecodeShape s =
      check_mamba_decode_step(zxbcdt, rows, conv_w, conv_b, dt_bias, A_log, D, groups, state_size,
                              conv_state, ssm_state, DType::F32, y);
  if (state_size > kMaxStateSize)
    throw Error(op, "state_size", "at most " + std::to_string(kMaxStateSize),
                std::to_string(state_size));
  if (s.batch > 65535) throw Error(op, "batch size", "at most 65535", std::to_string(s.batch));
  with_gpu_float_type(zxbcdt.dtype(), [&](auto zero) {
    using T = decltype(zero);
    if (s.batch == 0) return;
    Tensor xbc = Tensor::empty({s.batch, s.conv_dim}, DType::F32, Device::CUDA);
    Tensor dt = Tensor::empty({s.batch, s.heads}, DType::F32, Device::CUDA);
    const dim3 conv_grid(blocks_for(s.conv_dim + s.heads, kConvThreads), unsigned(s.batch));
    conv_dt_kernel<T><<<conv_grid, kConvThreads, 0, stream()>>>(
        ptr<T>(zxbcdt), ptr<int32_t>(rows), ptr<T>(conv_w), optional_ptr<T>(conv_b),
        ptr<T>(dt_bias), float(dt_min), float(dt_max), int(s.state_rows), int(s.d_inner()),
        int(s.conv_dim), int(s.heads), int(s.kernel), ptr<T>(conv_state), ptr<float>(xbc),
        ptr<float>(dt));
    NH_CUDA_CHECK_LAUNCH();

    const bool vectorized = state_size % 4 == 0;
    const int64_t vec = vectorized ? 4 : 1;
    const int lanes = next_pow2((state_size / vec + kLaneElems / vec - 1) / (kLaneElems / vec));
    const int64_t rows_per_cta = kWarps * (32 / lanes) * kUnroll;
    const dim3 grid(unsigned((s.head_dim + rows_per_cta - 1) / rows_per_cta), unsigned(s.heads),
                    unsigned(s.batch));
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, stream()>>>(
          ptr<float>(xbc), ptr<float>(dt), ptr<int32_t>(rows), ptr<T>(A_log), optional_ptr<T>(D),
          int(s.state_rows), int(s.heads), int(s.head_dim), int(groups), int(state_size), lanes,
          ptr<float>(ssm_state), ptr<T>(y));
      NH_CUDA_CHECK_LAUNCH();
    };
    if (vectorized)
      launch(ssd_kernel<T, true>);
    else
      launch(ssd_kernel<T, false>);
  });
}

}  // namespace nh::cuda
