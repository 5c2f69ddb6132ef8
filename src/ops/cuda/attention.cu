// CUDA causal GQA attention (SPEC §3), flash-attention style: scores exist only one tile at a
// time in shared memory, never as an S×S matrix. Tiles are converted to fp32 on load (zero
// padded to the head-dim bucket kD = 32, 64 or 128) and every product, the online softmax and
// the accumulators are fp32 FMA on CUDA cores. These kernels serve fp32 and head dims that are
// not a multiple of 8; bf16 inputs otherwise go to the tensor-core kernels of attention_flash.cu
// (unless NH_KERNELS=attention=simt asks for these; core/kernel_versions.h).
//
// lse [B, Hq, S] is F32 on the GPU whatever the dtype of q: a bf16 lse would be off by up to
// 2^-9·|lse| in the exponent, and the backward recomputes every probability from it.
//
// Documents: token t attends to [doc_start[t], t], the run of equal seq_idx around it (as on
// the CPU). A small kernel turns seq_idx into doc_start/doc_end per token; a key j is allowed
// for query i iff j <= i and doc_start[j] == doc_start[i]. Because both arrays are
// non-decreasing along a row, a query tile only visits keys from doc_start[first query] and a
// key tile only queries up to doc_end[last key].
//
// All three kernels use 128 threads as a 16 × 8 grid: thread (ty, tx) owns consecutive rows
// ty·r … of its tile, and the columns tx, tx + 8, … (keys of the score tile, then dims of the
// accumulator), so the 8 lanes that share a row are one aligned group of a warp and reduce
// with shuffles. The backward is deterministic and free of atomics: dq per query tile, dk/dv
// per key tile summing the q heads of its group in order.
#include <cub/block/block_scan.cuh>
#include <string>
#include <type_traits>

#include "core/kernel_versions.h"
#include "ops/attention.h"
#include "ops/cuda/attention_flash.cuh"
#include "ops/cuda/common.cuh"

namespace nh::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kRowGroups = 16;  // ty
constexpr int kColGroups = 8;   // tx: the lanes that share a row
constexpr int kMaxHeadDim = 128;
// Forward and dq: a block owns 64 queries and walks the keys 32 at a time.
constexpr int kQueryTile = 64;
constexpr int kKeyStep = 32;
// dk/dv: a block owns 32 keys and walks the queries 32 at a time.
constexpr int kKeyTile = 32;
constexpr int kQueryStep = 32;
// Document ids of tile rows past the end (or past the range a block visits): never equal to
// each other nor to a real doc_start (>= 0), so such pairs are masked.
constexpr int kNoQuery = -1;
constexpr int kNoKey = -2;

// Shared-memory row stride of an fp32 tile of head-dim bucket kD: one word of padding puts the
// rows that a warp reads at the same column in different banks.
template <int kD>
constexpr int tile_stride() {
  return kD + 1;
}

// Rows [0, n) of a [rows, head_dim] slice whose rows are `stride` elements apart, into an fp32
// tile [kRows][kD + 1]; rows >= n and dims >= head_dim are zero, so dot products over kD are exact.
template <class T, int kRows, int kD>
__device__ void load_tile(const T* src, int64_t stride, int n, int head_dim, float* dst) {
  for (int idx = threadIdx.x; idx < kRows * kD; idx += kThreads) {
    const int r = idx / kD, e = idx % kD;
    dst[r * tile_stride<kD>() + e] = r < n && e < head_dim ? to_f32(src[r * stride + e]) : 0.f;
  }
}

// The first n rows of an fp32 tile [kRows][kD + 1] into a [rows, head_dim] slice.
template <class T, int kRows, int kD>
__device__ void store_tile(const float* src, int n, int head_dim, T* dst, int64_t stride) {
  for (int idx = threadIdx.x; idx < kRows * kD; idx += kThreads) {
    const int r = idx / kD, e = idx % kD;
    if (r < n && e < head_dim) dst[r * stride + e] = from_f32<T>(src[r * tile_stride<kD>() + e]);
  }
}

// doc_start of tokens [t0, t0 + n) of a row (0 without documents), `missing` for tile rows >= n.
template <int kRows>
__device__ void load_docs(const int* doc_start, int64_t t0, int n, int missing, int* dst) {
  for (int r = threadIdx.x; r < kRows; r += kThreads)
    dst[r] = r >= n ? missing : doc_start ? doc_start[t0 + r] : 0;
}

// Per-query statistics (lse or D) of rows [0, n) of a tile, 0 for rows >= n.
template <int kRows>
__device__ void load_row_values(const float* src, int n, float* dst) {
  for (int r = threadIdx.x; r < kRows; r += kThreads) dst[r] = r < n ? src[r] : 0.f;
}

__device__ __forceinline__ float group_max(float x) {
  for (int offset = 1; offset < kColGroups; offset *= 2)
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}
__device__ __forceinline__ float group_sum(float x) {
  for (int offset = 1; offset < kColGroups; offset *= 2)
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

struct MaxOp {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};
struct MinOp {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};

constexpr int kScanThreads = 256;

// seq_idx [B, S] -> doc_start, doc_end [B, S]: the first and one past the last position of the
// run of equal seq_idx around each token. One block per batch row; a block-wide running max
// (from the left) of "t if a run starts at t" and running min (from the right) of "t + 1 if a
// run ends at t", carried across chunks of kScanThreads tokens.
__global__ void document_bounds_kernel(const int32_t* seq_idx, int seqlen, int* doc_start,
                                       int* doc_end) {
  using Scan = cub::BlockScan<int, kScanThreads>;
  __shared__ typename Scan::TempStorage temp;
  const int64_t row = int64_t(blockIdx.x) * seqlen;
  const int32_t* idx = seq_idx + row;
  int carry = 0, aggregate;
  for (int t0 = 0; t0 < seqlen; t0 += kScanThreads) {
    const int t = t0 + threadIdx.x;
    int start = t < seqlen && t > 0 && idx[t] != idx[t - 1] ? t : 0;
    Scan(temp).InclusiveScan(start, start, MaxOp{}, aggregate);
    if (t < seqlen) doc_start[row + t] = max(start, carry);
    carry = max(carry, aggregate);
    __syncthreads();  // temp is reused by the next scan
  }
  carry = seqlen;
  for (int t0 = 0; t0 < seqlen; t0 += kScanThreads) {
    const int t = seqlen - 1 - (t0 + threadIdx.x);
    int end = t >= 0 && t + 1 < seqlen && idx[t] != idx[t + 1] ? t + 1 : seqlen;
    Scan(temp).InclusiveScan(end, end, MinOp{}, aggregate);
    if (t >= 0) doc_end[row + t] = min(end, carry);
    carry = min(carry, aggregate);
    __syncthreads();
  }
}

// Grid (ceil(S / 64), Hq, B): a block computes out and lse for 64 queries of one head, with the
// online softmax over key tiles of 32 (m: running max, l: running sum of exp(s − m)).
template <class T, int kD>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ k,
                             const T* __restrict__ v, const int* __restrict__ doc_start, AttnDims d,
                             float scale, T* __restrict__ out, float* __restrict__ lse) {
  constexpr int kStride = tile_stride<kD>(), kRows = kQueryTile / kRowGroups,
                kKeys = kKeyStep / kColGroups, kCols = kD / kColGroups;
  extern __shared__ float smem[];
  float* q_s = smem;                        // [kQueryTile][kStride]
  float* k_s = q_s + kQueryTile * kStride;  // [kKeyStep][kStride]
  float* v_s = k_s + kKeyStep * kStride;    // [kKeyStep][kStride]
  float* p_s = v_s + kKeyStep * kStride;    // [kQueryTile][kKeyStep + 1]
  int* qdoc_s = reinterpret_cast<int*>(p_s + kQueryTile * (kKeyStep + 1));  // [kQueryTile]
  int* kdoc_s = qdoc_s + kQueryTile;                                        // [kKeyStep]

  const int tx = threadIdx.x % kColGroups, ty = threadIdx.x / kColGroups;
  const int q0 = blockIdx.x * kQueryTile, h = blockIdx.y, b = blockIdx.z;
  const int kh = h / (d.q_heads / d.kv_heads), nq = min(kQueryTile, d.seqlen - q0);
  const int64_t row0 = int64_t(b) * d.seqlen;  // token (b, 0)
  const int64_t q_stride = int64_t(d.q_heads) * d.head_dim;
  const int64_t kv_stride = int64_t(d.kv_heads) * d.head_dim;
  const int64_t q_offset = ((row0 + q0) * d.q_heads + h) * d.head_dim;
  load_tile<T, kQueryTile, kD>(q + q_offset, q_stride, nq, d.head_dim, q_s);
  load_docs<kQueryTile>(doc_start, row0 + q0, nq, kNoQuery, qdoc_s);
  const int kv_lo = doc_start ? doc_start[row0 + q0] : 0, kv_hi = q0 + nq;

  float m[kRows], l[kRows], acc[kRows][kCols];
#pragma unroll
  for (int a = 0; a < kRows; ++a) {
    m[a] = -INFINITY;
    l[a] = 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[a][c] = 0.f;
  }

  for (int k0 = kv_lo; k0 < kv_hi; k0 += kKeyStep) {
    const int nk = min(kKeyStep, kv_hi - k0);
    __syncthreads();  // the previous step is done with k_s, v_s and p_s
    const int64_t kv_offset = ((row0 + k0) * d.kv_heads + kh) * d.head_dim;
    load_tile<T, kKeyStep, kD>(k + kv_offset, kv_stride, nk, d.head_dim, k_s);
    load_tile<T, kKeyStep, kD>(v + kv_offset, kv_stride, nk, d.head_dim, v_s);
    load_docs<kKeyStep>(doc_start, row0 + k0, nk, kNoKey, kdoc_s);
    __syncthreads();

    float s[kRows][kKeys] = {};
#pragma unroll 4
    for (int e = 0; e < kD; ++e) {
      float qa[kRows], kb[kKeys];
#pragma unroll
      for (int a = 0; a < kRows; ++a) qa[a] = q_s[(ty * kRows + a) * kStride + e];
#pragma unroll
      for (int c = 0; c < kKeys; ++c) kb[c] = k_s[(tx + c * kColGroups) * kStride + e];
#pragma unroll
      for (int a = 0; a < kRows; ++a)
#pragma unroll
        for (int c = 0; c < kKeys; ++c) s[a][c] = fmaf(qa[a], kb[c], s[a][c]);
    }

#pragma unroll
    for (int a = 0; a < kRows; ++a) {
      const int il = ty * kRows + a;
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < kKeys; ++c) {
        const int jl = tx + c * kColGroups;
        const bool allowed = k0 + jl <= q0 + il && kdoc_s[jl] == qdoc_s[il];
        s[a][c] = allowed ? s[a][c] * scale : -INFINITY;
        mx = fmaxf(mx, s[a][c]);
      }
      const float m_new = fmaxf(m[a], group_max(mx));
      // A row with no allowed key yet keeps l = acc = 0: exponents relative to 0, not −inf.
      const float m_ref = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = __expf(m[a] - m_ref);
      float sum = 0.f;
#pragma unroll
      for (int c = 0; c < kKeys; ++c) {
        const float p = __expf(s[a][c] - m_ref);
        sum += p;
        p_s[il * (kKeyStep + 1) + tx + c * kColGroups] = p;
      }
      l[a] = l[a] * alpha + group_sum(sum);
      m[a] = m_new;
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[a][c] *= alpha;
    }
    __syncthreads();

#pragma unroll 4
    for (int jl = 0; jl < kKeyStep; ++jl) {
      float pa[kRows];
#pragma unroll
      for (int a = 0; a < kRows; ++a) pa[a] = p_s[(ty * kRows + a) * (kKeyStep + 1) + jl];
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const float vv = v_s[jl * kStride + tx + c * kColGroups];
#pragma unroll
        for (int a = 0; a < kRows; ++a) acc[a][c] = fmaf(pa[a], vv, acc[a][c]);
      }
    }
  }

  __syncthreads();  // q_s is reused to stage out for coalesced stores
#pragma unroll
  for (int a = 0; a < kRows; ++a) {
    const int il = ty * kRows + a;
    const float inv = l[a] > 0.f ? 1.f / l[a] : 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) q_s[il * kStride + tx + c * kColGroups] = acc[a][c] * inv;
    if (tx == 0 && il < nq)
      lse[(int64_t(b) * d.q_heads + h) * d.seqlen + q0 + il] = m[a] + logf(l[a]);
  }
  __syncthreads();
  store_tile<T, kQueryTile, kD>(q_s, nq, d.head_dim, out + q_offset, q_stride);
}

// D[b, h, i] = Σ_e dout[b, i, h, e] · out[b, i, h, e] (fp32 [B, Hq, S]): one warp per
// (b, i, h) row of q's layout.
template <class T>
__global__ void dout_dot_out_kernel(const T* __restrict__ dout, const T* __restrict__ out,
                                    AttnDims d, float* __restrict__ delta) {
  const int64_t rows = int64_t(d.batch) * d.seqlen * d.q_heads;
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float sum = 0.f;
  for (int e = lane; e < d.head_dim; e += 32)
    sum = fmaf(to_f32(dout[r * d.head_dim + e]), to_f32(out[r * d.head_dim + e]), sum);
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) {
    const int64_t h = r % d.q_heads, bt = r / d.q_heads, i = bt % d.seqlen, b = bt / d.seqlen;
    delta[(b * d.q_heads + h) * d.seqlen + i] = sum;
  }
}

// Grid (ceil(S / 64), Hq, B): dq for 64 queries of one head. Per key tile of 32, with
// p = exp(scale·q·k − lse) and ds = p·(dout·v − D): dq += ds·k; dq is scaled once at the end.
template <class T, int kD>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                 const T* __restrict__ v, const int* __restrict__ doc_start,
                                 const float* __restrict__ lse, const float* __restrict__ delta,
                                 const T* __restrict__ dout, AttnDims d, float scale,
                                 T* __restrict__ dq) {
  constexpr int kStride = tile_stride<kD>(), kRows = kQueryTile / kRowGroups,
                kKeys = kKeyStep / kColGroups, kCols = kD / kColGroups;
  extern __shared__ float smem[];
  float* q_s = smem;                                           // [kQueryTile][kStride]
  float* do_s = q_s + kQueryTile * kStride;                    // [kQueryTile][kStride]
  float* k_s = do_s + kQueryTile * kStride;                    // [kKeyStep][kStride]
  float* v_s = k_s + kKeyStep * kStride;                       // [kKeyStep][kStride]
  float* ds_s = v_s + kKeyStep * kStride;                      // [kQueryTile][kKeyStep + 1]
  float* lse_s = ds_s + kQueryTile * (kKeyStep + 1);           // [kQueryTile]
  float* delta_s = lse_s + kQueryTile;                         // [kQueryTile]
  int* qdoc_s = reinterpret_cast<int*>(delta_s + kQueryTile);  // [kQueryTile]
  int* kdoc_s = qdoc_s + kQueryTile;                           // [kKeyStep]

  const int tx = threadIdx.x % kColGroups, ty = threadIdx.x / kColGroups;
  const int q0 = blockIdx.x * kQueryTile, h = blockIdx.y, b = blockIdx.z;
  const int kh = h / (d.q_heads / d.kv_heads), nq = min(kQueryTile, d.seqlen - q0);
  const int64_t row0 = int64_t(b) * d.seqlen;
  const int64_t q_stride = int64_t(d.q_heads) * d.head_dim;
  const int64_t kv_stride = int64_t(d.kv_heads) * d.head_dim;
  const int64_t q_offset = ((row0 + q0) * d.q_heads + h) * d.head_dim;
  const int64_t stat_offset = (int64_t(b) * d.q_heads + h) * d.seqlen + q0;
  load_tile<T, kQueryTile, kD>(q + q_offset, q_stride, nq, d.head_dim, q_s);
  load_tile<T, kQueryTile, kD>(dout + q_offset, q_stride, nq, d.head_dim, do_s);
  load_row_values<kQueryTile>(lse + stat_offset, nq, lse_s);
  load_row_values<kQueryTile>(delta + stat_offset, nq, delta_s);
  load_docs<kQueryTile>(doc_start, row0 + q0, nq, kNoQuery, qdoc_s);
  const int kv_lo = doc_start ? doc_start[row0 + q0] : 0, kv_hi = q0 + nq;

  float acc[kRows][kCols];
#pragma unroll
  for (int a = 0; a < kRows; ++a)
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[a][c] = 0.f;

  for (int k0 = kv_lo; k0 < kv_hi; k0 += kKeyStep) {
    const int nk = min(kKeyStep, kv_hi - k0);
    __syncthreads();  // the previous step is done with k_s, v_s and ds_s
    const int64_t kv_offset = ((row0 + k0) * d.kv_heads + kh) * d.head_dim;
    load_tile<T, kKeyStep, kD>(k + kv_offset, kv_stride, nk, d.head_dim, k_s);
    load_tile<T, kKeyStep, kD>(v + kv_offset, kv_stride, nk, d.head_dim, v_s);
    load_docs<kKeyStep>(doc_start, row0 + k0, nk, kNoKey, kdoc_s);
    __syncthreads();

    float s[kRows][kKeys] = {}, dp[kRows][kKeys] = {};
#pragma unroll 4
    for (int e = 0; e < kD; ++e) {
      float qa[kRows], da[kRows], kb[kKeys], vb[kKeys];
#pragma unroll
      for (int a = 0; a < kRows; ++a) {
        qa[a] = q_s[(ty * kRows + a) * kStride + e];
        da[a] = do_s[(ty * kRows + a) * kStride + e];
      }
#pragma unroll
      for (int c = 0; c < kKeys; ++c) {
        kb[c] = k_s[(tx + c * kColGroups) * kStride + e];
        vb[c] = v_s[(tx + c * kColGroups) * kStride + e];
      }
#pragma unroll
      for (int a = 0; a < kRows; ++a)
#pragma unroll
        for (int c = 0; c < kKeys; ++c) {
          s[a][c] = fmaf(qa[a], kb[c], s[a][c]);
          dp[a][c] = fmaf(da[a], vb[c], dp[a][c]);
        }
    }

#pragma unroll
    for (int a = 0; a < kRows; ++a) {
      const int il = ty * kRows + a;
#pragma unroll
      for (int c = 0; c < kKeys; ++c) {
        const int jl = tx + c * kColGroups;
        const bool allowed = k0 + jl <= q0 + il && kdoc_s[jl] == qdoc_s[il];
        const float p = allowed ? __expf(s[a][c] * scale - lse_s[il]) : 0.f;
        ds_s[il * (kKeyStep + 1) + jl] = p * (dp[a][c] - delta_s[il]);
      }
    }
    __syncthreads();

#pragma unroll 4
    for (int jl = 0; jl < kKeyStep; ++jl) {
      float dsa[kRows];
#pragma unroll
      for (int a = 0; a < kRows; ++a) dsa[a] = ds_s[(ty * kRows + a) * (kKeyStep + 1) + jl];
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const float kv = k_s[jl * kStride + tx + c * kColGroups];
#pragma unroll
        for (int a = 0; a < kRows; ++a) acc[a][c] = fmaf(dsa[a], kv, acc[a][c]);
      }
    }
  }

  __syncthreads();  // q_s is reused to stage dq
#pragma unroll
  for (int a = 0; a < kRows; ++a)
#pragma unroll
    for (int c = 0; c < kCols; ++c)
      q_s[(ty * kRows + a) * kStride + tx + c * kColGroups] = acc[a][c] * scale;
  __syncthreads();
  store_tile<T, kQueryTile, kD>(q_s, nq, d.head_dim, dq + q_offset, q_stride);
}

// Grid (ceil(S / 32), Hkv, B): dk and dv for 32 keys of one kv head. For each q head of the
// group in order, and each step of 32 queries from the tile's first key to the end of its last
// key's document: dv += pᵀ·dout, dk += dsᵀ·q (dk scaled once at the end). Here ty owns 2 keys
// and tx the queries (then dims) tx, tx + 8, …
template <class T, int kD>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                   const T* __restrict__ v, const int* __restrict__ doc_start,
                                   const int* __restrict__ doc_end, const float* __restrict__ lse,
                                   const float* __restrict__ delta, const T* __restrict__ dout,
                                   AttnDims d, float scale, T* __restrict__ dk,
                                   T* __restrict__ dv) {
  constexpr int kStride = tile_stride<kD>(), kKeys = kKeyTile / kRowGroups,
                kQueries = kQueryStep / kColGroups, kCols = kD / kColGroups;
  static_assert(kKeyTile == kQueryStep, "q_s and do_s stage the dk and dv tiles");
  extern __shared__ float smem[];
  float* k_s = smem;                                           // [kKeyTile][kStride]
  float* v_s = k_s + kKeyTile * kStride;                       // [kKeyTile][kStride]
  float* q_s = v_s + kKeyTile * kStride;                       // [kQueryStep][kStride]
  float* do_s = q_s + kQueryStep * kStride;                    // [kQueryStep][kStride]
  float* p_s = do_s + kQueryStep * kStride;                    // [kKeyTile][kQueryStep + 1]
  float* ds_s = p_s + kKeyTile * (kQueryStep + 1);             // [kKeyTile][kQueryStep + 1]
  float* lse_s = ds_s + kKeyTile * (kQueryStep + 1);           // [kQueryStep]
  float* delta_s = lse_s + kQueryStep;                         // [kQueryStep]
  int* kdoc_s = reinterpret_cast<int*>(delta_s + kQueryStep);  // [kKeyTile]
  int* qdoc_s = kdoc_s + kKeyTile;                             // [kQueryStep]

  const int tx = threadIdx.x % kColGroups, ty = threadIdx.x / kColGroups;
  const int k0 = blockIdx.x * kKeyTile, kh = blockIdx.y, b = blockIdx.z;
  const int group = d.q_heads / d.kv_heads, nk = min(kKeyTile, d.seqlen - k0);
  const int64_t row0 = int64_t(b) * d.seqlen;
  const int64_t q_stride = int64_t(d.q_heads) * d.head_dim;
  const int64_t kv_stride = int64_t(d.kv_heads) * d.head_dim;
  const int64_t kv_offset = ((row0 + k0) * d.kv_heads + kh) * d.head_dim;
  load_tile<T, kKeyTile, kD>(k + kv_offset, kv_stride, nk, d.head_dim, k_s);
  load_tile<T, kKeyTile, kD>(v + kv_offset, kv_stride, nk, d.head_dim, v_s);
  load_docs<kKeyTile>(doc_start, row0 + k0, nk, kNoKey, kdoc_s);
  const int q_hi = doc_end ? doc_end[row0 + k0 + nk - 1] : d.seqlen;

  float acc_k[kKeys][kCols], acc_v[kKeys][kCols];
#pragma unroll
  for (int a = 0; a < kKeys; ++a)
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc_k[a][c] = acc_v[a][c] = 0.f;

  for (int h = kh * group; h < (kh + 1) * group; ++h) {
    for (int i0 = k0; i0 < q_hi; i0 += kQueryStep) {
      const int nq = min(kQueryStep, q_hi - i0);
      __syncthreads();  // the previous step is done with q_s, do_s, p_s and ds_s
      const int64_t q_offset = ((row0 + i0) * d.q_heads + h) * d.head_dim;
      const int64_t stat_offset = (int64_t(b) * d.q_heads + h) * d.seqlen + i0;
      load_tile<T, kQueryStep, kD>(q + q_offset, q_stride, nq, d.head_dim, q_s);
      load_tile<T, kQueryStep, kD>(dout + q_offset, q_stride, nq, d.head_dim, do_s);
      load_row_values<kQueryStep>(lse + stat_offset, nq, lse_s);
      load_row_values<kQueryStep>(delta + stat_offset, nq, delta_s);
      load_docs<kQueryStep>(doc_start, row0 + i0, nq, kNoQuery, qdoc_s);
      __syncthreads();

      float s[kKeys][kQueries] = {}, dp[kKeys][kQueries] = {};
#pragma unroll 4
      for (int e = 0; e < kD; ++e) {
        float ka[kKeys], va[kKeys], qb[kQueries], db[kQueries];
#pragma unroll
        for (int a = 0; a < kKeys; ++a) {
          ka[a] = k_s[(ty * kKeys + a) * kStride + e];
          va[a] = v_s[(ty * kKeys + a) * kStride + e];
        }
#pragma unroll
        for (int c = 0; c < kQueries; ++c) {
          qb[c] = q_s[(tx + c * kColGroups) * kStride + e];
          db[c] = do_s[(tx + c * kColGroups) * kStride + e];
        }
#pragma unroll
        for (int a = 0; a < kKeys; ++a)
#pragma unroll
          for (int c = 0; c < kQueries; ++c) {
            s[a][c] = fmaf(ka[a], qb[c], s[a][c]);
            dp[a][c] = fmaf(va[a], db[c], dp[a][c]);
          }
      }

#pragma unroll
      for (int a = 0; a < kKeys; ++a) {
        const int jl = ty * kKeys + a;
#pragma unroll
        for (int c = 0; c < kQueries; ++c) {
          const int il = tx + c * kColGroups;
          const bool allowed = i0 + il >= k0 + jl && qdoc_s[il] == kdoc_s[jl];
          const float p = allowed ? __expf(s[a][c] * scale - lse_s[il]) : 0.f;
          p_s[jl * (kQueryStep + 1) + il] = p;
          ds_s[jl * (kQueryStep + 1) + il] = p * (dp[a][c] - delta_s[il]);
        }
      }
      __syncthreads();

#pragma unroll 4
      for (int il = 0; il < kQueryStep; ++il) {
        float pa[kKeys], dsa[kKeys];
#pragma unroll
        for (int a = 0; a < kKeys; ++a) {
          pa[a] = p_s[(ty * kKeys + a) * (kQueryStep + 1) + il];
          dsa[a] = ds_s[(ty * kKeys + a) * (kQueryStep + 1) + il];
        }
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const float dov = do_s[il * kStride + tx + c * kColGroups];
          const float qv = q_s[il * kStride + tx + c * kColGroups];
#pragma unroll
          for (int a = 0; a < kKeys; ++a) {
            acc_v[a][c] = fmaf(pa[a], dov, acc_v[a][c]);
            acc_k[a][c] = fmaf(dsa[a], qv, acc_k[a][c]);
          }
        }
      }
    }
  }

  __syncthreads();  // q_s and do_s are reused to stage dk and dv
#pragma unroll
  for (int a = 0; a < kKeys; ++a)
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      q_s[(ty * kKeys + a) * kStride + tx + c * kColGroups] = acc_k[a][c] * scale;
      do_s[(ty * kKeys + a) * kStride + tx + c * kColGroups] = acc_v[a][c];
    }
  __syncthreads();
  store_tile<T, kKeyTile, kD>(q_s, nk, d.head_dim, dk + kv_offset, kv_stride);
  store_tile<T, kKeyTile, kD>(do_s, nk, d.head_dim, dv + kv_offset, kv_stride);
}

// Shared-memory bytes of each kernel for head-dim bucket kD.
template <int kD>
constexpr size_t forward_smem() {
  return sizeof(float) *
             ((kQueryTile + 2 * kKeyStep) * tile_stride<kD>() + kQueryTile * (kKeyStep + 1)) +
         sizeof(int) * (kQueryTile + kKeyStep);
}
template <int kD>
constexpr size_t dq_smem() {
  return sizeof(float) * ((2 * kQueryTile + 2 * kKeyStep) * tile_stride<kD>() +
                          kQueryTile * (kKeyStep + 1) + 2 * kQueryTile) +
         sizeof(int) * (kQueryTile + kKeyStep);
}
template <int kD>
constexpr size_t dkdv_smem() {
  return sizeof(float) * ((2 * kKeyTile + 2 * kQueryStep) * tile_stride<kD>() +
                          2 * kKeyTile * (kQueryStep + 1) + 2 * kQueryStep) +
         sizeof(int) * (kKeyTile + kQueryStep);
}

// Calls f(std::integral_constant<int, kD>) with the head-dim bucket that holds head_dim.
template <class F>
void with_head_dim_bucket(int head_dim, F&& f) {
  if (head_dim <= 32)
    f(std::integral_constant<int, 32>{});
  else if (head_dim <= 64)
    f(std::integral_constant<int, 64>{});
  else
    f(std::integral_constant<int, 128>{});
}

AttnDims check_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx) {
  require_cuda(q, "attention", "q");
  require_cuda(k, "attention", "k");
  require_cuda(v, "attention", "v");
  require_cuda(seq_idx, "attention", "seq_idx");
  if (q.ndim() != 4) throw Error("attention", "q shape", "[B, S, Hq, dh]", shape_str(q.shape()));
  if (k.ndim() != 4) throw Error("attention", "k shape", "[B, S, Hkv, dh]", shape_str(k.shape()));
  const AttnDims d{int(q.size(0)), int(q.size(1)), int(q.size(2)), int(k.size(2)), int(q.size(3))};
  if (d.kv_heads < 1 || d.q_heads % d.kv_heads != 0)
    throw Error("attention", "num_key_value_heads",
                "a divisor of Hq = " + std::to_string(d.q_heads), std::to_string(d.kv_heads));
  expect_shape(k, {d.batch, d.seqlen, d.kv_heads, d.head_dim}, "attention k");
  expect_shape(v, {d.batch, d.seqlen, d.kv_heads, d.head_dim}, "attention v");
  if (k.dtype() != q.dtype() || v.dtype() != q.dtype())
    throw Error("attention", "k/v dtype", dtype_name(q.dtype()),
                std::string(dtype_name(k.dtype())) + "/" + dtype_name(v.dtype()));
  if (seq_idx.defined()) {
    expect_shape(seq_idx, {d.batch, d.seqlen}, "attention seq_idx");
    if (seq_idx.dtype() != DType::I32)
      throw Error("attention", "seq_idx dtype", "I32", dtype_name(seq_idx.dtype()));
  }
  if (d.head_dim > kMaxHeadDim)
    throw Error("attention", "head_dim", "at most " + std::to_string(kMaxHeadDim) + " on CUDA",
                std::to_string(d.head_dim));
  return d;
}

// An Error unless t is a CUDA tensor of `shape` in `dtype`.
void expect_tensor(const Tensor& t, const Shape& shape, DType dtype, const char* name) {
  require_cuda(t, "attention", name);
  expect_shape(t, shape, std::string("attention ") + name);
  if (t.dtype() != dtype)
    throw Error("attention", std::string(name) + " dtype", dtype_name(dtype),
                dtype_name(t.dtype()));
}

void expect_lse(const Tensor& lse, const AttnDims& d) {
  require_cuda(lse, "attention", "lse");
  expect_shape(lse, {d.batch, d.q_heads, d.seqlen}, "attention lse");
  if (lse.dtype() != DType::F32)
    throw Error("attention", "lse dtype", "F32 (softmax statistics are fp32 on CUDA)",
                dtype_name(lse.dtype()));
}

// doc_start and doc_end ([2, B, S] I32) of seq_idx; undefined without documents.
Tensor document_bounds(const Tensor& seq_idx, const AttnDims& d) {
  if (!seq_idx.defined()) return Tensor();
  Tensor bounds = Tensor::empty({2, d.batch, d.seqlen}, DType::I32, Device::CUDA);
  int* start = ptr<int>(bounds);
  document_bounds_kernel<<<d.batch, kScanThreads, 0, stream()>>>(
      ptr<int32_t>(seq_idx), d.seqlen, start, start + int64_t(d.batch) * d.seqlen);
  NH_CUDA_CHECK_LAUNCH();
  return bounds;
}

// The query row tiles per warp of the tensor-core kernels for the version the playground asks
// for: 2 (flash), 1 (flash16), or 0 for the CUDA-core kernels (simt).
int flash_row_tiles() {
  constexpr int kRowTiles[] = {2, 1, 0};
  return kRowTiles[kernel_version("attention")];
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx,
                       double scale, Tensor& out, Tensor& lse) {
  const AttnDims d = check_attention(q, k, v, seq_idx);
  expect_tensor(out, q.shape(), q.dtype(), "out");
  expect_lse(lse, d);
  if (q.numel() == 0) return;
  const Tensor bounds = document_bounds(seq_idx, d);
  const int* doc_start = bounds.defined() ? ptr<int>(bounds) : nullptr;
  const int row_tiles = flash_row_tiles();
  if (q.dtype() == DType::BF16 && row_tiles > 0 &&
      flash_attention_supported(d, {q.raw(), k.raw(), v.raw(), out.raw()})) {
    flash_attention_forward(ptr<const bf16>(q), ptr<const bf16>(k), ptr<const bf16>(v), doc_start,
                            d, float(scale), row_tiles, ptr<bf16>(out), ptr<float>(lse));
    return;
  }
  const dim3 grid(blocks_for(d.seqlen, kQueryTile), d.q_heads, d.batch);
  with_gpu_float_type(q.dtype(), [&](auto zero) {
    using T = decltype(zero);
    with_head_dim_bucket(d.head_dim, [&](auto bucket) {
      constexpr int kD = decltype(bucket)::value;
      launch_with_smem(attention_forward_kernel<T, kD>, grid, kThreads, forward_smem<kD>(),
                       ptr<const T>(q), ptr<const T>(k), ptr<const T>(v), doc_start, d,
                       float(scale), ptr<T>(out), ptr<float>(lse));
    });
  });
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx,
                        double scale, const Tensor& out, const Tensor& lse, const Tensor& dout,
                        Tensor& dq, Tensor& dk, Tensor& dv) {
  const AttnDims d = check_attention(q, k, v, seq_idx);
  expect_tensor(out, q.shape(), q.dtype(), "out");
  expect_tensor(dout, q.shape(), q.dtype(), "dout");
  expect_tensor(dq, q.shape(), q.dtype(), "dq");
  expect_tensor(dk, k.shape(), q.dtype(), "dk");
  expect_tensor(dv, v.shape(), q.dtype(), "dv");
  expect_lse(lse, d);
  if (q.numel() == 0) return;
  const Tensor bounds = document_bounds(seq_idx, d);
  const int* doc_start = bounds.defined() ? ptr<int>(bounds) : nullptr;
  const int* doc_end = bounds.defined() ? doc_start + int64_t(d.batch) * d.seqlen : nullptr;
  const Tensor delta = Tensor::empty({d.batch, d.q_heads, d.seqlen}, DType::F32, Device::CUDA);
  with_gpu_float_type(q.dtype(), [&](auto zero) {
    using T = decltype(zero);
    constexpr int kDeltaThreads = 256;
    const int64_t rows = int64_t(d.batch) * d.seqlen * d.q_heads;
    dout_dot_out_kernel<T><<<blocks_for(rows, kDeltaThreads / 32), kDeltaThreads, 0, stream()>>>(
        ptr<const T>(dout), ptr<const T>(out), d, ptr<float>(delta));
    NH_CUDA_CHECK_LAUNCH();
    if constexpr (std::is_same_v<T, bf16>) {
      const int row_tiles = flash_row_tiles();
      if (row_tiles > 0 &&
          flash_attention_supported(
              d, {q.raw(), k.raw(), v.raw(), dout.raw(), dq.raw(), dk.raw(), dv.raw()})) {
        flash_attention_backward(ptr<const T>(q), ptr<const T>(k), ptr<const T>(v), doc_start,
                                 doc_end, ptr<const float>(lse), ptr<const float>(delta),
                                 ptr<const T>(dout), d, float(scale), row_tiles, ptr<T>(dq),
                                 ptr<T>(dk), ptr<T>(dv));
        return;
      }
    }
    with_head_dim_bucket(d.head_dim, [&](auto bucket) {
      constexpr int kD = decltype(bucket)::value;
      launch_with_smem(attention_backward_dq_kernel<T, kD>,
                       dim3(blocks_for(d.seqlen, kQueryTile), d.q_heads, d.batch), kThreads,
                       dq_smem<kD>(), ptr<const T>(q), ptr<const T>(k), ptr<const T>(v), doc_start,
                       ptr<const float>(lse), ptr<const float>(delta), ptr<const T>(dout), d,
                       float(scale), ptr<T>(dq));
      launch_with_smem(attention_backward_dkdv_kernel<T, kD>,
                       dim3(blocks_for(d.seqlen, kKeyTile), d.kv_heads, d.batch), kThreads,
                       dkdv_smem<kD>(), ptr<const T>(q), ptr<const T>(k), ptr<const T>(v),
                       doc_start, doc_end, ptr<const float>(lse), ptr<const float>(delta),
                       ptr<const T>(dout), d, float(scale), ptr<T>(dk), ptr<T>(dv));
    });
  });
}

}  // namespace nh::cuda
