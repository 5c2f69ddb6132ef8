// Causal GQA attention with documents on the tensor cores (bf16 in, fp32 accumulators), in the
// manner of FlashAttention-2: a warp owns kM tiles of 16 rows (queries, or keys in the dk/dv
// kernel), scores live in mma fragments and go from one product into the next as bf16 A
// fragments (mma.cuh), and the softmax runs in the base-2 domain (scores pre-multiplied by
// scale·log2 e). A warp's row tiles share each B fragment it loads, so two of them halve the
// shared-memory reads per product.
//
//   forward: grid (query tiles of 64·kM, Hq, B), 4 warps; key tiles of 64 double-buffered
//            through cp.async (tile t + 1 lands while tile t is used); running max m and sum l
//            per row, out = acc / l, lse = (m + log2 l)·ln 2.
//   dq:      grid (query tiles of 64·kM, Hq, B), key tiles as the forward (32 keys when kM = 2);
//            per key tile P = exp2(s − lse₂), dP = dout·vᵀ, dS = P∘(dP − delta), dq += dS·k.
//   dk, dv:  grid (key tiles of 64, Hkv, B); for each q head of the group in turn and each query
//            tile of 32: Pᵀ, dv += Pᵀ·dout, dPᵀ = v·doutᵀ, dSᵀ, dk += dSᵀ·q.
// Only the tiles that reach the diagonal or a document start are masked element by element.
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
constexpr int kTile = 64;       // key tiles of the forward; the keys a dk/dv block owns
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
  for (int idx = threadIdx.x; idx < kRows * kChunks; idx += blockDim.x) {
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
  for (int idx = threadIdx.x; idx < kRows * kChunks; idx += blockDim.x) {
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
  for (int idx = threadIdx.x; idx < kRows * kChunks; idx += blockDim.x) {
    const int r = idx / kChunks, e = idx % kChunks * 8;
    bf16* to = dst + r * row_stride<kD>() + e;
    if (r < n && e < head_dim)
      cp_async16(to, src + r * stride + e);
    else
      *reinterpret_cast<uint4*>(to) = make_uint4(0, 0, 0, 0);
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

// The first row of row tile i of warp w in a block's tile of 64·kM rows. The tiles interleave
// across the warps, so every warp has rows near the diagonal.
__device__ __forceinline__ int tile_row(int w, int i) { return (4 * i + w) * kWarpRows; }

constexpr int block_rows(int row_tiles) { return 4 * kWarpRows * row_tiles; }

// s[i][j] (the 16 × 8 tiles of a warp's products) = A_i · Bᵀ with A_i rows a_row + i·a_step …
// (16 of them) of tile `a` and B rows b_row … b_row + 8·kN of tile `b`, both [rows][kD]. Each B
// fragment is loaded once for all kM row tiles: the more rows a warp owns, the fewer
// shared-memory reads per product.
template <int kD, int kM, int kN>
__device__ void product_abt(const bf16* a, int a_row, int a_step, const bf16* b, int b_row,
                            float (&s)[kM][kN][4]) {
#pragma unroll
  for (int i = 0; i < kM; ++i)
#pragma unroll
    for (int j = 0; j < kN; ++j) s[i][j][0] = s[i][j][1] = s[i][j][2] = s[i][j][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kD; kk += 16) {
    uint32_t af[kM][4];
#pragma unroll
    for (int i = 0; i < kM; ++i) load_a(a, row_stride<kD>(), a_row + i * a_step, kk, af[i]);
#pragma unroll
    for (int j = 0; j < kN; j += 2) {
      uint32_t bf[2][2];
      load_b_transposed(b, row_stride<kD>(), b_row + j * 8, kk, bf);
#pragma unroll
      for (int i = 0; i < kM; ++i) {
        mma_bf16(s[i][j], af[i], bf[0]);
        mma_bf16(s[i][j + 1], af[i], bf[1]);
      }
    }
  }
}

// product_abt with A_i the warp's row tile i (tile_row) and B rows [0, 8·kN).
template <int kD, int kM, int kN>
__device__ void product_abt(const bf16* a, const bf16* b, int w, float (&s)[kM][kN][4]) {
  product_abt<kD, kM, kN>(a, tile_row(w, 0), 4 * kWarpRows, b, 0, s);
}

// acc[i] (16 × kD) += P_i · X with P_i the warp's 16 × 8·kN fragments of row tile i and X rows
// [0, 8·kN) of tile x.
template <int kD, int kM, int kN>
__device__ void accumulate_px(const float (&p)[kM][kN][4], const bf16* x,
                              float (&acc)[kM][kD / 8][4]) {
#pragma unroll
  for (int ks = 0; ks < kN / 2; ++ks) {
    uint32_t af[kM][4];
#pragma unroll
    for (int i = 0; i < kM; ++i) c_to_a(p[i][2 * ks], p[i][2 * ks + 1], af[i]);
#pragma unroll
    for (int n = 0; n < kD / 8; n += 2) {
      uint32_t bf[2][2];
      load_b(x, row_stride<kD>(), ks * 16, n * 8, bf);
#pragma unroll
      for (int i = 0; i < kM; ++i) {
        mma_bf16(acc[i][n], af[i], bf[0]);
        mma_bf16(acc[i][n + 1], af[i], bf[1]);
      }
    }
  }
}

// C fragments c[i][n] (16 × 8 each) of a warp, scaled and rounded to bf16, into a tile of row
// stride `stride`: row tile i at rows row0 + i·row_step …, column tile n at columns col0 + 8n ….
template <int kM, int kN>
__device__ void store_fragments(const float (&c)[kM][kN][4], float scale, int row0, int row_step,
                                int col0, int stride, const Lane& l, bf16* tile) {
#pragma unroll
  for (int i = 0; i < kM; ++i) {
    bf16* p = tile + (row0 + i * row_step + l.g) * stride + col0 + 2 * l.c;
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      *reinterpret_cast<uint32_t*>(p + n * 8) = pack_bf16(c[i][n][0] * scale, c[i][n][1] * scale);
      *reinterpret_cast<uint32_t*>(p + 8 * stride + n * 8) =
          pack_bf16(c[i][n][2] * scale, c[i][n][3] * scale);
    }
  }
}

// C fragments of a warp's row tiles (16 × kD each), scaled, into their rows of a tile.
template <int kD, int kM>
__device__ void stage_rows(const float (&acc)[kM][kD / 8][4], float scale, int w, const Lane& l,
                           bf16* tile) {
  store_fragments(acc, scale, tile_row(w, 0), 4 * kWarpRows, 0, row_stride<kD>(), l, tile);
}

// Issues the copies of keys and values [k0, min(k0 + kKeys, kv_hi)) of KV head kh into k_s and
// v_s, and commits them (with any copies issued before) as one cp.async group.
template <int kKeys, int kD>
__device__ void load_key_tile_async(const bf16* k, const bf16* v, const AttnDims& d, int b, int kh,
                                    int k0, int kv_hi, bf16* k_s, bf16* v_s) {
  const int64_t stride = int64_t(d.kv_heads) * d.head_dim;
  const int n = min(kKeys, kv_hi - k0);
  load_rows_async<kKeys, kD>(k + at(d, b, k0, d.kv_heads, kh), stride, n, d.head_dim, k_s);
  load_rows_async<kKeys, kD>(v + at(d, b, k0, d.kv_heads, kh), stride, n, d.head_dim, v_s);
  cp_async_commit();
}

// The step of the forward's and dq's walk over key tiles of kKeys from kv_lo: issues tile t + 1
// into the other half of k_s and v_s (two tiles each), or an empty group after the last tile, then
// waits until every thread's copies of tile t have landed. Returns tile t's first key.
template <int kKeys, int kD>
__device__ int next_key_tile(const bf16* k, const bf16* v, const AttnDims& d, int b, int kh,
                             int kv_lo, int kv_hi, int t, int tiles, bf16* k_s, bf16* v_s) {
  const int k0 = kv_lo + t * kKeys, next = (t + 1) % 2 * kKeys * row_stride<kD>();
  if (t + 1 < tiles)
    load_key_tile_async<kKeys, kD>(k, v, d, b, kh, k0 + kKeys, kv_hi, k_s + next, v_s + next);
  else
    cp_async_commit();  // an empty group keeps the wait below uniform
  cp_async_wait<1>();
  __syncthreads();
  return k0;
}

// What the forward and dq kernels know of the query rows a block owns and the keys they walk.
// A thread's rows and their documents' starts are recomputed where a tile is masked rather than
// held in registers, which the kernels need for their accumulators.
template <int kM>
struct QueryRows {
  int q0, nq;        // the block's rows [q0, q0 + nq)
  int kv_lo, kv_hi;  // the keys any row of the block sees
  int doc_hi;        // from here on every key before a row is in its document
  int first_row;     // this thread's row g of its row tile 0
  const int* doc;    // doc_start of the block's batch row, or null

  __device__ QueryRows(const AttnDims& d, const int* doc_start, int b, int w, const Lane& l) {
    q0 = (gridDim.x - 1 - blockIdx.x) * block_rows(kM);  // the longest rows first
    nq = min(block_rows(kM), d.seqlen - q0);
    doc = doc_start ? doc_start + int64_t(b) * d.seqlen : nullptr;
    kv_lo = doc ? doc[q0] : 0;
    kv_hi = q0 + nq;
    doc_hi = doc ? doc[kv_hi - 1] : 0;  // doc_start grows along a row
    first_row = q0 + tile_row(w, 0) + l.g;
  }
  // Row r (of 2) of this thread in its row tile i.
  __device__ int row(int i, int r) const { return first_row + 4 * kWarpRows * i + 8 * r; }
  // Whether key tile [k0, k0 + keys) needs the mask: it reaches the diagonal, or a row's
  // document starts after k0.
  __device__ bool masked(int k0, int keys) const { return k0 + keys > q0 || k0 < doc_hi; }
  __device__ bool visible(int key, int i, int r) const {
    const int t = row(i, r);
    return key <= t && (!doc || key >= doc[min(t, kv_hi - 1)]);
  }
};

template <int kD, int kM, int kKeys>
__global__ void __launch_bounds__(kThreads)
    flash_forward_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                         const bf16* __restrict__ v, const int* __restrict__ doc_start, AttnDims d,
                         float scale_log2, bf16* __restrict__ out, float* __restrict__ lse) {
  constexpr int kS = row_stride<kD>(), kRows = block_rows(kM), kN = kKeys / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* k_s = q_s + kRows * kS;  // two key tiles, then two value tiles
  bf16* v_s = k_s + 2 * kKeys * kS;
  const Lane l;
  const int w = threadIdx.x / 32;
  const int h = blockIdx.y, b = blockIdx.z, kh = h / (d.q_heads / d.kv_heads);
  const QueryRows<kM> rows(d, doc_start, b, w, l);
  const int tiles = (rows.kv_hi - rows.kv_lo + kKeys - 1) / kKeys;
  load_rows_async<kRows, kD>(q + at(d, b, rows.q0, d.q_heads, h), int64_t(d.q_heads) * d.head_dim,
                             rows.nq, d.head_dim, q_s);
  load_key_tile_async<kKeys, kD>(k, v, d, b, kh, rows.kv_lo, rows.kv_hi, k_s, v_s);

  float acc[kM][kD / 8][4] = {}, m[kM][2], lsum[kM][2] = {};
#pragma unroll
  for (int i = 0; i < kM; ++i) m[i][0] = m[i][1] = -INFINITY;
  for (int t = 0; t < tiles; ++t) {
    // Tile t (and at t = 0 the queries) is in place.
    const int k0 =
        next_key_tile<kKeys, kD>(k, v, d, b, kh, rows.kv_lo, rows.kv_hi, t, tiles, k_s, v_s);
    const bf16* k_t = k_s + t % 2 * kKeys * kS;
    const bf16* v_t = v_s + t % 2 * kKeys * kS;
    float s[kM][kN][4];
    product_abt<kD, kM, kN>(q_s, k_t, w, s);
    const bool masked = rows.masked(k0, kKeys);
#pragma unroll
    for (int i = 0; i < kM; ++i) {
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < kN; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2;
          const bool visible = !masked || rows.visible(k0 + j * 8 + 2 * l.c + (e & 1), i, r);
          s[i][j][e] = visible ? s[i][j][e] * scale_log2 : -INFINITY;
          mx[r] = fmaxf(mx[r], s[i][j][e]);
        }
      float alpha[2], ref[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float m_new = fmaxf(m[i][r], quad_max(mx[r]));
        // A row with no visible key yet keeps l = acc = 0: exponents relative to 0, not −inf.
        ref[r] = m_new == -INFINITY ? 0.f : m_new;
        alpha[r] = exp2f(m[i][r] - ref[r]);
        m[i][r] = m_new;
        lsum[i][r] *= alpha[r];
      }
#pragma unroll
      for (int j = 0; j < kN; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[i][j][e] = exp2f(s[i][j][e] - ref[e / 2]);
          lsum[i][e / 2] += s[i][j][e];
        }
#pragma unroll
      for (int n = 0; n < kD / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][n][e] *= alpha[e / 2];
    }
    accumulate_px<kD, kM, kN>(s, v_t, acc);
    __syncthreads();  // every warp is done with tile t's buffers before tile t + 2 refills them
  }

  // q_s becomes the staging tile of out.
#pragma unroll
  for (int i = 0; i < kM; ++i) {
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      lsum[i][r] = quad_sum(lsum[i][r]);
      inv[r] = lsum[i][r] > 0.f ? 1.f / lsum[i][r] : 0.f;
      if (l.c == 0 && rows.row(i, r) < rows.kv_hi)
        lse[(int64_t(b) * d.q_heads + h) * d.seqlen + rows.row(i, r)] =
            (m[i][r] + log2f(lsum[i][r])) * kLn2;
    }
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) {
      acc[i][n][0] *= inv[0];
      acc[i][n][1] *= inv[0];
      acc[i][n][2] *= inv[1];
      acc[i][n][3] *= inv[1];
    }
  }
  stage_rows<kD, kM>(acc, 1.f, w, l, q_s);
  __syncthreads();
  store_rows<kRows, kD>(q_s, rows.nq, d.head_dim, out + at(d, b, rows.q0, d.q_heads, h),
                        int64_t(d.q_heads) * d.head_dim);
}

// kKeys: the key tile; 32 when a warp owns two row tiles, so that its P and dP fragments and the
// dq accumulators fit in registers.
template <int kD, int kM, int kKeys>
__global__ void __launch_bounds__(kThreads)
    flash_dq_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                    const bf16* __restrict__ v, const int* __restrict__ doc_start,
                    const float* __restrict__ lse, const float* __restrict__ delta,
                    const bf16* __restrict__ dout, AttnDims d, float scale, bf16* __restrict__ dq) {
  constexpr int kS = row_stride<kD>(), kRows = block_rows(kM), kN = kKeys / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* do_s = q_s + kRows * kS;
  bf16* k_s = do_s + kRows * kS;  // two key tiles, then two value tiles
  bf16* v_s = k_s + 2 * kKeys * kS;
  const Lane l;
  const int w = threadIdx.x / 32;
  const int h = blockIdx.y, b = blockIdx.z, kh = h / (d.q_heads / d.kv_heads);
  const QueryRows<kM> rows(d, doc_start, b, w, l);
  const int tiles = (rows.kv_hi - rows.kv_lo + kKeys - 1) / kKeys;
  const int64_t q_stride = int64_t(d.q_heads) * d.head_dim;
  load_rows_async<kRows, kD>(q + at(d, b, rows.q0, d.q_heads, h), q_stride, rows.nq, d.head_dim,
                             q_s);
  load_rows_async<kRows, kD>(dout + at(d, b, rows.q0, d.q_heads, h), q_stride, rows.nq,
                             d.head_dim, do_s);
  load_key_tile_async<kKeys, kD>(k, v, d, b, kh, rows.kv_lo, rows.kv_hi, k_s, v_s);
  const float scale_log2 = scale * kLog2e;
  float lse2[kM][2], dlt[kM][2];
#pragma unroll
  for (int i = 0; i < kM; ++i)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t stat =
          (int64_t(b) * d.q_heads + h) * d.seqlen + min(rows.row(i, r), rows.kv_hi - 1);
      lse2[i][r] = lse[stat] * kLog2e;
      dlt[i][r] = delta[stat];
    }

  float acc[kM][kD / 8][4] = {};
  for (int t = 0; t < tiles; ++t) {
    const int k0 =
        next_key_tile<kKeys, kD>(k, v, d, b, kh, rows.kv_lo, rows.kv_hi, t, tiles, k_s, v_s);
    const bf16* k_t = k_s + t % 2 * kKeys * kS;
    const bf16* v_t = v_s + t % 2 * kKeys * kS;
    float p[kM][kN][4], dp[kM][kN][4];
    product_abt<kD, kM, kN>(q_s, k_t, w, p);
    product_abt<kD, kM, kN>(do_s, v_t, w, dp);
    const bool masked = rows.masked(k0, kKeys);
#pragma unroll
    for (int i = 0; i < kM; ++i)
#pragma unroll
      for (int j = 0; j < kN; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2;
          const bool visible = !masked || rows.visible(k0 + j * 8 + 2 * l.c + (e & 1), i, r);
          const float pr = visible ? exp2f(p[i][j][e] * scale_log2 - lse2[i][r]) : 0.f;
          dp[i][j][e] = pr * (dp[i][j][e] - dlt[i][r]);  // dS
        }
    accumulate_px<kD, kM, kN>(dp, k_t, acc);
    __syncthreads();
  }
  stage_rows<kD, kM>(acc, scale, w, l, q_s);
  __syncthreads();
  store_rows<kRows, kD>(q_s, rows.nq, d.head_dim, dq + at(d, b, rows.q0, d.q_heads, h), q_stride);
}

// One query tile of the dk/dv kernels' walk in shared memory: q and dout rows, lse, delta and
// doc_start per query. Two of them alternate: the next lands while the current is used.
template <int kD, int kRows>
struct QueryTile {
  bf16 q[kRows * row_stride<kD>()];
  bf16 dout[kRows * row_stride<kD>()];
  float lse[kRows], delta[kRows];
  int first[kRows];

  // Whether the tile, queries t0 …, needs the mask against keys [k0, k0 + keys): unless every
  // query comes after every key and the last query's document (the latest) starts at or before
  // k0. A partial tile's padding has first = seqlen.
  __device__ bool masked(int t0, int k0, int keys) const {
    return t0 < k0 + keys - 1 || first[kRows - 1] > k0;
  }
  // pᵀ and dsᵀ of key `key` and query i of the tile (t0 + i), from s = q·k and dp = dout·v,
  // with the mask applied when `masked`.
  __device__ void gradients(bool masked, int key, int i, int t0, float scale_log2, float& s,
                            float& dp) const {
    const bool visible = !masked || (key <= t0 + i && key >= first[i]);
    s = visible ? exp2f(s * scale_log2 - lse[i] * kLog2e) : 0.f;
    dp = s * (dp - delta[i]);
  }
};

// Issues the copies of queries [t0, min(t0 + kRows, q_hi)) of q head h into `tile` and commits
// them (with any copies issued before) as one cp.async group.
template <int kD, int kRows>
__device__ void load_query_tile_async(const bf16* q, const bf16* dout, const float* lse,
                                      const float* delta, const int* doc_start, const AttnDims& d,
                                      int b, int h, int t0, int q_hi, QueryTile<kD, kRows>& tile) {
  const int nt = min(kRows, q_hi - t0);
  const int64_t row0 = int64_t(b) * d.seqlen, q_stride = int64_t(d.q_heads) * d.head_dim;
  const int64_t stat0 = (int64_t(b) * d.q_heads + h) * d.seqlen + t0;
  load_rows_async<kRows, kD>(q + at(d, b, t0, d.q_heads, h), q_stride, nt, d.head_dim, tile.q);
  load_rows_async<kRows, kD>(dout + at(d, b, t0, d.q_heads, h), q_stride, nt, d.head_dim,
                             tile.dout);
  for (int i = threadIdx.x; i < kRows; i += blockDim.x) {
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
}

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
  using Tile = QueryTile<kD, kQueryStep>;
  Tile* tiles = reinterpret_cast<Tile*>(v_s + kTile * kS);
  const Lane l;
  const int w = threadIdx.x / 32;
  const int k0 = blockIdx.x * kTile, kh = blockIdx.y, b = blockIdx.z;
  const int group = d.q_heads / d.kv_heads, nk = min(kTile, d.seqlen - k0);
  const int64_t row0 = int64_t(b) * d.seqlen;
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
  // Issues the copies of step s into tiles[s % 2].
  auto issue = [&](int s) {
    load_query_tile_async<kD, kQueryStep>(q, dout, lse, delta, doc_start, d, b,
                                          kh * group + s / q_tiles,
                                          q_lo + s % q_tiles * kQueryStep, q_hi, tiles[s % 2]);
  };

  float dk_acc[1][kD / 8][4] = {}, dv_acc[1][kD / 8][4] = {};
  if (steps > 0) issue(0);
  for (int s = 0; s < steps; ++s) {
    if (s + 1 < steps)
      issue(s + 1);
    else
      cp_async_commit();  // an empty group keeps the wait below uniform
    cp_async_wait<1>();
    __syncthreads();  // step s's tile (and, at s = 0, k_s and v_s) is in place
    const Tile& tile = tiles[s % 2];
    const int t0 = q_lo + s % q_tiles * kQueryStep;
    float p[1][kN][4], dp[1][kN][4];
    product_abt<kD, 1, kN>(k_s, tile.q, w, p);      // sᵀ: keys × queries
    product_abt<kD, 1, kN>(v_s, tile.dout, w, dp);  // dPᵀ
    const bool masked = tile.masked(t0, k0, kTile);
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)  // pᵀ and dSᵀ
        tile.gradients(masked, key[e / 2], j * 8 + 2 * l.c + (e & 1), t0, scale_log2, p[0][j][e],
                       dp[0][j][e]);
    accumulate_px<kD, 1, kN>(p, tile.dout, dv_acc);
    accumulate_px<kD, 1, kN>(dp, tile.q, dk_acc);
    __syncthreads();  // everyone is done with tiles[s % 2] before step s + 2 refills it
  }
  __syncthreads();  // k_s and v_s become the staging tiles of dk and dv
  stage_rows<kD, 1>(dk_acc, scale, w, l, k_s);
  stage_rows<kD, 1>(dv_acc, 1.f, w, l, v_s);
  __syncthreads();
  store_rows<kTile, kD>(k_s, nk, d.head_dim, dk + at(d, b, k0, d.kv_heads, kh), kv_stride);
  store_rows<kTile, kD>(v_s, nk, d.head_dim, dv + at(d, b, k0, d.kv_heads, kh), kv_stride);
}

// dk and dv with 128 keys and 8 warps per block, in the manner of FlashAttention-2's backward.
// For each query step of 64, phase 1 has warp (a, c) = (w / 2, w % 2) form Sᵀ and dPᵀ for keys
// 32a … 32a + 31 and queries 32c … 32c + 31 (two row tiles sharing each B fragment) and put P
// and dS in shared memory in bf16; phase 2 has it accumulate dv += Pᵀ·dout and dk += dSᵀ·q for
// those keys and dims [kD/2·c, kD/2·(c + 1)). Each fragment it loads feeds about 2.3 products,
// against 1.6 in flash_dkdv_kernel, whose warps own 16 keys and every dim.
constexpr int kWideKeys = 128, kWideStep = 64, kWideThreads = 256;

template <int kD>
struct WideDkDvShared {
  static constexpr int kS = row_stride<kD>(), kPS = kWideStep + 8;  // P and dS row stride
  bf16 k[kWideKeys * kS], v[kWideKeys * kS];
  bf16 p[kWideKeys * kPS], ds[kWideKeys * kPS];  // Pᵀ and dSᵀ: [keys][queries of the step]
  QueryTile<kD, kWideStep> tiles[2];
};

template <int kD>
__global__ void __launch_bounds__(kWideThreads, 1)
    flash_dkdv_wide_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                           const bf16* __restrict__ v, const int* __restrict__ doc_start,
                           const int* __restrict__ doc_end, const float* __restrict__ lse,
                           const float* __restrict__ delta, const bf16* __restrict__ dout,
                           AttnDims d, float scale, bf16* __restrict__ dk,
                           bf16* __restrict__ dv) {
  using Shared = WideDkDvShared<kD>;
  constexpr int kS = Shared::kS, kPS = Shared::kPS, kHalf = kD / 2;
  extern __shared__ __align__(16) unsigned char smem[];
  Shared& sh = *reinterpret_cast<Shared*>(smem);
  const Lane l;
  const int w = threadIdx.x / 32, wa = w / 2, wc = w % 2;
  const int k0 = blockIdx.x * kWideKeys, kh = blockIdx.y, b = blockIdx.z;
  const int group = d.q_heads / d.kv_heads, nk = min(kWideKeys, d.seqlen - k0);
  const int64_t kv_stride = int64_t(d.kv_heads) * d.head_dim;
  // Committed with the first query tile.
  load_rows_async<kWideKeys, kD>(k + at(d, b, k0, d.kv_heads, kh), kv_stride, nk, d.head_dim,
                                 sh.k);
  load_rows_async<kWideKeys, kD>(v + at(d, b, k0, d.kv_heads, kh), kv_stride, nk, d.head_dim,
                                 sh.v);
  const float scale_log2 = scale * kLog2e;
  // As flash_dkdv_kernel: every q head of the group, each over the query tiles [q_lo, q_hi).
  const int q_lo = k0, q_hi = doc_end ? doc_end[int64_t(b) * d.seqlen + k0 + nk - 1] : d.seqlen;
  const int q_tiles = (q_hi - q_lo + kWideStep - 1) / kWideStep, steps = group * q_tiles;
  auto issue = [&](int s) {
    load_query_tile_async<kD, kWideStep>(q, dout, lse, delta, doc_start, d, b,
                                         kh * group + s / q_tiles,
                                         q_lo + s % q_tiles * kWideStep, q_hi, sh.tiles[s % 2]);
  };
  const int key_row = 32 * wa, query_row = 32 * wc;  // the warp's keys and queries in phase 1

  float dk_acc[2][kHalf / 8][4] = {}, dv_acc[2][kHalf / 8][4] = {};
  issue(0);
  for (int s = 0; s < steps; ++s) {
    cp_async_wait<0>();
    __syncthreads();  // step s's tile landed, and every warp is done with step s − 1
    if (s + 1 < steps) issue(s + 1);
    const QueryTile<kD, kWideStep>& tile = sh.tiles[s % 2];
    const int t0 = q_lo + s % q_tiles * kWideStep;
    float p[2][4][4], dp[2][4][4];
    product_abt<kD, 2, 4>(sh.k, key_row, kWarpRows, tile.q, query_row, p);      // Sᵀ
    product_abt<kD, 2, 4>(sh.v, key_row, kWarpRows, tile.dout, query_row, dp);  // dPᵀ
    const bool masked = tile.masked(t0, k0, kWideKeys);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)  // pᵀ and dSᵀ
          tile.gradients(masked, k0 + key_row + i * kWarpRows + l.g + 8 * (e / 2),
                         query_row + j * 8 + 2 * l.c + (e & 1), t0, scale_log2, p[i][j][e],
                         dp[i][j][e]);
    store_fragments(p, 1.f, key_row, kWarpRows, query_row, kPS, l, sh.p);
    store_fragments(dp, 1.f, key_row, kWarpRows, query_row, kPS, l, sh.ds);
    __syncthreads();  // the step's Pᵀ and dSᵀ are complete
#pragma unroll
    for (int ks = 0; ks < kWideStep; ks += 16) {
      uint32_t pa[2][4], sa[2][4];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        load_a(sh.p, kPS, key_row + i * kWarpRows, ks, pa[i]);
        load_a(sh.ds, kPS, key_row + i * kWarpRows, ks, sa[i]);
      }
#pragma unroll
      for (int n = 0; n < kHalf / 8; n += 2) {
        uint32_t bf[2][2];
        load_b(tile.dout, kS, ks, kHalf * wc + n * 8, bf);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          mma_bf16(dv_acc[i][n], pa[i], bf[0]);
          mma_bf16(dv_acc[i][n + 1], pa[i], bf[1]);
        }
        load_b(tile.q, kS, ks, kHalf * wc + n * 8, bf);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          mma_bf16(dk_acc[i][n], sa[i], bf[0]);
          mma_bf16(dk_acc[i][n + 1], sa[i], bf[1]);
        }
      }
    }
  }
  __syncthreads();  // k and v become the staging tiles of dk and dv
  store_fragments(dk_acc, scale, key_row, kWarpRows, kHalf * wc, kS, l, sh.k);
  store_fragments(dv_acc, 1.f, key_row, kWarpRows, kHalf * wc, kS, l, sh.v);
  __syncthreads();
  store_rows<kWideKeys, kD>(sh.k, nk, d.head_dim, dk + at(d, b, k0, d.kv_heads, kh), kv_stride);
  store_rows<kWideKeys, kD>(sh.v, nk, d.head_dim, dv + at(d, b, k0, d.kv_heads, kh), kv_stride);
}

template <int kD, int kM, int kKeys>
constexpr size_t forward_smem() {
  return (block_rows(kM) + 4 * kKeys) * row_stride<kD>() * sizeof(bf16);
}
template <int kD, int kM, int kKeys>
constexpr size_t dq_smem() {
  return (2 * block_rows(kM) + 4 * kKeys) * row_stride<kD>() * sizeof(bf16);
}
template <int kD>
constexpr size_t dkdv_smem() {
  return 2 * kTile * row_stride<kD>() * sizeof(bf16) + 2 * sizeof(QueryTile<kD, kQueryStep>);
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
                             const AttnDims& d, float scale, int row_tiles, bf16* out, float* lse) {
  with_bucket(d.head_dim, [&](auto bucket) {
    constexpr int kD = decltype(bucket)::value;
    auto launch = [&](auto kernel, int rows, size_t smem) {
      launch_with_smem(kernel, dim3(blocks_for(d.seqlen, rows), d.q_heads, d.batch), kThreads,
                       smem, q, k, v, doc_start, d, scale * kLog2e, out, lse);
    };
    if (row_tiles == 2)
      launch(flash_forward_kernel<kD, 2, kTile>, block_rows(2), forward_smem<kD, 2, kTile>());
    else
      launch(flash_forward_kernel<kD, 1, kTile>, block_rows(1), forward_smem<kD, 1, kTile>());
  });
}

void flash_attention_backward(const bf16* q, const bf16* k, const bf16* v, const int* doc_start,
                              const int* doc_end, const float* lse, const float* delta,
                              const bf16* dout, const AttnDims& d, float scale, int row_tiles,
                              bf16* dq, bf16* dk, bf16* dv) {
  with_bucket(d.head_dim, [&](auto bucket) {
    constexpr int kD = decltype(bucket)::value;
    auto launch_dq = [&](auto kernel, int rows, size_t smem) {
      launch_with_smem(kernel, dim3(blocks_for(d.seqlen, rows), d.q_heads, d.batch), kThreads,
                       smem, q, k, v, doc_start, lse, delta, dout, d, scale, dq);
    };
    if (row_tiles == 2)
      launch_dq(flash_dq_kernel<kD, 2, 32>, block_rows(2), dq_smem<kD, 2, 32>());
    else
      launch_dq(flash_dq_kernel<kD, 1, kTile>, block_rows(1), dq_smem<kD, 1, kTile>());
    if (row_tiles == 2)
      launch_with_smem(flash_dkdv_wide_kernel<kD>,
                       dim3(blocks_for(d.seqlen, kWideKeys), d.kv_heads, d.batch), kWideThreads,
                       sizeof(WideDkDvShared<kD>), q, k, v, doc_start, doc_end, lse, delta, dout,
                       d, scale, dk, dv);
    else
      launch_with_smem(flash_dkdv_kernel<kD>,
                       dim3(blocks_for(d.seqlen, kTile), d.kv_heads, d.batch), kThreads,
                       dkdv_smem<kD>(), q, k, v, doc_start, doc_end, lse, delta, dout, d, scale,
                       dk, dv);
  });
}

}  // namespace nh::cuda
