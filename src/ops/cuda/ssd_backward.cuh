// The CUDA SSD backward's per-chunk kernels (ssd.cu launches them; its header comment describes
// the whole decomposition): the state-decay gradient, the intra-chunk dcs terms, dx, dC and dB
// per chunk tile, then dt, the sums over a group's heads and the parameter gradients.
#pragma once

#include "ops/cuda/ssd_chunk.cuh"

namespace nh::cuda::ssd_detail {

// ⟨dS_out(c), S_in(c)⟩ per (batch, chunk, head), block per unit: times the chunk's decay, the
// gradient of that decay (dcs of the chunk's last token).
template <class S>
__global__ void __launch_bounds__(kThreads)
    state_decay_grad_kernel(SsdDims d, const S* dstates, const S* states, float* ddecay) {
  __shared__ float partial[kThreads];
  const ChunkHead ch(d, blockIdx.x);
  const int64_t pn_size = d.head_dim * d.state;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < pn_size; i += kThreads)
    sum += to_f32(dstates[ch.state0 + i]) * to_f32(states[ch.state0 + i]);
  sum = block_sum(sum, partial);
  if (threadIdx.x == 0) ddecay[blockIdx.x] = sum;
}

// Backward, block per (batch, chunk, head) × 64 × 64 tile of (i, j) with j tile <= i tile: the
// intra-chunk terms t_ij = exp(cs_i − cs_j) dt_j (C_i·B_j) (dy_i·x_j) (j ≤ i, same document),
// each formed once and summed over the tile's j into rows [j tiles, B, S, H] (dcs_i += t_ij) and
// over its i into cols [i tiles, B, S, H] (dcs_j −= t_ij).
template <class T>
__global__ void __launch_bounds__(kThreads, kMatrixBlocks<T>)
    chunk_dcs_kernel(SsdDims d, const T* dt, const float* cbm, const float* dyxm, const float* cs,
                     const int32_t* doc, float* rows, float* cols) {
  __shared__ float col_part[kThreads / 16][kTile];
  const ChunkHead ch(d, blockIdx.x);
  const int i0 = int(blockIdx.y) * kTile, j0 = int(blockIdx.z) * kTile;
  if (i0 >= ch.len || j0 > i0) return;
  Acc cb, dyx;
  load_square<false>(cbm, ch.cb0, d, ch, i0, j0, cb);
  load_square<false>(dyxm, ch.dyx0, d, ch, i0, j0, dyx);
  const int64_t size = d.batch * d.seqlen * d.heads;
  float col_sum[kPer] = {};
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int i = i0 + tile_row(u);
    float row = 0.f;
#pragma unroll
    for (int w = 0; w < kPer; ++w) {
      const int j = j0 + tile_col(w);
      const float decay = intra_decay(ch, cs, doc, i, j);
      const float t = decay != 0.f ? decay * to_f32(dt[ch.at_head(j)]) * cb[u][w] * dyx[u][w] : 0.f;
      row += t;
      col_sum[w] += t;
    }
    row = row_sum(row);
    if (i < ch.len && threadIdx.x % 16 == 0) rows[blockIdx.z * size + ch.at_head(i)] = row;
  }
#pragma unroll
  for (int w = 0; w < kPer; ++w) col_part[threadIdx.x / 16][tile_col(w)] = col_sum[w];
  __syncthreads();
  const int j = j0 + int(threadIdx.x);
  if (threadIdx.x < kTile && j < ch.len) {
    float sum = 0.f;
    for (int k = 0; k < kThreads / 16; ++k) sum += col_part[k][threadIdx.x];
    cols[blockIdx.y * size + ch.at_head(j)] = sum;
  }
}

// Backward, block per (batch, chunk, head) × 64 × 64 tile of (j, p), with xd = dt·x:
//   dxd_j = Σ_{i ≥ j, same doc} exp(cs_i − cs_j) (C_i·B_j) dy_i + decay_out_j · dS_out B_j
//   dx_j = dt_j dxd_j + D dy_j
// and per token, summed over this p tile: x_j·dxd_j (ddt's direct part) and dy_j·x_j (dD), into
// [p tiles, B, S, H].
template <class T>
__global__ void __launch_bounds__(kThreads, kMatrixBlocks<T>)
    chunk_dx_kernel(SsdDims d, const T* x, const T* dt, const T* dy, const T* Bm, const T* D,
                    const float* cbm, const float* cs, const float* decay_out, const int32_t* doc,
                    const float* dstates, T* dx, float* ddt_part, float* dD_part) {
  __shared__ TileShared<T> sm;
  const ChunkHead ch(d, blockIdx.x);
  const int j0 = int(blockIdx.y) * kTile;
  const int64_t p0 = int64_t(blockIdx.z) * kTile;
  if (j0 >= ch.len) return;
  const auto b_rows = view<true>(Bm + ch.at_bc(j0, 0), ch.bc_step, ch.len - j0);
  Acc acc = {};
  for (int i0 = j0; i0 < ch.len; i0 += kTile) {
    Acc bc;
    load_square<true>(cbm, ch.cb0, d, ch, j0, i0, bc);
    store_first_stage(
        bc, [&](int r, int col) { return intra_decay(ch, cs, doc, i0 + col, j0 + r); }, sm);
    gemm_tile_shared_a<false>(min(kTile, ch.len - i0),
                              view<false>(dy + ch.at_x(i0, p0), ch.x_step, d.head_dim - p0), sm,
                              acc);
  }
  Acc to_state = {};
  gemm_tile<true, true>(int(d.state), b_rows,
                        view<true>(dstates + ch.state0 + p0 * d.state, d.state, d.head_dim - p0),
                        sm, to_state);
  const float skip = D != nullptr ? to_f32(D[ch.h]) : 0.f;
  const int64_t part = int64_t(blockIdx.z) * d.batch * d.seqlen * d.heads;
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int j = j0 + tile_row(u);
    const bool valid = j < ch.len;
    const float r = valid ? decay_out[ch.at_head(j)] : 0.f;
    const float dtj = valid ? to_f32(dt[ch.at_head(j)]) : 0.f;
    float x_dxd = 0.f, dy_x = 0.f;
#pragma unroll
    for (int w = 0; w < kPer; ++w) {
      const int64_t p = p0 + tile_col(w);
      if (!valid || p >= d.head_dim) continue;
      const float dxd = acc[u][w] + r * to_state[u][w];
      const float xv = to_f32(x[ch.at_x(j, p)]), dyv = to_f32(dy[ch.at_x(j, p)]);
      dx[ch.at_x(j, p)] = from_f32<T>(dtj * dxd + skip * dyv);
      x_dxd += xv * dxd;
      dy_x += dyv * xv;
    }
    x_dxd = row_sum(x_dxd);
    dy_x = row_sum(dy_x);
    if (valid && threadIdx.x % 16 == 0) {
      ddt_part[part + ch.at_head(j)] = x_dxd;
      dD_part[part + ch.at_head(j)] = dy_x;
    }
  }
}

// Backward, block per (batch, chunk, head) × 64 × 64 tile of (i, n): this head's
//   dC_i = Σ_{j ≤ i, same doc} exp(cs_i − cs_j) dt_j (dy_i·x_j) B_j + decay_in_i · dy_i S_in
// into dC_heads [B, S, H, N] (fp32), and C_i· of the second (incoming-state) part, the dcs_i of
// that term, summed over this n tile into off_part [n tiles, B, S, H].
template <class T>
__global__ void __launch_bounds__(kThreads, kMatrixBlocks<T>)
    chunk_dC_kernel(SsdDims d, const T* dt, const T* dy, const T* Bm, const T* Cm,
                    const float* dyxm, const float* cs, const float* decay_in, const int32_t* doc,
                    const float* states, float* dC_heads, float* off_part) {
  __shared__ TileShared<T> sm;
  const ChunkHead ch(d, blockIdx.x);
  const int i0 = int(blockIdx.y) * kTile;
  const int64_t n0 = int64_t(blockIdx.z) * kTile;
  if (i0 >= ch.len) return;
  const auto dy_rows = view<true>(dy + ch.at_x(i0, 0), ch.x_step, ch.len - i0);
  Acc acc = {};
  for (int j0 = 0; j0 <= i0; j0 += kTile) {
    Acc dyx;
    load_square<false>(dyxm, ch.dyx0, d, ch, i0, j0, dyx);
    store_first_stage(
        dyx,
        [&](int r, int col) {
          const float w = intra_decay(ch, cs, doc, i0 + r, j0 + col);
          return w != 0.f ? w * to_f32(dt[ch.at_head(j0 + col)]) : 0.f;
        },
        sm);
    gemm_tile_shared_a<false>(min(kTile, ch.len - j0),
                              view<false>(Bm + ch.at_bc(j0, n0), ch.bc_step, d.state - n0), sm,
                              acc);
  }
  Acc from_state = {};
  gemm_tile<true, false>(int(d.head_dim), dy_rows,
                         view<false>(states + ch.state0 + n0, d.state, d.state - n0), sm,
                         from_state);
  const int64_t part = int64_t(blockIdx.z) * d.batch * d.seqlen * d.heads;
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int i = i0 + tile_row(u);
    const bool valid = i < ch.len;
    const float e = valid ? decay_in[ch.at_head(i)] : 0.f;
    float c_dc = 0.f;
#pragma unroll
    for (int w = 0; w < kPer; ++w) {
      const int64_t n = n0 + tile_col(w);
      if (!valid || n >= d.state) continue;
      const float off = e * from_state[u][w];
      dC_heads[ch.at_head(i) * d.state + n] = acc[u][w] + off;
      c_dc += to_f32(Cm[ch.at_bc(i, n)]) * off;
    }
    c_dc = row_sum(c_dc);
    if (valid && threadIdx.x % 16 == 0) off_part[part + ch.at_head(i)] = c_dc;
  }
}

// Backward, block per (batch, chunk, head) × 64 × 64 tile of (j, n): this head's
//   dB_j = Σ_{i ≥ j, same doc} exp(cs_i − cs_j) dt_j (dy_i·x_j) C_i
//        + decay_out_j dt_j · x_j dS_out
// into dB_heads [B, S, H, N] (fp32), and B_j· of the second (state) part, v_j (its dcs is −v_j
// at j and +v_j at the chunk's last token), summed over this n tile into v_part.
template <class T>
__global__ void __launch_bounds__(kThreads, kMatrixBlocks<T>)
    chunk_dB_kernel(SsdDims d, const T* x, const T* dt, const T* Bm, const T* Cm, const float* dyxm,
                    const float* cs, const float* decay_out, const int32_t* doc,
                    const float* dstates, float* dB_heads, float* v_part) {
  __shared__ TileShared<T> sm;
  const ChunkHead ch(d, blockIdx.x);
  const int j0 = int(blockIdx.y) * kTile;
  const int64_t n0 = int64_t(blockIdx.z) * kTile;
  if (j0 >= ch.len) return;
  const auto x_rows = view<true>(x + ch.at_x(j0, 0), ch.x_step, ch.len - j0);
  Acc acc = {};
  for (int i0 = j0; i0 < ch.len; i0 += kTile) {
    Acc xdy;
    load_square<true>(dyxm, ch.dyx0, d, ch, j0, i0, xdy);
    store_first_stage(
        xdy,
        [&](int r, int col) {
          const float w = intra_decay(ch, cs, doc, i0 + col, j0 + r);
          return w != 0.f ? w * to_f32(dt[ch.at_head(j0 + r)]) : 0.f;
        },
        sm);
    gemm_tile_shared_a<false>(min(kTile, ch.len - i0),
                              view<false>(Cm + ch.at_bc(i0, n0), ch.bc_step, d.state - n0), sm,
                              acc);
  }
  Acc to_state = {};
  gemm_tile<true, false>(int(d.head_dim), x_rows,
                         view<false>(dstates + ch.state0 + n0, d.state, d.state - n0), sm,
                         to_state);
  const int64_t part = int64_t(blockIdx.z) * d.batch * d.seqlen * d.heads;
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int j = j0 + tile_row(u);
    const bool valid = j < ch.len;
    const float f = valid ? decay_out[ch.at_head(j)] * to_f32(dt[ch.at_head(j)]) : 0.f;
    float b_db = 0.f;
#pragma unroll
    for (int w = 0; w < kPer; ++w) {
      const int64_t n = n0 + tile_col(w);
      if (!valid || n >= d.state) continue;
      const float own = f * to_state[u][w];
      dB_heads[ch.at_head(j) * d.state + n] = acc[u][w] + own;
      b_db += to_f32(Bm[ch.at_bc(j, n)]) * own;
    }
    b_db = row_sum(b_db);
    if (valid && threadIdx.x % 16 == 0) v_part[part + ch.at_head(j)] = b_db;
  }
}

// What the backward's tile kernels leave per token for finish_dt, each [tiles, B, S, H] fp32.
// (The fused kernels leave one part of each, but off, per 64 state columns, and one row tile of
// the chunk's length.)
struct TokenParts {
  const float *ddt, *dD;     // p_tiles parts: x_t·dxd_t, dy_t·x_t
  const float *off, *v;      // n_tiles and v_tiles parts: dcs of the incoming-state term; v_t of
                             // the state term
  const float *rows, *cols;  // row tiles of a chunk: the intra-chunk terms' + and − ends
  int64_t p_tiles, n_tiles, v_tiles;
  int row_tile;  // tokens per row tile
};

// Backward, block per (batch, chunk) × 32 heads, thread per (head, one of 8 runs of the chunk's
// tokens; neighbouring threads are neighbouring heads, so loads are coalesced):
//   dcs_t = rows_t − cols_t + off_t − v_t, plus Σ_j v_j + decay·⟨dS_out, S_in⟩ at the last token,
//   suffix_t = Σ_{k ≥ t} dcs_k, ddt_t = x_t·dxd_t + A·suffix_t,
// and the chunk's shares of dA (Σ dt_t·suffix_t) and dD into da_part, dd_part [B, n_chunks, H]
// (fp64, as the CPU's sums). Each run sums its dcs first; a run's suffix then starts from the
// sums of the runs after it, added in a fixed order.
template <class T>
__global__ void __launch_bounds__(kThreads)
    finish_dt_kernel(SsdDims d, const T* dt, const T* A, const float* decay_in,
                     const float* ddecay, TokenParts parts, T* ddt, double* da_part,
                     double* dd_part) {
  __shared__ float run_dcs[kDtRuns][kDtHeads], run_v[kDtRuns][kDtHeads];
  __shared__ double run_da[kDtRuns][kDtHeads], run_dd[kDtRuns][kDtHeads];
  const int hl = int(threadIdx.x) % kDtHeads, run = int(threadIdx.x) / kDtHeads;
  const int64_t h = int64_t(blockIdx.y) * kDtHeads + hl;
  const bool active = h < d.heads;
  const int64_t flat = int64_t(blockIdx.x) * d.heads + (active ? h : 0);
  const ChunkHead ch(d, flat);
  const int64_t size = d.batch * d.seqlen * d.heads;
  auto sum = [&](const float* part, int64_t begin, int64_t end, int64_t i) {
    float s = 0.f;
    for (int64_t k = begin; k < end; ++k) s += part[k * size + i];
    return s;
  };
  const int last = ch.len - 1, last_tile = last / parts.row_tile;
  const int per_run = (ch.len + kDtRuns - 1) / kDtRuns;
  const int begin = min(run * per_run, ch.len), end = min(begin + per_run, ch.len);
  auto dcs_at = [&](int t) {
    const int64_t i = ch.at_head(t);
    const int tile = t / parts.row_tile;
    return sum(parts.rows, 0, tile + 1, i) - sum(parts.cols, tile, last_tile + 1, i) +
           sum(parts.off, 0, parts.n_tiles, i) - sum(parts.v, 0, parts.v_tiles, i);
  };
  float own_dcs = 0.f, own_v = 0.f;
  for (int t = begin; active && t < end; ++t) {
    own_dcs += dcs_at(t);
    own_v += sum(parts.v, 0, parts.v_tiles, ch.at_head(t));
  }
  run_dcs[run][hl] = own_dcs;
  run_v[run][hl] = own_v;
  __syncthreads();
  double da = 0, dd = 0;
  if (active) {
    float v_total = 0.f, suffix = 0.f;
    for (int r = 0; r < kDtRuns; ++r) v_total += run_v[r][hl];
    for (int r = kDtRuns - 1; r > run; --r) suffix += run_dcs[r][hl];
    suffix += v_total + decay_in[ch.at_head(last)] * ddecay[flat];  // the last token's extra
    const float a = to_f32(A[ch.h]);
    for (int t = end - 1; t >= begin; --t) {
      const int64_t i = ch.at_head(t);
      suffix += dcs_at(t);
      ddt[i] = from_f32<T>(sum(parts.ddt, 0, parts.p_tiles, i) + a * suffix);
      da += double(to_f32(dt[i])) * suffix;
      dd += sum(parts.dD, 0, parts.p_tiles, i);
    }
  }
  run_da[run][hl] = da;
  run_dd[run][hl] = dd;
  __syncthreads();
  if (run == 0 && active) {
    for (int r = 1; r < kDtRuns; ++r) da += run_da[r][hl], dd += run_dd[r][hl];
    da_part[flat] = da;
    dd_part[flat] = dd;
  }
}

// dBm, dCm [B, S, G, N] = the per-head buffers summed over the heads of each group in order,
// one thread per output element.
template <class T>
__global__ void group_sum_kernel(SsdDims d, const float* dB_heads, const float* dC_heads, T* dBm,
                                 T* dCm) {
  const int64_t flat = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (flat >= d.batch * d.seqlen * d.groups * d.state) return;
  const int64_t n = flat % d.state, g = flat / d.state % d.groups, bt = flat / d.state / d.groups;
  const int64_t per_group = d.heads / d.groups;
  float sb = 0.f, sc = 0.f;
  for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) {
    const int64_t i = (bt * d.heads + h) * d.state + n;
    sb += dB_heads[i];
    sc += dC_heads[i];
  }
  dBm[flat] = from_f32<T>(sb);
  dCm[flat] = from_f32<T>(sc);
}

// dA[h] += Σ_{b, c} da_part, dD[h] += Σ dd_part (when dD is given): block per head, summed in
// double in a fixed order.
template <class T>
__global__ void __launch_bounds__(kThreads)
    param_grad_kernel(SsdDims d, const double* da_part, const double* dd_part, T* dA, T* dD) {
  __shared__ double partial[kThreads];
  const int64_t h = blockIdx.x, units = d.batch * d.n_chunks;
  double da = 0, dd = 0;
  for (int64_t k = threadIdx.x; k < units; k += kThreads) {
    da += da_part[k * d.heads + h];
    dd += dd_part[k * d.heads + h];
  }
  da = block_sum(da, partial);
  if (threadIdx.x == 0) dA[h] = from_f32<T>(float(double(to_f32(dA[h])) + da));
  if (dD == nullptr) return;
  dd = block_sum(dd, partial);
  if (threadIdx.x == 0) dD[h] = from_f32<T>(float(double(to_f32(dD[h])) + dd));
}

}  // namespace nh::cuda::ssd_detail
