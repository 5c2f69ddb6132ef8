// The block-wide 64 × 64 tile products the CUDA SSD (ssd.cu) is built from. A block of 256
// threads owns one output tile; each thread holds a 4 × 4 sub-tile of it (rows ty + 16u, columns
// tx + 16w) for the kernels' epilogues. Operands are functions f(k, row) evaluated while they
// are staged through shared memory, so decays and masks are applied on the way in. Two-stage
// steps (the masked (L ∘ C·Bᵀ)-like matrix, then its product with x, dy, B or C) keep the first
// stage's tile in shared memory.
//
// An operand is either such a function or a View: plain elements of a strided matrix, which the
// bf16 engine stages 16 bytes at a time.
//
// Two engines behind one interface, chosen by the storage type of the kernel's tensors:
//   float: fp32 operands, fp32 FMA on the CUDA cores (the exact path the fp32 tests check);
//   bf16:  operands rounded to bf16 as they are staged and multiplied on the tensor cores
//          (mma.cuh) with fp32 accumulators, as mamba_ssm's kernels do; each warp computes a
//          16 × 32 part of the tile, handed to the 4 × 4 sub-tiles through shared memory.
#pragma once

#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/mma.cuh"

namespace nh::cuda::ssd_tiles {

constexpr int kThreads = 256;
constexpr int kTile = 64;
constexpr int kPer = kTile / 16;

using Acc = float[kPer][kPer];

__device__ __forceinline__ int tile_row(int u) { return int(threadIdx.x) / 16 + 16 * u; }
__device__ __forceinline__ int tile_col(int w) { return int(threadIdx.x) % 16 + 16 * w; }

// Sum over the 16 threads of a tile row (lanes with the same ty, inside one warp). Every thread
// of the warp must call it.
__device__ __forceinline__ float row_sum(float v) {
  for (int m = 8; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Element (k, m) of an operand read straight from memory: p[m·stride + k] when kAlongK (rows m
// contiguous in k, as C rows in C·Bᵀ), else p[k·stride + m]; zero for m >= valid (and, as for
// every operand, for k >= K). With `weight`, element (k, m) is also multiplied by
// weight[k·weight_stride] (and by dt[k·weight_stride] with dt): a per-token factor.
template <class E, bool kAlongK>
struct View {
  const E* p;
  int64_t stride;
  int64_t valid;
  const float* weight = nullptr;
  const E* dt = nullptr;
  int64_t weight_stride = 0;
  __device__ float scale(int k) const {
    if (weight == nullptr) return 1.f;
    const float w = weight[k * weight_stride];
    return dt != nullptr ? w * to_f32(dt[k * weight_stride]) : w;
  }
  __device__ float operator()(int k, int m) const {
    return m < valid ? to_f32(p[kAlongK ? m * stride + k : k * stride + m]) * scale(k) : 0.f;
  }
};

template <bool kAlongK, class E>
__device__ View<E, kAlongK> view(const E* p, int64_t stride, int64_t valid) {
  return {p, stride, valid};
}

template <class T>
struct TileShared;

// fp32 engine: operands pass 16 reduction indices at a time, stored [k][row] (padded rows spread
// transposed stores over the banks).
template <>
struct TileShared<float> {
  static constexpr int kSlice = 16, kPad = kTile + 1;
  float a[kSlice][kPad];  // [k][row] of the first operand
  float b[kSlice][kPad];  // [k][column] of the second
  float m[kTile][kPad];   // a first-stage tile, stored [k][row] for the second stage
};

// bf16 engine: operands pass 32 reduction indices at a time, stored [row][k] as the mma
// fragments read them (16 bytes of padding per row keep those reads free of bank conflicts).
template <>
struct alignas(16) TileShared<bf16> {  // 16-byte rows for vector stores and ldmatrix
  static constexpr int kSlice = 32, kPad = kSlice + 8, kMPad = kTile + 8;
  bf16 a[kTile][kPad];          // [row][k] of the first operand
  bf16 b[kTile][kPad];          // [column][k] of the second
  bf16 m[kTile][kMPad];         // a first-stage tile [row][k] for the second stage
  float out[kTile][kTile + 1];  // a product on its way from mma fragments to the sub-tiles
};

// --- fp32 engine ---------------------------------------------------------------------------

// dst[kk][m] = f(k0 + kk, m) for kk < kSlice, m < kTile, zero where k0 + kk >= K (f predicates m
// itself). The loop order follows the operand's memory layout (contiguous along k or along m)
// so that neighbouring threads read neighbouring addresses.
template <bool kAlongK, class F>
__device__ void stage_slice(float (*dst)[TileShared<float>::kPad], int k0, int K, F&& f) {
  constexpr int kSlice = TileShared<float>::kSlice;
  for (int e = threadIdx.x; e < kSlice * kTile; e += kThreads) {
    const int kk = kAlongK ? e % kSlice : e / kTile;
    const int m = kAlongK ? e / kSlice : e % kTile;
    dst[kk][m] = k0 + kk < K ? f(k0 + kk, m) : 0.f;
  }
}

// acc[u][w] += Σ_kk a[kk][tile_row(u)] · b[kk][tile_col(w)]
__device__ inline void multiply_slice(const float (*a)[TileShared<float>::kPad],
                                      const float (*b)[TileShared<float>::kPad], Acc& acc) {
#pragma unroll
  for (int kk = 0; kk < TileShared<float>::kSlice; ++kk) {
    float av[kPer], bv[kPer];
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      av[u] = a[kk][tile_row(u)];
      bv[u] = b[kk][tile_col(u)];
    }
#pragma unroll
    for (int u = 0; u < kPer; ++u)
#pragma unroll
      for (int w = 0; w < kPer; ++w) acc[u][w] += av[u] * bv[w];
  }
}

// acc[row][col] += Σ_{k < K} fa(k, row) · fb(k, col). Called by the whole block.
template <bool kAAlongK, bool kBAlongK, class FA, class FB>
__device__ void gemm_tile(int K, FA&& fa, FB&& fb, TileShared<float>& sm, Acc& acc) {
  for (int k0 = 0; k0 < K; k0 += TileShared<float>::kSlice) {
    stage_slice<kAAlongK>(sm.a, k0, K, fa);
    stage_slice<kBAlongK>(sm.b, k0, K, fb);
    __syncthreads();
    multiply_slice(sm.a, sm.b, acc);
    __syncthreads();
  }
}

// acc[row][col] += Σ_{k < K} m[row][k] · fb(k, col), K <= kTile, with m the tile
// store_first_stage left: the second stage.
template <bool kBAlongK, class FB>
__device__ void gemm_tile_shared_a(int K, FB&& fb, TileShared<float>& sm, Acc& acc) {
  for (int k0 = 0; k0 < K; k0 += TileShared<float>::kSlice) {
    stage_slice<kBAlongK>(sm.b, k0, K, fb);
    __syncthreads();
    multiply_slice(&sm.m[k0], sm.b, acc);
    __syncthreads();
  }
}

// m[row][col] = v[row][col] · scale(row, col): a first-stage tile, whose columns become the
// reduction index of the second stage. The next gemm_tile_shared_a synchronises before reading.
template <class F>
__device__ void store_first_stage(const Acc& v, F&& scale, TileShared<float>& sm) {
#pragma unroll
  for (int u = 0; u < kPer; ++u)
#pragma unroll
    for (int w = 0; w < kPer; ++w)
      sm.m[tile_col(w)][tile_row(u)] = v[u][w] * scale(tile_row(u), tile_col(w));
}

// --- bf16 engine ---------------------------------------------------------------------------

using Frag = float[4][4];  // a warp's 16 × 32 part: four 16 × 8 mma tiles

// The warp's part of the tile: rows 16·(warp % 4), columns 32·(warp / 4).
__device__ __forceinline__ int warp_row0() { return int(threadIdx.x) / 32 % 4 * 16; }
__device__ __forceinline__ int warp_col0() { return int(threadIdx.x) / 32 / 4 * 32; }

// dst[m][kk] = bf16(f(k0 + kk, m)) for kk < kSlice, m < kTile, zero where k0 + kk >= K.
template <bool kAlongK, class F>
__device__ void stage_slice(bf16 (*dst)[TileShared<bf16>::kPad], int k0, int K, F&& f) {
  constexpr int kSlice = TileShared<bf16>::kSlice;
  for (int e = threadIdx.x; e < kSlice * kTile; e += kThreads) {
    const int kk = kAlongK ? e % kSlice : e / kTile;
    const int m = kAlongK ? e / kSlice : e % kTile;
    dst[m][kk] = __float2bfloat16(k0 + kk < K ? f(k0 + kk, m) : 0.f);
  }
}

// Eight consecutive elements of a View's row (along k) or column run (along m) as fp32, 16 bytes
// at a time where the address allows; `n` of them are inside the operand, the rest read 0.
template <class E>
__device__ void load8(const E* p, int n, float (&v)[8]) {
  const bool whole = n >= 8 && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  if constexpr (std::is_same_v<E, bf16>) {
    if (whole) {
      const uint4 raw = *reinterpret_cast<const uint4*>(p);
      const bf16* h = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = __bfloat162float(h[i]);
      return;
    }
  } else {
    if (whole) {
      const float4 lo = *reinterpret_cast<const float4*>(p);
      const float4 hi = *reinterpret_cast<const float4*>(p + 4);
      v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
      v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = i < n ? to_f32(p[i]) : 0.f;
}

// The View form of stage_slice: each thread moves one run of 8 elements (kSlice·kTile / 8 =
// kThreads runs), along k into one row of dst, or along m into one column.
template <bool kAlongK, class E>
__device__ void stage_slice(bf16 (*dst)[TileShared<bf16>::kPad], int k0, int K,
                            const View<E, kAlongK>& v) {
  constexpr int kSlice = TileShared<bf16>::kSlice;
  static_assert(kSlice * kTile / 8 == kThreads);
  float run[8];
  if constexpr (kAlongK) {
    const int m = threadIdx.x / (kSlice / 8), kk = threadIdx.x % (kSlice / 8) * 8;
    const int n = m < v.valid ? min(8, K - (k0 + kk)) : 0;
    load8(v.p + m * v.stride + k0 + kk, n, run);
    if (v.weight != nullptr)
#pragma unroll
      for (int i = 0; i < 8; ++i) run[i] *= i < n ? v.scale(k0 + kk + i) : 0.f;
    // Rows are kPad = 40 elements (80 bytes) apart: the run's 16 bytes are aligned.
    *reinterpret_cast<uint4*>(&dst[m][kk]) =
        make_uint4(pack_bf16(run[0], run[1]), pack_bf16(run[2], run[3]), pack_bf16(run[4], run[5]),
                   pack_bf16(run[6], run[7]));
  } else {
    const int kk = threadIdx.x % kSlice, m = threadIdx.x / kSlice * 8;
    const int n = k0 + kk < K ? int(v.valid - m < 8 ? v.valid - m : 8) : 0;
    load8(v.p + (k0 + kk) * v.stride + m, n, run);
    if (v.weight != nullptr && n > 0) {
      const float f = v.scale(k0 + kk);
#pragma unroll
      for (int i = 0; i < 8; ++i) run[i] *= f;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) dst[m + i][kk] = __float2bfloat16(run[i]);
  }
}

// frag += a[rows][ka0 .. ka0 + kSlice] · b[cols][0 .. kSlice]ᵀ for the warp's part.
template <int kAStride>
__device__ void multiply_slice(const bf16* a, int ka0, const bf16 (*b)[TileShared<bf16>::kPad],
                               Frag& frag) {
#pragma unroll
  for (int ks = 0; ks < TileShared<bf16>::kSlice; ks += 16) {
    uint32_t af[4];
    load_a(a, kAStride, warp_row0(), ka0 + ks, af);
#pragma unroll
    for (int j = 0; j < 4; j += 2) {
      uint32_t bf[2][2];
      load_b_transposed(&b[0][0], TileShared<bf16>::kPad, warp_col0() + 8 * j, ks, bf);
      mma_bf16(frag[j], af, bf[0]);
      mma_bf16(frag[j + 1], af, bf[1]);
    }
  }
}

// acc += frag, moving each warp's fragments to the threads' sub-tiles through sm.out.
__device__ inline void add_fragments(const Frag& frag, TileShared<bf16>& sm, Acc& acc) {
  const Lane l;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int r = warp_row0() + l.g, c = warp_col0() + 8 * j + 2 * l.c;
    sm.out[r][c] = frag[j][0];
    sm.out[r][c + 1] = frag[j][1];
    sm.out[r + 8][c] = frag[j][2];
    sm.out[r + 8][c + 1] = frag[j][3];
  }
  __syncthreads();
#pragma unroll
  for (int u = 0; u < kPer; ++u)
#pragma unroll
    for (int w = 0; w < kPer; ++w) acc[u][w] += sm.out[tile_row(u)][tile_col(w)];
  __syncthreads();  // sm.out is reused by the next product
}

template <bool kAAlongK, bool kBAlongK, class FA, class FB>
__device__ void gemm_tile(int K, FA&& fa, FB&& fb, TileShared<bf16>& sm, Acc& acc) {
  Frag frag = {};
  for (int k0 = 0; k0 < K; k0 += TileShared<bf16>::kSlice) {
    stage_slice<kAAlongK>(sm.a, k0, K, fa);
    stage_slice<kBAlongK>(sm.b, k0, K, fb);
    __syncthreads();
    multiply_slice<TileShared<bf16>::kPad>(&sm.a[0][0], 0, sm.b, frag);
    __syncthreads();
  }
  add_fragments(frag, sm, acc);
}

template <bool kBAlongK, class FB>
__device__ void gemm_tile_shared_a(int K, FB&& fb, TileShared<bf16>& sm, Acc& acc) {
  Frag frag = {};
  for (int k0 = 0; k0 < K; k0 += TileShared<bf16>::kSlice) {
    stage_slice<kBAlongK>(sm.b, k0, K, fb);
    __syncthreads();
    multiply_slice<TileShared<bf16>::kMPad>(&sm.m[0][0], k0, sm.b, frag);
    __syncthreads();
  }
  add_fragments(frag, sm, acc);
}

template <class F>
__device__ void store_first_stage(const Acc& v, F&& scale, TileShared<bf16>& sm) {
#pragma unroll
  for (int u = 0; u < kPer; ++u)
#pragma unroll
    for (int w = 0; w < kPer; ++w)
      sm.m[tile_row(u)][tile_col(w)] = __float2bfloat16(v[u][w] * scale(tile_row(u), tile_col(w)));
}

}  // namespace nh::cuda::ssd_tiles
