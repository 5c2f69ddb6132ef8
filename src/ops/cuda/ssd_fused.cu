// The fused bf16 SSD kernels (ssd_fused.cuh). Blocks of four warps; a chunk's 128 rows are eight
// 16-row mma tiles, and where the work of a tile grows with its index (the causal mask) warp w
// takes tiles w and 7 − w, so every warp does the same work. Operand rows are padded by 16 bytes
// in shared memory, which keeps ldmatrix free of bank conflicts.
#include "ops/cuda/ssd_fused.cuh"

#include <type_traits>

#include "ops/cuda/mma.cuh"

namespace nh::cuda::ssd_fused {

namespace {

using ssd_detail::ChunkHead;

constexpr int kThreads = 128, kWarps = kThreads / 32, kTiles = kChunk / 16;

constexpr int padded(int width) { return width + 8; }

// Rows [0, len) of a [rows, width] matrix with rows `stride` elements apart into dst (rows
// padded), through cp.async 16 bytes at a time; rows len … rows − 1 are zero. The caller commits
// and waits.
__device__ void load_rows(bf16* dst, const bf16* src, int64_t stride, int len, int rows,
                          int width) {
  const int vectors = width / 8;
  for (int e = threadIdx.x; e < rows * vectors; e += kThreads) {
    const int r = e / vectors, k = e % vectors * 8;
    bf16* to = dst + r * padded(width) + k;
    if (r < len)
      cp_async16(to, src + r * stride + k);
    else
      *reinterpret_cast<uint4*>(to) = make_uint4(0, 0, 0, 0);
  }
}

// Row r of a [kChunk, width] tile in shared memory times scale(r), rounded to bf16 once.
template <class F>
__device__ void scale_rows(bf16* m, int width, F scale) {
  const int pairs = width / 2;
  for (int e = threadIdx.x; e < kChunk * pairs; e += kThreads) {
    const int r = e / pairs, k = e % pairs * 2;
    auto* v = reinterpret_cast<__nv_bfloat162*>(m + r * padded(width) + k);
    const float2 f = __bfloat1622float2(*v);
    const float s = scale(r);
    *v = __floats2bfloat162_rn(f.x * s, f.y * s);
  }
}

// The chunk's per-token values of one head; tokens past the chunk's end get doc −1 (never the
// same document) and zeros. One thread per token (kThreads = kChunk): read into registers with
// `read` (early, so that the loads overlap other work), then `store`d to shared memory.
struct Tokens {
  float cs[kChunk], dt[kChunk], scale[kChunk];
  int32_t doc[kChunk];
};
static_assert(kThreads == kChunk);

struct Token {
  float cs = 0.f, dt = 0.f, scale = 0.f;
  int32_t doc = -1;
  template <class F>
  __device__ void read(const ChunkHead& ch, const float* cs_in, const bf16* dt_in,
                       const int32_t* doc_in, F scale_of) {
    const int t = int(threadIdx.x);
    if (t >= ch.len) return;
    cs = cs_in[ch.at_head(t)];
    dt = to_f32(dt_in[ch.at_head(t)]);
    scale = scale_of(t);
    doc = doc_in[ch.at_row(t)];
  }
  __device__ void store(Tokens& s) const {
    const int t = int(threadIdx.x);
    s.cs[t] = cs, s.dt[t] = dt, s.scale[t] = scale, s.doc[t] = doc;
  }
};

// exp(cs_i − cs_j) for j ≤ i < len in one document (the mask L), else 0.
__device__ __forceinline__ float decay(const Tokens& s, int i, int j) {
  return j <= i && s.doc[i] == s.doc[j] && s.doc[i] >= 0 ? __expf(s.cs[i] - s.cs[j]) : 0.f;
}

// The 16-row tile a warp works on in its pass `which` (0, 1): w, then 7 − w.
__device__ __forceinline__ int warp_tile(int which) {
  const int w = int(threadIdx.x) / 32;
  return which == 0 ? w : kTiles - 1 - w;
}

// v summed over the four lanes of a fragment row (lanes with the same g).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// v summed over the eight lanes of a fragment column pair (lanes with the same c).
__device__ __forceinline__ float column_sum(float v) {
  for (int m = 4; m < 32; m *= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// ---------------------------------------------------------------------------------------------
// chunk_state: block per (batch, chunk, head); warp per 16 rows of P × 64 state columns.

template <int P>
__global__ void __launch_bounds__(kThreads)
    chunk_state_kernel(SsdDims d, const float* weight, const bf16* dt, const bf16* u,
                       const bf16* v, float* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* us = reinterpret_cast<bf16*>(smem);
  bf16* vs = us + kChunk * padded(P);
  const ChunkHead ch(d, blockIdx.x);
  const int n = int(d.state);
  load_rows(us, u + ch.at_x(0, 0), ch.x_step, ch.len, kChunk, P);
  load_rows(vs, v + ch.at_bc(0, 0), ch.bc_step, ch.len, kChunk, n);
  cp_async_commit();
  const int t = int(threadIdx.x);
  float* w = reinterpret_cast<float*>(vs + kChunk * padded(n));
  w[t] = t < ch.len ? weight[ch.at_head(t)] * (dt != nullptr ? to_f32(dt[ch.at_head(t)]) : 1.f)
                    : 0.f;
  cp_async_wait<0>();
  __syncthreads();
  scale_rows(us, P, [&](int r) { return w[r]; });
  __syncthreads();
  const Lane l;
  const int k_steps = (ch.len + 15) / 16;
  const int units = P / 16 * (n / kStateBlock);
  for (int unit = int(threadIdx.x) / 32; unit < units; unit += kWarps) {
    const int mt = unit % (P / 16), n0 = unit / (P / 16) * kStateBlock;
    float acc[kStateBlock / 8][4] = {};
    for (int ks = 0; ks < k_steps; ++ks) {
      uint32_t a[4];
      load_a_transposed(us, padded(P), 16 * mt, 16 * ks, a);
      mma_column_pairs<kStateBlock / 16>(acc, a, vs, padded(n), 16 * ks, n0);
    }
#pragma unroll
    for (int nt = 0; nt < kStateBlock / 8; ++nt) {
      float* o = out + ch.state0 + (16 * mt + l.g) * d.state + n0 + 8 * nt + 2 * l.c;
      *reinterpret_cast<float2*>(o) = make_float2(acc[nt][0], acc[nt][1]);
      *reinterpret_cast<float2*>(o + 8 * d.state) = make_float2(acc[nt][2], acc[nt][3]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// scan (forward) and dx (backward), block per (batch, chunk, head), one kernel for both: the
// backward is the forward with the roles of B and C swapped and the mask transposed.
//   forward:  rows i, R = C, K = B, V = x, S = S_in,   scale = decay_in,  mask_ij · dt_j
//   backward: rows j, R = B, K = C, V = dy, S = dS_out, scale = decay_out, mask_ij (i ≥ j)
// acc = scale · R Sᵀ + Σ_k (mask ∘ R Kᵀ) V, with R's fragments held in registers.

struct PairArgs {
  SsdDims d;
  const bf16 *x, *dt, *dy, *r, *k, *v, *D, *states;
  const float *cs, *scale;
  const int32_t* doc;
  bf16* out;
  float *ddt_part, *dD_part, *v_part;
};

template <int P, int N>
constexpr size_t pair_smem() {
  return sizeof(bf16) * (2 * kChunk * padded(N) + kChunk * padded(P) + P * padded(N)) +
         sizeof(Tokens);
}

template <int P, int N, bool kBackward>
__global__ void __launch_bounds__(kThreads) pair_kernel(PairArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* rs = reinterpret_cast<bf16*>(smem);
  bf16* ks = rs + kChunk * padded(N);
  bf16* vs = ks + kChunk * padded(N);
  bf16* ss = vs + kChunk * padded(P);
  Tokens& tok = *reinterpret_cast<Tokens*>(ss + P * padded(N));
  const SsdDims& d = a.d;
  const ChunkHead ch(d, blockIdx.x);
  load_rows(rs, a.r + ch.at_bc(0, 0), ch.bc_step, ch.len, kChunk, N);
  load_rows(ks, a.k + ch.at_bc(0, 0), ch.bc_step, ch.len, kChunk, N);
  load_rows(vs, a.v + ch.at_x(0, 0), ch.x_step, ch.len, kChunk, P);
  load_rows(ss, a.states + ch.state0, N, P, P, N);
  cp_async_commit();
  Token own;
  own.read(ch, a.cs, a.dt, a.doc, [&](int t) { return a.scale[ch.at_head(t)]; });
  own.store(tok);
  cp_async_wait<0>();
  __syncthreads();
  const Lane l;
  const float skip = a.D != nullptr ? to_f32(a.D[ch.h]) : 0.f;
  const int last_tile = (ch.len - 1) / 16;
  for (int which = 0; which < 2; ++which) {
    const int mt = warp_tile(which), r0 = 16 * mt;
    if (mt > last_tile) continue;
    uint32_t ra[N / 16][4];
#pragma unroll
    for (int s = 0; s < N / 16; ++s) load_a(rs, padded(N), r0, 16 * s, ra[s]);
    float acc[P / 8][4] = {};
#pragma unroll
    for (int s = 0; s < N / 16; ++s)
      mma_column_pairs<P / 16, true>(acc, ra[s], ss, padded(N), 16 * s, 0);
    const int row[2] = {r0 + l.g, r0 + l.g + 8};
    float state_x[2] = {0.f, 0.f};  // backward: x_j·(decay_out_j dS_out B_j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float s = tok.scale[row[h]];
#pragma unroll
      for (int nt = 0; nt < P / 8; ++nt) {
        acc[nt][2 * h] *= s;
        acc[nt][2 * h + 1] *= s;
        if constexpr (kBackward) {
          if (row[h] < ch.len) {
            const float2 xv = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(
                a.x + ch.at_x(row[h], 8 * nt + 2 * l.c)));
            state_x[h] += xv.x * acc[nt][2 * h] + xv.y * acc[nt][2 * h + 1];
          }
        }
      }
    }
    const int k_begin = kBackward ? mt : 0, k_end = kBackward ? last_tile : mt;
    for (int kk = k_begin; kk <= k_end; ++kk) {
      float sk[2][4] = {};
#pragma unroll
      for (int s = 0; s < N / 16; ++s) {
        uint32_t b[2][2];
        load_b_transposed(ks, padded(N), 16 * kk, 16 * s, b);
        mma_bf16(sk[0], ra[s], b[0]);
        mma_bf16(sk[1], ra[s], b[1]);
      }
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = row[e / 2], col = 16 * kk + 8 * n + 2 * l.c + e % 2;
          sk[n][e] *= kBackward ? decay(tok, col, r) : decay(tok, r, col) * tok.dt[col];
        }
      uint32_t af[4];
      c_to_a(sk[0], sk[1], af);
      mma_column_pairs<P / 16>(acc, af, vs, padded(P), 16 * kk, 0);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int t = row[h];
      float x_dxd = 0.f, dy_x = 0.f;
#pragma unroll
      for (int nt = 0; nt < P / 8; ++nt) {
        if (t >= ch.len) break;
        const int p = 8 * nt + 2 * l.c;
        const float2 own = __bfloat1622float2(
            *reinterpret_cast<const __nv_bfloat162*>(vs + t * padded(P) + p));
        const float o0 = acc[nt][2 * h], o1 = acc[nt][2 * h + 1];
        __nv_bfloat162 out;
        if constexpr (kBackward) {  // own = dy_t; o = dxd_t
          const float2 xv = __bfloat1622float2(
              *reinterpret_cast<const __nv_bfloat162*>(a.x + ch.at_x(t, p)));
          out = __floats2bfloat162_rn(tok.dt[t] * o0 + skip * own.x,
                                      tok.dt[t] * o1 + skip * own.y);
          x_dxd += xv.x * o0 + xv.y * o1;
          dy_x += own.x * xv.x + own.y * xv.y;
        } else {  // own = x_t; o = y_t without D
          out = __floats2bfloat162_rn(o0 + skip * own.x, o1 + skip * own.y);
        }
        *reinterpret_cast<__nv_bfloat162*>(a.out + ch.at_x(t, p)) = out;
      }
      if constexpr (kBackward) {
        x_dxd = quad_sum(x_dxd);
        dy_x = quad_sum(dy_x);
        const float v = quad_sum(state_x[h]);
        if (t < ch.len && l.c == 0) {
          a.ddt_part[ch.at_head(t)] = x_dxd;
          a.dD_part[ch.at_head(t)] = dy_x;
          a.v_part[ch.at_head(t)] = tok.dt[t] * v;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dcb: block per (batch, chunk, group). C·Bᵀ is formed once into registers in the layout of the
// block's dcb tiles (warp w: row tile w with column tiles 0 … w, then row tile 7 − w with 0 …
// 7 − w: nine 16 × 16 tiles, 18 mma tiles), then each head of the group adds its masked dy·xᵀ.
// The heads' rows are double-buffered: the next head's land while this one's are used.

constexpr int kPairs = kTiles + 1;  // 16-column tiles per warp

// The warp's pair p: row tile and column tile.
__device__ __forceinline__ void pair_tile(int p, int& mt, int& kk) {
  const int w = int(threadIdx.x) / 32;
  if (p <= w) {
    mt = w, kk = p;
  } else {
    mt = kTiles - 1 - w, kk = p - (w + 1);
  }
}

// Shared memory of dcb_kernel: C and B first, then two buffers of a head's dy and x rows, the
// column sums and two heads' tokens.
template <int P>
struct DcbLayout {
  static constexpr size_t kRows = sizeof(bf16) * kChunk * padded(P);
  static constexpr size_t kBuffer = 2 * kRows;
  static constexpr size_t kColumns = 2 * kBuffer;
  static constexpr size_t kTokens = kColumns + sizeof(float) * kTiles * kChunk;
  static constexpr size_t kHeads = kTokens + 2 * sizeof(Tokens);
  __host__ __device__ static size_t bytes(int64_t state) {
    const size_t cb = sizeof(bf16) * 2 * kChunk * padded(int(state));
    return cb > kHeads ? cb : kHeads;
  }
};

template <int P>
__global__ void __launch_bounds__(kThreads)
    dcb_kernel(SsdDims d, const bf16* x, const bf16* dt, const bf16* dy, const bf16* Bm,
               const bf16* Cm, const float* cs, const int32_t* doc, bf16* dcb, float* rows,
               float* cols) {
  using Layout = DcbLayout<P>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t g = blockIdx.x % d.groups, per_group = d.heads / d.groups;
  const int64_t first = blockIdx.x / d.groups * d.heads + g * per_group;  // (b, c, first head)
  const ChunkHead ch0(d, first);
  const int n = int(d.state);
  const Lane l;

  float cb[2 * kPairs][4] = {};
  {
    bf16* c_s = reinterpret_cast<bf16*>(smem);
    bf16* b_s = c_s + kChunk * padded(n);
    load_rows(c_s, Cm + ch0.at_bc(0, 0), ch0.bc_step, ch0.len, kChunk, n);
    load_rows(b_s, Bm + ch0.at_bc(0, 0), ch0.bc_step, ch0.len, kChunk, n);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int p = 0; p < kPairs; ++p) {
      int mt, kk;
      pair_tile(p, mt, kk);
      for (int s = 0; s < n / 16; ++s) {
        uint32_t a[4], b[2][2];
        load_a(c_s, padded(n), 16 * mt, 16 * s, a);
        load_b_transposed(b_s, padded(n), 16 * kk, 16 * s, b);
        mma_bf16(cb[2 * p], a, b[0]);
        mma_bf16(cb[2 * p + 1], a, b[1]);
      }
    }
    __syncthreads();  // C and B are overwritten by the heads' rows
  }
  auto dy_rows = [&](int64_t h) { return reinterpret_cast<bf16*>(smem + h % 2 * Layout::kBuffer); };
  auto x_rows = [&](int64_t h) { return dy_rows(h) + kChunk * padded(P); };
  auto tokens = [&](int64_t h) {
    return reinterpret_cast<Tokens*>(smem + Layout::kTokens) + h % 2;
  };
  float* col_part = reinterpret_cast<float*>(smem + Layout::kColumns);  // [row tile][column]
  auto fetch = [&](int64_t h, Token& next) {
    const ChunkHead ch(d, first + h);
    load_rows(dy_rows(h), dy + ch.at_x(0, 0), ch.x_step, ch.len, kChunk, P);
    load_rows(x_rows(h), x + ch.at_x(0, 0), ch.x_step, ch.len, kChunk, P);
    cp_async_commit();
    next.read(ch, cs, dt, doc, [](int) { return 0.f; });
  };
  Token next;
  fetch(0, next);
  next.store(*tokens(0));
  float acc[2 * kPairs][4] = {};
  for (int64_t h = 0; h < per_group; ++h) {
    const ChunkHead ch(d, first + h);
    cp_async_wait<0>();
    __syncthreads();  // head h has landed, and every warp is done with head h − 1
    if (h + 1 < per_group) fetch(h + 1, next);
    const bf16 *ys = dy_rows(h), *xs = x_rows(h);
    const Tokens& tok = *tokens(h);
    float row_sum[2][2] = {};  // [pass][g, g + 8]
#pragma unroll
    for (int p = 0; p < kPairs; ++p) {
      int mt, kk;
      pair_tile(p, mt, kk);
      float gy[2][4] = {};
#pragma unroll
      for (int s = 0; s < P / 16; ++s) {
        uint32_t a[4], b[2][2];
        load_a(ys, padded(P), 16 * mt, 16 * s, a);
        load_b_transposed(xs, padded(P), 16 * kk, 16 * s, b);
        mma_bf16(gy[0], a, b[0]);
        mma_bf16(gy[1], a, b[1]);
      }
      const int pass = mt == warp_tile(0) ? 0 : 1;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        float term[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = 16 * mt + l.g + 8 * (e / 2), j = 16 * kk + 8 * c + 2 * l.c + e % 2;
          const float w = decay(tok, i, j) * tok.dt[j] * gy[c][e];
          acc[2 * p + c][e] += w;
          term[e] = w * cb[2 * p + c][e];
          if (pass == 0)  // (a branch, not an index: row_sum stays in registers)
            row_sum[0][e / 2] += term[e];
          else
            row_sum[1][e / 2] += term[e];
        }
        const float c0 = column_sum(term[0] + term[2]), c1 = column_sum(term[1] + term[3]);
        if (l.g == 0) {
          col_part[mt * kChunk + 16 * kk + 8 * c + 2 * l.c] = c0;
          col_part[mt * kChunk + 16 * kk + 8 * c + 2 * l.c + 1] = c1;
        }
      }
    }
#pragma unroll
    for (int pass = 0; pass < 2; ++pass)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int i = 16 * warp_tile(pass) + l.g + 8 * e;
        const float s = quad_sum(row_sum[pass][e]);
        if (l.c == 0 && i < ch.len) rows[ch.at_head(i)] = s;
      }
    if (h + 1 < per_group) next.store(*tokens(h + 1));
    __syncthreads();
    const int j = int(threadIdx.x);
    if (j < ch.len) {
      float s = 0.f;
      for (int mt = j / 16; mt < kTiles; ++mt) s += col_part[mt * kChunk + j];
      cols[ch.at_head(j)] = s;
    }
  }
  // dcb, zero above the diagonal tiles (dC and dB read whole rows).
  bf16* out = dcb + blockIdx.x * int64_t(kChunk) * kChunk;
#pragma unroll
  for (int p = 0; p < kPairs; ++p) {
    int mt, kk;
    pair_tile(p, mt, kk);
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int i = 16 * mt + l.g, j = 16 * kk + 8 * c + 2 * l.c;
      *reinterpret_cast<__nv_bfloat162*>(out + i * kChunk + j) =
          __floats2bfloat162_rn(acc[2 * p + c][0], acc[2 * p + c][1]);
      *reinterpret_cast<__nv_bfloat162*>(out + (i + 8) * kChunk + j) =
          __floats2bfloat162_rn(acc[2 * p + c][2], acc[2 * p + c][3]);
    }
  }
  for (int e = threadIdx.x; e < kChunk * kChunk / 2; e += kThreads) {
    const int i = e / (kChunk / 2), j = e % (kChunk / 2) * 2;
    if (j / 16 > i / 16)
      *reinterpret_cast<__nv_bfloat162*>(out + i * kChunk + j) = __floats2bfloat162_rn(0.f, 0.f);
  }
}

// ---------------------------------------------------------------------------------------------
// dC and dB: block per (batch, chunk, group) × 64 state columns, one kernel for both:
//   dC (rows i): dcb·B + Σ_heads decay_in dy S_in,          and off_part = C_i·(that head's term)
//   dB (rows j): dcbᵀ·C + Σ_heads decay_out dt x dS_out
// dcb and the intra-chunk operand first; then the heads' rows and state blocks, double-buffered
// over the same shared memory.

struct BcArgs {
  SsdDims d;
  const bf16 *v, *k, *r, *dt, *dcb, *states;  // V = dy or x; K = B or C; R = C (dC only)
  const float* scale;
  bf16* out;
  float* off_part;
};

template <int P>
struct BcLayout {
  static constexpr size_t kIntra = sizeof(bf16) * (kChunk * padded(kChunk) +
                                                   kChunk * padded(kStateBlock));
  static constexpr size_t kRows = sizeof(bf16) * kChunk * padded(P);
  static constexpr size_t kBuffer = kRows + sizeof(bf16) * P * padded(kStateBlock);
  static constexpr size_t kScales = 2 * kBuffer;
  static constexpr size_t kHeads = kScales + 2 * sizeof(float) * kChunk;
  static constexpr size_t kBytes = kIntra > kHeads ? kIntra : kHeads;
};

template <int P, bool kDB>
__global__ void __launch_bounds__(kThreads) bc_kernel(BcArgs a) {
  using Layout = BcLayout<P>;
  extern __shared__ __align__(16) unsigned char smem[];
  const SsdDims& d = a.d;
  const int64_t g = blockIdx.x % d.groups, per_group = d.heads / d.groups;
  const int64_t first = blockIdx.x / d.groups * d.heads + g * per_group;
  const ChunkHead ch0(d, first);
  const int n0 = int(blockIdx.y) * kStateBlock;
  const int last_tile = (ch0.len - 1) / 16;
  const Lane l;
  float acc[2][kStateBlock / 8][4] = {};
  {
    bf16* dcb_s = reinterpret_cast<bf16*>(smem);
    bf16* k_s = dcb_s + kChunk * padded(kChunk);
    load_rows(dcb_s, a.dcb + blockIdx.x * int64_t(kChunk) * kChunk, kChunk, kChunk, kChunk,
              kChunk);
    load_rows(k_s, a.k + ch0.at_bc(0, n0), ch0.bc_step, ch0.len, kChunk, kStateBlock);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
      const int mt = warp_tile(pass);
      const int k_begin = kDB ? mt : 0, k_end = kDB ? last_tile : mt;
      for (int kk = k_begin; kk <= k_end; ++kk) {
        uint32_t af[4];
        if (kDB)
          load_a_transposed(dcb_s, padded(kChunk), 16 * mt, 16 * kk, af);
        else
          load_a(dcb_s, padded(kChunk), 16 * mt, 16 * kk, af);
        mma_column_pairs<kStateBlock / 16>(acc[pass], af, k_s, padded(kStateBlock), 16 * kk, 0);
      }
    }
    __syncthreads();  // dcb and K are overwritten by the heads' rows
  }
  auto v_rows = [&](int64_t h) { return reinterpret_cast<bf16*>(smem + h % 2 * Layout::kBuffer); };
  auto state = [&](int64_t h) { return v_rows(h) + kChunk * padded(P); };
  auto scales = [&](int64_t h) {
    return reinterpret_cast<float*>(smem + Layout::kScales) + h % 2 * kChunk;
  };
  auto fetch = [&](int64_t h) {
    const ChunkHead ch(d, first + h);
    load_rows(v_rows(h), a.v + ch.at_x(0, 0), ch.x_step, ch.len, kChunk, P);
    load_rows(state(h), a.states + ch.state0 + n0, d.state, P, P, kStateBlock);
    cp_async_commit();
    const int t = int(threadIdx.x);
    return t < ch.len ? a.scale[ch.at_head(t)] * (kDB ? to_f32(a.dt[ch.at_head(t)]) : 1.f) : 0.f;
  };
  float next = fetch(0);
  scales(0)[threadIdx.x] = next;
  for (int64_t h = 0; h < per_group; ++h) {
    const ChunkHead ch(d, first + h);
    cp_async_wait<0>();
    __syncthreads();
    if (h + 1 < per_group) next = fetch(h + 1);
    const bf16 *v_s = v_rows(h), *s_s = state(h);
    const float* scale_s = scales(h);
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
      const int mt = warp_tile(pass);
      if (mt > last_tile) continue;
      float prod[kStateBlock / 8][4] = {};
#pragma unroll
      for (int s = 0; s < P / 16; ++s) {
        uint32_t af[4];
        load_a(v_s, padded(P), 16 * mt, 16 * s, af);
        mma_column_pairs<kStateBlock / 16>(prod, af, s_s, padded(kStateBlock), 16 * s, 0);
      }
#pragma unroll
      for (int e2 = 0; e2 < 2; ++e2) {
        const int t = 16 * mt + l.g + 8 * e2;
        const float s = scale_s[t];
        float off = 0.f;
#pragma unroll
        for (int nt = 0; nt < kStateBlock / 8; ++nt) {
          const float t0 = s * prod[nt][2 * e2], t1 = s * prod[nt][2 * e2 + 1];
          acc[pass][nt][2 * e2] += t0;
          acc[pass][nt][2 * e2 + 1] += t1;
          if (!kDB && t < ch.len) {
            const float2 c = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(
                a.r + ch.at_bc(t, n0 + 8 * nt + 2 * l.c)));
            off += c.x * t0 + c.y * t1;
          }
        }
        if (!kDB) {
          off = quad_sum(off);
          if (l.c == 0 && t < ch.len)
            a.off_part[blockIdx.y * d.batch * d.seqlen * d.heads + ch.at_head(t)] = off;
        }
      }
    }
    if (h + 1 < per_group) scales(h + 1)[threadIdx.x] = next;
  }
#pragma unroll
  for (int pass = 0; pass < 2; ++pass)
#pragma unroll
    for (int e2 = 0; e2 < 2; ++e2) {
      const int t = 16 * warp_tile(pass) + l.g + 8 * e2;
      if (t >= ch0.len) continue;
#pragma unroll
      for (int nt = 0; nt < kStateBlock / 8; ++nt)
        *reinterpret_cast<__nv_bfloat162*>(a.out + ch0.at_bc(t, n0 + 8 * nt + 2 * l.c)) =
            __floats2bfloat162_rn(acc[pass][nt][2 * e2], acc[pass][nt][2 * e2 + 1]);
    }
}

// Calls f(std::integral_constant<int, P>{}) for the supported head dims.
template <class F>
void with_head_dim(const SsdDims& d, F&& f) {
  if (d.head_dim == 64)
    f(std::integral_constant<int, 64>{});
  else
    f(std::integral_constant<int, 80>{});
}

template <class F>
void with_dims(const SsdDims& d, F&& f) {
  with_head_dim(d, [&](auto p) {
    if (d.state == 128)
      f(p, std::integral_constant<int, 128>{});
    else
      f(p, std::integral_constant<int, 256>{});
  });
}

template <bool kBackward>
void pair(const PairArgs& a) {
  const unsigned units = unsigned(a.d.batch * a.d.n_chunks * a.d.heads);
  with_dims(a.d, [&](auto p, auto n) {
    constexpr int P = decltype(p)::value, N = decltype(n)::value;
    launch_with_smem(pair_kernel<P, N, kBackward>, dim3(units), kThreads, pair_smem<P, N>(), a);
  });
}

dim3 group_grid(const SsdDims& d, int64_t columns) {
  return dim3(unsigned(d.batch * d.n_chunks * d.groups), unsigned(columns));
}

template <bool kDB>
void bc(const BcArgs& a) {
  const dim3 grid = group_grid(a.d, a.d.state / kStateBlock);
  if (grid.x == 0) return;
  with_head_dim(a.d, [&](auto p) {
    constexpr int P = decltype(p)::value;
    launch_with_smem(bc_kernel<P, kDB>, grid, kThreads, BcLayout<P>::kBytes, a);
  });
}

}  // namespace

bool supports(const SsdDims& d, std::initializer_list<const void*> rows) {
  for (const void* p : rows)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return d.chunk == kChunk && (d.head_dim == 64 || d.head_dim == 80) &&
         (d.state == 128 || d.state == 256);
}

void chunk_state(const SsdDims& d, const float* weight, const bf16* dt, const bf16* u,
                 const bf16* v, float* out) {
  const dim3 grid(unsigned(d.batch * d.n_chunks * d.heads));
  if (grid.x == 0) return;
  with_head_dim(d, [&](auto p) {
    constexpr int P = decltype(p)::value;
    const size_t smem =
        sizeof(bf16) * kChunk * (padded(P) + padded(int(d.state))) + sizeof(float) * kChunk;
    launch_with_smem(chunk_state_kernel<P>, grid, kThreads, smem, d, weight, dt, u, v, out);
  });
}

void scan(const SsdDims& d, const bf16* x, const bf16* dt, const bf16* Bm, const bf16* Cm,
          const bf16* D, const float* cs, const float* decay_in, const int32_t* doc,
          const bf16* states, bf16* y) {
  if (d.batch * d.n_chunks * d.heads == 0) return;
  pair<false>({d, x, dt, nullptr, Cm, Bm, x, D, states, cs, decay_in, doc, y, nullptr, nullptr,
               nullptr});
}

void dx(const SsdDims& d, const bf16* x, const bf16* dt, const bf16* dy, const bf16* Bm,
        const bf16* Cm, const bf16* D, const float* cs, const float* decay_out,
        const int32_t* doc, const bf16* dstates, bf16* dx, float* ddt_part, float* dD_part,
        float* v_part) {
  if (d.batch * d.n_chunks * d.heads == 0) return;
  pair<true>({d, x, dt, dy, Bm, Cm, dy, D, dstates, cs, decay_out, doc, dx, ddt_part, dD_part,
              v_part});
}

void dcb(const SsdDims& d, const bf16* x, const bf16* dt, const bf16* dy, const bf16* Bm,
         const bf16* Cm, const float* cs, const int32_t* doc, bf16* dcb, float* rows,
         float* cols) {
  const dim3 grid = group_grid(d, 1);
  if (grid.x == 0) return;
  with_head_dim(d, [&](auto p) {
    constexpr int P = decltype(p)::value;
    launch_with_smem(dcb_kernel<P>, grid, kThreads, DcbLayout<P>::bytes(d.state), d, x, dt, dy, Bm, Cm,
                     cs, doc, dcb, rows, cols);
  });
}

void dC(const SsdDims& d, const bf16* dy, const bf16* Bm, const bf16* Cm, const float* decay_in,
        const bf16* states, const bf16* dcb, bf16* dCm, float* off_part) {
  bc<false>({d, dy, Bm, Cm, nullptr, dcb, states, decay_in, dCm, off_part});
}

void dB(const SsdDims& d, const bf16* x, const bf16* dt, const bf16* Cm, const float* decay_out,
        const bf16* dstates, const bf16* dcb, bf16* dBm) {
  bc<true>({d, x, Cm, nullptr, dt, dcb, dstates, decay_out, dBm, nullptr});
}

}  // namespace nh::cuda::ssd_fused
