// Few-row products y = x·wᵀ + b (gemv.cuh). Memory-bound: each kernel streams w once with
// several 16-byte loads in flight per lane and does little else.
//
// A block owns a few consecutive rows of w (columns of y). Its warps split K: warp i takes the
// steps i, i + warps, ... and leaves fp32 partial sums in shared memory, which the block adds in
// warp order, adds the bias to and stores: one kernel, a fixed summation order. The number of
// warps a block has keeps all blocks resident at once where it can (no second, partly filled
// wave of blocks) and fills every SM when n is small (K split over up to kMaxWarps warps).
// x is read through L1 (it is small and every block reads all of it), w around it.
#include <algorithm>
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gemv.cuh"

namespace nh::cuda {

namespace {

constexpr int kMaxWarps = 16;
constexpr int kMinWarps = 4;
// Warps an SM holds at once within the kernels' register budgets, which their launch bounds
// set: 64 registers a thread for the tensor-core kernel, 128 for the F32/scalar one (its sums
// for 8 rows and 4 columns alone take 32).
constexpr int kMmaResidentWarps = 32;
constexpr int kFmaResidentWarps = 16;
// 16-byte loads of w a lane of the tensor-core kernel issues before it uses any (64 bytes in
// flight a lane), the most the 64 registers hold with x's loads and the sums: with more, the
// compiler splits them into rounds that each wait for memory.
constexpr int kLoadsPerStep = 4;
// Columns of y per block of the F32/scalar kernel: a lane has a load of each in flight.
constexpr int kFmaCols = 4;

// partial[warp][m][c]: the warp's sum for row m of x and the block's column c.
__device__ __forceinline__ int partial_index(int warp, int m, int c, int cols) {
  return (warp * int(kGemvMaxRows) + m) * cols + c;
}

// y[m, col0 + c] = Σ_warps partial[warp][m][c] (+ b), warps in order, for the block's columns.
template <class T, int kCols>
__device__ void store_columns(const float* partial, int warps, int rows, int64_t col0, int64_t n,
                              const T* __restrict__ b, T* __restrict__ y) {
  for (int i = threadIdx.x; i < rows * kCols; i += blockDim.x) {
    const int m = i / kCols, c = i % kCols;
    const int64_t col = col0 + c;
    if (col >= n) continue;
    float s = 0.f;
    for (int warp = 0; warp < warps; ++warp) s += partial[partial_index(warp, m, c, kCols)];
    if (b) s += to_f32(b[col]);
    y[m * n + col] = from_f32<T>(s);
  }
}

// 16 bytes of w: read once, so not cached in L1 (where x stays); the L2 fetches the whole
// 128-byte line, which the lane's and its neighbours' next loads use. volatile: never
// speculated past the bounds checks that guard it.
__device__ __forceinline__ uint4 load_streaming(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint4 load_cached(const void* p) {
  return __ldg(static_cast<const uint4*>(p));
}

// d += A·B on the tensor cores (m16n8k16, bf16 in, fp32 accumulate) with A's rows 8-15 zero:
// a0, a2 hold A's row g (lane / 4) at the k pairs 2t and 2t + 8 (t = lane % 4), b0, b1 B's
// column g at the same k pairs; d is D[g][2t], D[g][2t + 1]. D's rows 8-15 stay zero.
__device__ __forceinline__ void mma_bf16(float (&d)[2], uint32_t a0, uint32_t a2, uint32_t b0,
                                         uint32_t b1) {
  float zero0 = 0.f, zero1 = 0.f;
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(zero0), "+f"(zero1)
      : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

// One warp step of the tensor-core kernel: kChunks 32-k chunks of x at xp and of every tile's
// rows at wp, then their MMAs. kTail: the step reaches past k, and a lane loads only the pieces
// of its first `left` k (zeros for the rest; k % 8 == 0, so a lane's 8 k are all in or all out).
template <int kTiles, int kChunks, bool kTail>
__device__ __forceinline__ void mma_step(const bf16* xp, const bf16* const (&wp)[kTiles],
                                         int64_t left, float (&acc)[kTiles][2]) {
  uint4 xv[kChunks], wv[kTiles][kChunks];
#pragma unroll
  for (int u = 0; u < kChunks; ++u) {
    const bool in = !kTail || 32 * u < left;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    xv[u] = in ? load_cached(xp + 32 * u) : zero;
#pragma unroll
    for (int tile = 0; tile < kTiles; ++tile)
      wv[tile][u] = in ? load_streaming(wp[tile] + 32 * u) : zero;
  }
#pragma unroll
  for (int u = 0; u < kChunks; ++u)
#pragma unroll
    for (int tile = 0; tile < kTiles; ++tile) {
      mma_bf16(acc[tile], xv[u].x, xv[u].y, wv[tile][u].x, wv[tile][u].y);
      mma_bf16(acc[tile], xv[u].z, xv[u].w, wv[tile][u].z, wv[tile][u].w);
    }
}

// BF16, k a multiple of 8, x and w 16-byte aligned. A block owns 8·kTiles columns of y (rows of
// w); one MMA takes A = x (its rows m) and B = wᵀ for 8 of them (a tile), so each load of x
// serves kTiles tiles. The sum over k does not care in which order the MMA sees k, only that A
// and B see the same one: lane (g, t) loads the 8 consecutive k at 8t of a 32-k chunk from x row
// g and from w row g of each tile, and feeds the first four to one MMA and the last four to
// another as its k pairs 2t and 2t + 8; the 4 lanes of a row so give each MMA 16 distinct k of
// the chunk, and the two MMAs all 32. Rows past the end (x's from `rows` on, w's from n on) read
// the last row instead: they only reach rows and columns of D that are never stored.
template <int kTiles>
__global__ void __launch_bounds__(kMaxWarps * 32, kMmaResidentWarps / kMaxWarps)
    gemv_bf16_mma_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                         const bf16* __restrict__ b, bf16* __restrict__ y, int rows, int64_t n,
                         int64_t k) {
  constexpr int kCols = 8 * kTiles;
  constexpr int kChunks = kLoadsPerStep / kTiles;
  constexpr int kStep = 32 * kChunks;
  extern __shared__ float partial[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t col0 = blockIdx.x * int64_t(kCols);
  const int64_t start = int64_t(warp) * kStep + 8 * t, stride = int64_t(warps) * kStep;
  const bf16* xp = x + int64_t(min(g, rows - 1)) * k + start;
  const bf16* wp[kTiles];
#pragma unroll
  for (int tile = 0; tile < kTiles; ++tile)
    wp[tile] = w + std::min<int64_t>(col0 + tile * 8 + g, n - 1) * k + start;
  float acc[kTiles][2] = {};
  // Whole steps, then at most one partial one. `left`, k less the lane's position, decides for
  // the whole warp (it differs by 8t < 32 between the lanes), as mma.sync needs all 32 lanes.
  int64_t left = k - start;
  for (; left + 8 * t >= kStep; left -= stride) {
    mma_step<kTiles, kChunks, false>(xp, wp, left, acc);
    xp += stride;
#pragma unroll
    for (int tile = 0; tile < kTiles; ++tile) wp[tile] += stride;
  }
  if (left + 8 * t > 0) mma_step<kTiles, kChunks, true>(xp, wp, left, acc);
#pragma unroll
  for (int tile = 0; tile < kTiles; ++tile)
    for (int j = 0; j < 2; ++j)
      partial[partial_index(warp, g, tile * 8 + 2 * t + j, kCols)] = acc[tile][j];
  __syncthreads();
  store_columns<bf16, kCols>(partial, warps, rows, col0, n, b, y);
}

// kVec elements at p as fp32: one 16-byte load of 4 floats, or one element.
template <class T, int kVec, bool kStreaming>
__device__ __forceinline__ void load_f32(const T* p, float (&f)[kVec]) {
  if constexpr (kVec == 1) {
    f[0] = to_f32(*p);
  } else {
    static_assert(kVec == 4 && sizeof(T) == 4);
    const uint4 v = kStreaming ? load_streaming(p) : load_cached(p);
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  }
}

// What the tensor-core kernel does not take: F32 (kVec = 4 with k a multiple of 4 and x and w
// 16-byte aligned) and any dtype element by element (kVec = 1; correct for any shape, not
// tuned). A block owns kFmaCols columns of y; the lanes of a warp take consecutive
// kVec-element pieces of each step, keep kRows × kFmaCols fp32 sums, and add them across the
// warp by a fixed shuffle tree.
template <class T, int kRows, int kVec>
__global__ void __launch_bounds__(kMaxWarps * 32, kFmaResidentWarps / kMaxWarps)
    gemv_fma_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                    T* __restrict__ y, int64_t n, int64_t k) {
  extern __shared__ float partial[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t col0 = blockIdx.x * int64_t(kFmaCols);
  const T* wp[kFmaCols];
#pragma unroll
  for (int c = 0; c < kFmaCols; ++c) wp[c] = w + std::min<int64_t>(col0 + c, n - 1) * k;
  float acc[kRows][kFmaCols] = {};
  // k % kVec == 0: a lane's kVec elements are all in or all out.
  for (int64_t k0 = (int64_t(warp) * 32 + lane) * kVec; k0 < k; k0 += int64_t(warps) * 32 * kVec) {
    float wf[kFmaCols][kVec];
#pragma unroll
    for (int c = 0; c < kFmaCols; ++c) load_f32<T, kVec, true>(wp[c] + k0, wf[c]);
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      float xf[kVec];
      load_f32<T, kVec, false>(x + m * k + k0, xf);
#pragma unroll
      for (int c = 0; c < kFmaCols; ++c)
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[m][c] = fmaf(xf[e], wf[c][e], acc[m][c]);
    }
  }
#pragma unroll
  for (int m = 0; m < kRows; ++m)
#pragma unroll
    for (int c = 0; c < kFmaCols; ++c) {
      float s = acc[m][c];
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (lane == 0) partial[partial_index(warp, m, c, kFmaCols)] = s;
    }
  __syncthreads();
  store_columns<T, kFmaCols>(partial, warps, kRows, col0, n, b, y);
}

int sm_count() {
  // The current device's, asked once: the process uses one GPU.
  static const int count = [] {
    int device = 0, sms = 0;
    NH_CUDA_CHECK(cudaGetDevice(&device));
    NH_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return sms;
  }();
  return count;
}

// Warps per block for `blocks` blocks of a kernel of which an SM holds `resident` warps: the
// most (up to kMaxWarps, at least kMinWarps) that keep every block resident at once, and no
// more than K has steps of k_step.
int warps_per_block(int64_t blocks, int resident, int64_t k, int64_t k_step) {
  int warps = kMaxWarps;
  while (warps > kMinWarps && blocks > int64_t(sm_count()) * (resident / warps)) warps /= 2;
  const int64_t steps = std::max<int64_t>(1, (k + k_step - 1) / k_step);
  return int(std::min<int64_t>(warps, steps));
}

size_t partial_bytes(int warps, int cols) {
  return size_t(warps) * kGemvMaxRows * cols * sizeof(float);
}

template <int kTiles>
void launch_mma(int rows, int64_t n, int64_t k, const void* x, const void* w, const void* b,
                void* y) {
  constexpr int kCols = 8 * kTiles;
  const int64_t blocks = (n + kCols - 1) / kCols;
  const int warps = warps_per_block(blocks, kMmaResidentWarps, k, 32 * (kLoadsPerStep / kTiles));
  gemv_bf16_mma_kernel<kTiles>
      <<<unsigned(blocks), warps * 32, partial_bytes(warps, kCols), stream()>>>(
          static_cast<const bf16*>(x), static_cast<const bf16*>(w), static_cast<const bf16*>(b),
          static_cast<bf16*>(y), rows, n, k);
  NH_CUDA_CHECK_LAUNCH();
}

// The kernel compiled for exactly `rows` rows (its sums live in registers, so their number is
// fixed at compile time).
template <class T, int kVec, int kRows = 1>
void launch_fma(int rows, int64_t n, int64_t k, const void* x, const void* w, const void* b,
                void* y) {
  if constexpr (kRows < kGemvMaxRows) {
    if (rows > kRows) return launch_fma<T, kVec, kRows + 1>(rows, n, k, x, w, b, y);
  }
  const int64_t blocks = (n + kFmaCols - 1) / kFmaCols;
  const int warps = warps_per_block(blocks, kFmaResidentWarps, k, 32 * kVec);
  gemv_fma_kernel<T, kRows, kVec>
      <<<unsigned(blocks), warps * 32, partial_bytes(warps, kFmaCols), stream()>>>(
          static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b),
          static_cast<T*>(y), n, k);
  NH_CUDA_CHECK_LAUNCH();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void gemv(int64_t rows, int64_t n, int64_t k, const void* x, const void* w, const void* b, void* y,
          DType dtype) {
  if (rows > kGemvMaxRows)
    throw Error("gemv", "rows", "at most " + std::to_string(kGemvMaxRows), std::to_string(rows));
  if (dtype != DType::F32 && dtype != DType::BF16)
    throw Error("gemv", "dtype", "F32 or BF16", dtype_name(dtype));
  if (rows <= 0 || n == 0) return;
  // One block per 4 or more columns: the grid's 2^31 - 1 blocks are never the limit below this.
  if (n > int64_t(INT32_MAX))
    throw Error("gemv", "n", "at most " + std::to_string(INT32_MAX), std::to_string(n));
  const bool vectorised =
      k % (16 / int64_t(dtype_size(dtype))) == 0 && aligned16(x) && aligned16(w);
  const int m = int(rows);
  if (dtype == DType::BF16 && vectorised) {
    // The widest tiles (most columns served by each load of x) that still give every SM a
    // block.
    const int64_t sms = sm_count();
    if ((n + 31) / 32 >= sms)
      launch_mma<4>(m, n, k, x, w, b, y);
    else if ((n + 15) / 16 >= sms)
      launch_mma<2>(m, n, k, x, w, b, y);
    else
      launch_mma<1>(m, n, k, x, w, b, y);
  } else if (dtype == DType::F32 && vectorised) {
    launch_fma<float, 4>(m, n, k, x, w, b, y);
  } else if (dtype == DType::F32) {
    launch_fma<float, 1>(m, n, k, x, w, b, y);
  } else {
    launch_fma<bf16, 1>(m, n, k, x, w, b, y);
  }
}

}  // namespace nh::cuda
