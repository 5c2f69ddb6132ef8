// Causal GQA attention with documents on the tensor cores (bf16 in, fp32 accumulators), in the
// manner of FlashAttention-2: a warp owns 16 rows (queries, or keys in the dk/dv kernel), scores
// live in mma fragments and go from one product into the next as bf16 A fragments (mma.cuh),
// and the softmax runs in the base-2 domain (scores pre-multiplied by scale·log2 e).
//
//   forward: grid (query tiles of 64, Hq, B), 4 warps; key tiles of 64 through shared memory;
//            running max m and sum l per row, out = acc / l, lse = (m + log2 l)·ln 2.
//   dq:      grid (query tiles of 64, Hq, B); per key tile P = exp2(s − lse₂), dP = dout·vᵀ,
//            dS = P∘(dP − delta), dq += dS·k.
//   dk, dv:  grid (key tiles of 64, Hkv, B); for each q head of the group in turn and each query
//            tile of 32: Pᵀ, dv += Pᵀ·dout, dPᵀ = v·doutᵀ, dSᵀ, dk += dSᵀ·q.
// Nothing is accumulated across blocks, so the backward is deterministic.
//
// Masks as ops/cuda/attention.cu: key j is visible to query i iff doc_start[i] <= j <= i; rows
// past the sequence are zero in shared memory and never stored.
#include <cuda_bf16.h>

#include <cmath>
#include <type_traits>

#include "ops/cuda/attention_flash.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/mma.cuh"

namespace nh::cuda {

namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kWarpRows = 16;
constexpr int kTile = 64;       // the rows a block owns; key tiles of forward and dq
constexpr int kQueryStep = 32;  // query tiles of the dk/dv kernel
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared-memory row stride (elements) of a tile of head-dim bucket kD: 16 bytes of padding put
// the 8 rows a fragment load touches in different banks.
template <int kD>
constexpr int row_stride() {
  return kD + 8;
}

template <int kRows, int kD>
__device__ void store_rows(const bf16* src, int n, int head_dim, bf16* __restrict__ dst,
                           int64_t stride) {
  constexpr int kChunks = kD / 8;
  for (int idx = threadIdx.x; idx < kRows * kChunks; idx += kThreads) {
    const int r = idx / kChunks, e = idx % kChunks * 8;
    if (r < n && e < head_dim)
      *reinterpret_cast<uint4*>(dst + r * stride + e) =
          *reinterpret_cast<const uint4*>(src + r * row_stride<kD>() + e);
  }
}

// Rows [0, n) of a [rows, head_dim] slice with rows `stride` elements apart into a tile of kRows
// rows, 16 bytes at a time; rows >= n and dims >= head_dim are zero.
template <int kRows, int kD>
__device__ void load_rows(const bf16* __restrict__ src, int64_t stride, int n, int head_dim,
                          bf16* dst) {
  constexpr int kChunks = kD / 8;
  for (int idx = threadIdx.x; idx < kRows * kChunks; idx += kThreads) {
    const int r = idx / kChunks, e = idx % kChunks * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < n && e < head_dim) v = *reinterpret_cast<const uint4*>(src + r * stride + e);
    *reinterpret_cast<uint4*>(dst + r * row_stride<kD>() + e) = v;
  }
}

// load_rows through cp.async: the rows land later (the zero padding is stored at once).
template <int kRows, int kD>
__device__ void load_rows_async(const bf16* __restrict__ src, int64_t stride, int n, int head_dim,
                                bf16* dst) {
  constexpr int kChunks = kD / 8;
  for (int idx = threadIdx.x; idx < kRows * kChunks; idx += kThreads) {
    const int r = idx / kChunks, e = idx % kChunks * 8;
    bf16* to = dst + r * row_stride<kD>() + e;
    if (r < n && e < head_dim)
      cp_async16(to, src + r * stride + e);
    else
      *reinterpret_cast<uint4*>(to) = make_uint4(0, 0, 0, 0);
  }
}

// C fragments of a warp's 16 × kD product, scaled, into rows [16w, 16w + 16) of a tile.
template <int kD>
__device__ void stage_rows(const float (&acc)[kD / 8][4], float scale, int w, const Lane& l,
                           bf16* tile) {
  bf16* p = tile + (w * kWarpRows + l.g) * row_stride<kD>() + 2 * l.c;
#pragma unroll
  for (int n = 0; n < kD / 8; ++n) {
    *reinterpret_cast<uint32_t*>(p + n * 8) = pack_bf16(acc[n][0] * scale, acc[n][1] * scale);
    *reinterpret_cast<uint32_t*>(p + 8 * row_stride<kD>() + n * 8) =
        pack_bf16(acc[n][2] * scale, acc[n][3] * scale);
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// The offset of token (b, t), head h in a [B, S, H, head_dim] tensor.
__device__ __forceinline__ int64_t at(const AttnDims& d, int b, int t, int heads, int h) {
  return ((int64_t(b) * d.seqlen + t) * heads + h) * d.head_dim;
}

// s[j] (the 16 × 8 tiles of a warp's 16 × 8·kN product) = A · Bᵀ with A rows [16w, 16w + 16)
// of tile `a` and B rows [0, 8·kN) of tile `b`, both [rows][kD].
template <int kD, int kN>
__device__ void product_abt(const bf16* a, const bf16* b, int w, float (&s)[kN][4]) {
#pragma unroll
  for (int j = 0; j < kN; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kD; kk += 16) {
    uint32_t af[4];
    load_a(a, row_stride<kD>(), w * kWarpRows, kk, af);
#pragma unroll
    for (int j = 0; j < kN; j += 2) {
      uint32_t bf[2][2];
      load_b_transposed(b, row_stride<kD>(), j * 8, kk, bf);
      mma_bf16(s[j], af, bf[0]);
      mma_bf16(s[j + 1], af, bf[1]);
    }
  }
}

// acc (16 × kD) += P · X with P the warp's 16 × 8·kN fragments and X rows [0, 8·kN) of tile x.
template <int kD, int kN>
__device__ void accumulate_px(const float (&p)[kN][4], const bf16* x, float (&acc)[kD / 8][4]) {
#pragma unroll
  for (int ks = 0; ks < kN / 2; ++ks) {
    uint32_t af[4];
    c_to_a(p[2 * ks], p[2 * ks + 1], af);
#pragma unroll
    for (int n = 0; n < kD / 8; n += 2) {
      uint32_t bf[2][2];
      load_b(x, row_stride<kD>(), ks * 16, n * 8, bf);
      mma_bf16(acc[n], af, bf[0]);
      mma_bf16(acc[n + 1], af, bf[1]);
    }
  }
}

template <int kD>
__global__ void __launch_bounds__(kThreads)
    flash_forward_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                         const bf16* __restrict__ v, const int* __restrict__ doc_start, AttnDims d,
                         float scale_log2, bf16* __restrict__ out, float* __restrict__ lse) {
  constexpr int kS = row_stride<kD>(), kN = kTile / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* k_s = q_s + kTile * kS;
  bf16* v_s = k_s + kTile * kS;
  const Lane l;
  const int w = threadIdx.x / 32;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;  // the longest rows first
  const int h = blockIdx.y, b = blockIdx.z, kh = h / (d.q_heads / d.kv_heads);
  const int nq = min(kTile, d.seqlen - q0);
  const int64_t row0 = int64_t(b) * d.seqlen;
  load_rows<kTile, kD>(q + at(d, b, q0, d.q_heads, h), int64_t(d.q_heads) * d.head_dim, nq,
                       d.head_dim, q_s);
  // This thread's two rows (queries) and the first key each may see.
  const int row[2] = {q0 + w * kWarpRows + l.g, q0 + w * kWarpRows + l.g + 8};
  int first[2];
  for (int r = 0; r < 2; ++r)
    first[r] = doc_start ? doc_start[row0 + min(row[r], d.seqlen - 1)] : 0;
  const int kv_lo = doc_start ? doc_start[row0 + q0] : 0, kv_hi = q0 + nq;

  float acc[kD / 8][4] = {}, m[2] = {-INFINITY, -INFINITY}, lsum[2] = {0.f, 0.f};
  for (int k0 = kv_lo; k0 < kv_hi; k0 += kTile) {
    const int nk = min(kTile, kv_hi - k0);
    __syncthreads();  // every warp is done with the previous k_s, v_s
    load_rows<kTile, kD>(k + at(d, b, k0, d.kv_heads, kh), int64_t(d.kv_heads) * d.head_dim, nk,
                         d.head_dim, k_s);
    load_rows<kTile, kD>(v + at(d, b, k0, d.kv_heads, kh), int64_t(d.kv_heads) * d.head_dim, nk,
                         d.head_dim, v_s);
    __syncthreads();
    float s[kN][4];
    product_abt<kD, kN>(q_s, k_s, w, s);
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + j * 8 + 2 * l.c + (e & 1), r = e / 2;
        const bool visible = key <= row[r] && key >= first[r] && key < kv_hi;
        s[j][e] = visible ? s[j][e] * scale_log2 : -INFINITY;
        mx[r] = fmaxf(mx[r], s[j][e]);
      }
    float alpha[2], ref[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m[r], quad_max(mx[r]));
      // A row with no visible key yet keeps l = acc = 0: exponents relative to 0, not −inf.
      ref[r] = m_new == -INFINITY ? 0.f : m_new;
      alpha[r] = exp2f(m[r] - ref[r]);
      m[r] = m_new;
      lsum[r] *= alpha[r];
    }
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = exp2f(s[j][e] - ref[e / 2]);
        lsum[e / 2] += s[j][e];
      }
#pragma unroll
    for (int n = 0; n < kD / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[n][e] *= alpha[e / 2];
    accumulate_px<kD, kN>(s, v_s, acc);
  }

  __syncthreads();  // q_s becomes the staging tile of out
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lsum[r] = quad_sum(lsum[r]);
    inv[r] = lsum[r] > 0.f ? 1.f / lsum[r] : 0.f;
    if (l.c == 0 && row[r] < q0 + nq)
      lse[(int64_t(b) * d.q_heads + h) * d.seqlen + row[r]] = (m[r] + log2f(lsum[r])) * kLn2;
  }
#pragma unroll
  for (int n = 0; n < kD / 8; ++n) {
    acc[n][0] *= inv[0];
    acc[n][1] *= inv[0];
    acc[n][2] *= inv[1];
    acc[n][3] *= inv[1];
  }
  stage_rows<kD>(acc, 1.f, w, l, q_s);
  __syncthreads();
  store_rows<kTile, kD>(q_s, nq, d.head_dim, out + at(d, b, q0, d.q_heads, h),
                        int64_t(d.q_heads) * d.head_dim);
}

template <int kD>
__global__ void __launch_bounds__(kThreads)
    flash_dq_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                    const bf16* __restrict__ v, const int* __restrict__ doc_start,
                    const float* __restrict__ lse, const float* __restrict__ delta,
                    const bf16* __restrict__ dout, AttnDims d, float scale, bf16* __restrict__ dq) {
  constexpr int kS = row_stride<kD>(), kN = kTile / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* do_s = q_s + kTile * kS;
  bf16* k_s = do_s + kTile * kS;
  bf16* v_s = k_s + kTile * kS;
  const Lane l;
  const int w = threadIdx.x / 32;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;
  const int h = blockIdx.y, b = blockIdx.z, kh = h / (d.q_heads / d.kv_heads);
  const int nq = min(kTile, d.seqlen - q0);
  const int64_t row0 = int64_t(b) * d.seqlen, q_stride = int64_t(d.q_heads) * d.head_dim;
  const int64_t kv_stride = int64_t(d.kv_heads) * d.head_dim;
  load_rows<kTile, kD>(q + at(d, b, q0, d.q_heads, h), q_stride, nq, d.head_dim, q_s);
  load_rows<kTile, kD>(dout + at(d, b, q0, d.q_heads, h), q_stride, nq, d.head_dim, do_s);
  const float scale_log2 = scale * kLog2e;
  const int row[2] = {q0 + w * kWarpRows + l.g, q0 + w * kWarpRows + l.g + 8};
  int first[2];
  float lse2[2], dlt[2];
  for (int r = 0; r < 2; ++r) {
    const int t = min(row[r], d.seqlen - 1);
    first[r] = doc_start ? doc_start[row0 + t] : 0;
    const int64_t stat = (int64_t(b) * d.q_heads + h) * d.seqlen + t;
    lse2[r] = lse[stat] * kLog2e;
    dlt[r] = delta[stat];
  }
  const int kv_lo = doc_start ? doc_start[row0 + q0] : 0, kv_hi = q0 + nq;

  float acc[kD / 8][4] = {};
  for (int k0 = kv_lo; k0 < kv_hi; k0 += kTile) {
    const int nk = min(kTile, kv_hi - k0);
    __syncthreads();
    load_rows<kTile, kD>(k + at(d, b, k0, d.kv_heads, kh), kv_stride, nk, d.head_dim, k_s);
    load_rows<kTile, kD>(v + at(d, b, k0, d.kv_heads, kh), kv_stride, nk, d.head_dim, v_s);
    __syncthreads();
    float p[kN][4], dp[kN][4];
    product_abt<kD, kN>(q_s, k_s, w, p);
    product_abt<kD, kN>(do_s, v_s, w, dp);
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + j * 8 + 2 * l.c + (e & 1), r = e / 2;
        const bool visible = key <= row[r] && key >= first[r] && key < kv_hi;
        const float pr = visible ? exp2f(p[j][e] * scale_log2 - lse2[r]) : 0.f;
        dp[j][e] = pr * (dp[j][e] - dlt[r]);  // dS
      }
    accumulate_px<kD, kN>(dp, k_s, acc);
  }
  __syncthreads();
  stage_rows<kD>(acc, scale, w, l, q_s);
  __syncthreads();
  store_rows<kTile, kD>(q_s, nq, d.head_dim, dq + at(d, b, q0, d.q_heads, h), q_stride);
}

// One query tile of the dk/dv kernel's walk in shared memory: q and dout rows, lse₂, delta and
// doc_start per query. Two of them alternate: the next lands while the current is used.
template <int kD>
struct QueryTile {
  bf16 q[kQueryStep * row_stride<kD>()];
  bf16 dout[kQueryStep * row_stride<kD>()];
  float lse[kQueryStep], delta[kQueryStep];
  int first[kQueryStep];
};

template <int kD>
__global__ void __launch_bounds__(kThreads)
    flash_dkdv_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                      const bf16* __restrict__ v, const int* __restrict__ doc_start,
                      const int* __restrict__ doc_end, const float* __restrict__ lse,
                      const float* __restrict__ delta, const bf16* __restrict__ dout, AttnDims d,
                      float scale, bf16* __restrict__ dk, bf16* __restrict__ dv) {
  constexpr int kS = row_stride<kD>(), kN = kQueryStep / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* k_s = reinterpret_cast<bf16*>(smem);
  bf16* v_s = k_s + kTile * kS;
  QueryTile<kD>* tiles = reinterpret_cast<QueryTile<kD>*>(v_s + kTile * kS);
  const Lane l;
  const int w = threadIdx.x / 32;
  const int k0 = blockIdx.x * kTile, kh = blockIdx.y, b = blockIdx.z;
  const int group = d.q_heads / d.kv_heads, nk = min(kTile, d.seqlen - k0);
  const int64_t row0 = int64_t(b) * d.seqlen, q_stride = int64_t(d.q_heads) * d.head_dim;
  const int64_t kv_stride = int64_t(d.kv_heads) * d.head_dim;
  load_rows<kTile, kD>(k + at(d, b, k0, d.kv_heads, kh), kv_stride, nk, d.head_dim, k_s);
  load_rows<kTile, kD>(v + at(d, b, k0, d.kv_heads, kh), kv_stride, nk, d.head_dim, v_s);
  const float scale_log2 = scale * kLog2e;
  // This thread's two rows are keys; queries before k0 see none of them, and none past the end
  // of the last key's document does. The walk: every q head of the group, each over the query
  // tiles [q_lo, q_hi).
  const int key[2] = {k0 + w * kWarpRows + l.g, k0 + w * kWarpRows + l.g + 8};
  const int q_lo = k0, q_hi = doc_end ? doc_end[row0 + k0 + nk - 1] : d.seqlen;
  const int q_tiles = (q_hi - q_lo + kQueryStep - 1) / kQueryStep, steps = group * q_tiles;
  // Issues the copies of step s into tiles[s % 2] (lse pre-scaled to base 2 when it is used).
  auto issue = [&](int s) {
    QueryTile<kD>& tile = tiles[s % 2];
    const int h = kh * group + s / q_tiles, t0 = q_lo + s % q_tiles * kQueryStep;
    const int nt = min(kQueryStep, q_hi - t0);
    const int64_t stat0 = (int64_t(b) * d.q_heads + h) * d.seqlen + t0;
    load_rows_async<kQueryStep, kD>(q + at(d, b, t0, d.q_heads, h), q_stride, nt, d.head_dim,
                                    tile.q);
    load_rows_async<kQueryStep, kD>(dout + at(d, b, t0, d.q_heads, h), q_stride, nt, d.head_dim,
                                    tile.dout);
    for (int i = threadIdx.x; i < kQueryStep; i += kThreads) {
      if (i < nt) {
        cp_async4(&tile.lse[i], lse + stat0 + i);
        cp_async4(&tile.delta[i], delta + stat0 + i);
      } else {
        tile.lse[i] = tile.delta[i] = 0.f;
      }
      if (i < nt && doc_start)
        cp_async4(&tile.first[i], doc_start + row0 + t0 + i);
      else
        tile.first[i] = i < nt ? 0 : d.seqlen;  // past the tile: no key is visible
    }
    cp_async_commit();
  };

  float dk_acc[kD / 8][4] = {}, dv_acc[kD / 8][4] = {};
  if (steps > 0) issue(0);
  for (int s = 0; s < steps; ++s) {
    if (s + 1 < steps)
      issue(s + 1);
    else
      cp_async_commit();  // an empty group keeps the wait below uniform
    cp_async_wait<1>();
    __syncthreads();  // step s's tile (and, at s = 0, k_s and v_s) is in place
    const QueryTile<kD>& tile = tiles[s % 2];
    const int t0 = q_lo + s % q_tiles * kQueryStep;
    float p[kN][4], dp[kN][4];
    product_abt<kD, kN>(k_s, tile.q, w, p);      // sᵀ: keys × queries
    product_abt<kD, kN>(v_s, tile.dout, w, dp);  // dPᵀ
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = j * 8 + 2 * l.c + (e & 1), query = t0 + i, kr = key[e / 2];
        const bool visible = kr <= query && kr >= tile.first[i];
        p[j][e] = visible ? exp2f(p[j][e] * scale_log2 - tile.lse[i] * kLog2e) : 0.f;
        dp[j][e] = p[j][e] * (dp[j][e] - tile.delta[i]);  // dSᵀ
      }
    accumulate_px<kD, kN>(p, tile.dout, dv_acc);
    accumulate_px<kD, kN>(dp, tile.q, dk_acc);
    __syncthreads();  // everyone is done with tiles[s % 2] before step s + 2 refills it
  }
  __syncthreads();  // k_s and v_s become the staging tiles of dk and dv
  stage_rows<kD>(dk_acc, scale, w, l, k_s);
  stage_rows<kD>(dv_acc, 1.f, w, l, v_s);
  __syncthreads();
  store_rows<kTile, kD>(k_s, nk, d.head_dim, dk + at(d, b, k0, d.kv_heads, kh), kv_stride);
  store_rows<kTile, kD>(v_s, nk, d.head_dim, dv + at(d, b, k0, d.kv_heads, kh), kv_stride);
}

template <int kD>
constexpr size_t forward_smem() {
  return 3 * kTile * row_stride<kD>() * sizeof(bf16);
}
template <int kD>
constexpr size_t dq_smem() {
  return 4 * kTile * row_stride<kD>() * sizeof(bf16);
}
template <int kD>
constexpr size_t dkdv_smem() {
  return 2 * kTile * row_stride<kD>() * sizeof(bf16) + 2 * sizeof(QueryTile<kD>);
}

template <class F>
void with_bucket(int head_dim, F&& f) {
  if (head_dim <= 64)
    f(std::integral_constant<int, 64>{});
  else
    f(std::integral_constant<int, 128>{});
}

}  // namespace

bool flash_attention_supported(const AttnDims& d, std::initializer_list<const void*> pointers) {
  if (d.head_dim % 8 != 0 || d.head_dim > 128) return false;
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

void flash_attention_forward(const bf16* q, const bf16* k, const bf16* v, const int* doc_start,
                             const AttnDims& d, float scale, bf16* out, float* lse) {
  const dim3 grid(blocks_for(d.seqlen, kTile), d.q_heads, d.batch);
  with_bucket(d.head_dim, [&](auto bucket) {
    constexpr int kD = decltype(bucket)::value;
    launch_with_smem(flash_forward_kernel<kD>, grid, kThreads, forward_smem<kD>(), q, k, v,
                     doc_start, d, scale * kLog2e, out, lse);
  });
}

void flash_attention_backward(const bf16* q, const bf16* k, const bf16* v, const int* doc_start,
                              const int* doc_end, const float* lse, const float* delta,
                              const bf16* dout, const AttnDims& d, float scale, bf16* dq, bf16* dk,
                              bf16* dv) {
  with_bucket(d.head_dim, [&](auto bucket) {
    constexpr int kD = decltype(bucket)::value;
    launch_with_smem(flash_dq_kernel<kD>, dim3(blocks_for(d.seqlen, kTile), d.q_heads, d.batch),
                     kThreads, dq_smem<kD>(), q, k, v, doc_start, lse, delta, dout, d, scale, dq);
    launch_with_smem(flash_dkdv_kernel<kD>, dim3(blocks_for(d.seqlen, kTile), d.kv_heads, d.batch),
                     kThreads, dkdv_smem<kD>(), q, k, v, doc_start, doc_end, lse, delta, dout, d,
                     scale, dk, dv);
  });
}

}  // namespace nh::cuda
