// The chunk geometry the CUDA SSD's kernels (ssd.cu, ssd_backward.cuh) share: dimensions, one
// (batch, chunk, head) unit and the offsets of its tokens, the intra-chunk decay mask, loads of a
// chunk's Q × Q matrices into tile sub-tiles, and a deterministic block sum.
#pragma once

#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/ssd_tiles.cuh"

namespace nh::cuda::ssd_detail {

using namespace ssd_tiles;

// Blocks per multiprocessor the tile kernels are compiled for: the bf16 engine's are latency
// bound, so registers are traded for a third resident block.
template <class T>
constexpr int kMatrixBlocks = std::is_same_v<T, bf16> ? 3 : 1;

// The per-token walks over a chunk (chunk_cumsum, finish_dt): block per (batch, chunk) × 32
// heads, thread per (head, one of 8 runs of the chunk's tokens).
constexpr int kDtHeads = 32, kDtRuns = kThreads / kDtHeads;

struct SsdDims {
  int64_t batch, seqlen, heads, head_dim, groups, state, chunk, n_chunks;
};

// One (batch, chunk, head), the unit of the per-chunk kernels (numbered with the head fastest),
// and the offsets of its chunk-local token t in each layout.
struct ChunkHead {
  int64_t b, c, h, g, t0;
  int len;
  int64_t x0, x_step;        // [B, S, H, P]
  int64_t bc0, bc_step;      // [B, S, G, N]
  int64_t head0, head_step;  // [B, S, H]
  int64_t row0;              // [B, S]
  int64_t state0;            // this chunk's P × N block of [B, n_chunks, H, P, N]
  int64_t cb0;               // its group's Q × Q block of [B, n_chunks, G, Q, Q] (Q = chunk)
  int64_t dyx0;              // its own Q × Q block of [B, n_chunks, H, Q, Q]

  __device__ ChunkHead(const SsdDims& d, int64_t flat) {
    h = flat % d.heads;
    c = flat / d.heads % d.n_chunks;
    b = flat / d.heads / d.n_chunks;
    g = h / (d.heads / d.groups);
    t0 = c * d.chunk;
    len = int(d.chunk < d.seqlen - t0 ? d.chunk : d.seqlen - t0);
    row0 = b * d.seqlen + t0;
    x_step = d.heads * d.head_dim;
    x0 = (row0 * d.heads + h) * d.head_dim;
    bc_step = d.groups * d.state;
    bc0 = (row0 * d.groups + g) * d.state;
    head_step = d.heads;
    head0 = row0 * d.heads + h;
    state0 = ((b * d.n_chunks + c) * d.heads + h) * d.head_dim * d.state;
    cb0 = ((b * d.n_chunks + c) * d.groups + g) * d.chunk * d.chunk;
    dyx0 = flat * d.chunk * d.chunk;
  }
  __device__ int64_t at_x(int t, int64_t p) const { return x0 + t * x_step + p; }
  __device__ int64_t at_bc(int t, int64_t n) const { return bc0 + t * bc_step + n; }
  __device__ int64_t at_head(int t) const { return head0 + t * head_step; }
  __device__ int64_t at_row(int t) const { return row0 + t; }
};

// exp(cs_i − cs_j) for tokens j ≤ i of one document inside the chunk (the mask L); zero for
// other pairs and for tokens past the chunk's end, where nothing is read.
__device__ inline float intra_decay(const ChunkHead& ch, const float* cs, const int32_t* doc, int i,
                             int j) {
  if (j > i || i >= ch.len || doc[ch.at_row(i)] != doc[ch.at_row(j)]) return 0.f;
  return expf(cs[ch.at_head(i)] - cs[ch.at_head(j)]);
}

// acc = rows r0 … and columns c0 … of a chunk's Q × Q matrix at m + offset (C·Bᵀ of
// chunk_cb_kernel, dy·xᵀ of chunk_dyx_kernel), or of its transpose when kTransposed; zero outside
// the chunk.
template <bool kTransposed>
__device__ void load_square(const float* m, int64_t offset, const SsdDims& d, const ChunkHead& ch,
                            int r0, int c0, Acc& acc) {
#pragma unroll
  for (int u = 0; u < kPer; ++u)
#pragma unroll
    for (int w = 0; w < kPer; ++w) {
      const int r = r0 + tile_row(u), c = c0 + tile_col(w);
      const int i = kTransposed ? c : r, j = kTransposed ? r : c;
      acc[u][w] = r < ch.len && c < ch.len ? m[offset + i * d.chunk + j] : 0.f;
    }
}

// Sum over a block of kThreads in a fixed order (a tree over shared memory).
template <class V>
__device__ V block_sum(V v, V* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (int(threadIdx.x) < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const V total = shared[0];
  __syncthreads();  // shared may be reused by the next call
  return total;
}

}  // namespace nh::cuda::ssd_detail
