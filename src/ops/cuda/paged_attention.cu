// CUDA paged attention decoding (the contract is in ops/paged_attention.h, SPEC §4): storage F32
// or BF16, every product and the softmax in fp32.
//
// Split-K (flash-decoding). An entry's positions are cut into chunks of chunk_len (a multiple of
// page_size, about kChunkPositions). CTA (x, kv head, entry) takes chunks x, x + splits, … with
// one running online softmax for the query heads of its kv head (up to 8; larger groups are
// sliced), so K and V are read once, and writes its partial (max, sum, acc) to a workspace; a
// combine kernel merges an entry's partials in split order, so the result does not depend on
// scheduling. splits comes from the capacity and the batch size, never from the lengths: the
// launch is the same at every step and a CTA with nothing to do returns at once (the combine
// skips it).
//
// Inside a CTA, L lanes hold a K or V row (8 elements a lane, loaded as 16-byte vectors when d
// allows), so a warp reads 32 / L positions at a time, kUnroll times per step for loads in
// flight; each lane keeps q and the accumulators of all its heads for its 8 elements.
#include <algorithm>
#include <string>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/paged_attention.h"

namespace nh::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kLaneElems = 8;  // elements of a row per lane: d <= 32 · 8
constexpr int64_t kMaxHeadDim = 32 * kLaneElems;
constexpr int64_t kChunkPositions = 256;
// Enough CTAs to fill an H100 a few times over when the batch is small; the workspace and the
// combine grow with splits, so they are capped.
constexpr int64_t kTargetCtas = 1024;
constexpr int64_t kMaxSplits = 128;
constexpr int kCombineThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

struct PagedArgs {
  const int32_t* table;
  const int32_t* rows;
  const int32_t* lengths;
  int64_t num_pages, capacity;
  int page_size, table_rows, max_pages;
  int q_heads, kv_heads, group, head_dim;
  int lanes;      // per K/V row: a power of two <= 32
  int chunk_len;  // a multiple of page_size
  int splits;
  float scale_log2;  // scale · log2(e): the softmax runs in base 2
};

// The number of positions entry b attends to and its table row; 0 for padding, and for a row or
// length out of range (the caller's guarantee, kept here so nothing is read out of bounds).
__device__ __forceinline__ int entry_length(const PagedArgs& a, int b, int& row) {
  row = a.rows[b];
  const int len = a.lengths[b];
  return row < 0 || row >= a.table_rows || len <= 0 || len > a.capacity ? 0 : len;
}

__device__ __forceinline__ uint32_t word(const uint4& v, int w) {
  return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}

// One lane's kLaneElems elements of a K or V row: element i is row element (lane + L·c)·kVec + j
// for i = c·kVec + j. Loaded as 16-byte vectors (kVectorized: d a multiple of 16 / sizeof(T)) or
// element by element; elements past d and rows not loaded read 0.
template <class T, bool kVectorized>
struct RowSlice;

template <class T>
struct RowSlice<T, true> {
  static constexpr int kVec = 16 / sizeof(T);
  uint4 raw[kLaneElems / kVec];
  __device__ void clear() {
#pragma unroll
    for (int c = 0; c < kLaneElems / kVec; ++c) raw[c] = make_uint4(0, 0, 0, 0);
  }
  __device__ void load(const T* row, int lane, int lanes, int head_dim) {
#pragma unroll
    for (int c = 0; c < kLaneElems / kVec; ++c) {
      const int e = (lane + lanes * c) * kVec;
      raw[c] =
          e < head_dim ? __ldg(reinterpret_cast<const uint4*>(row + e)) : make_uint4(0, 0, 0, 0);
    }
  }
  __device__ float get(int i) const {
    if constexpr (sizeof(T) == 4) {
      return __uint_as_float(word(raw[i / 4], i % 4));
    } else {  // bf16: element 2k is the low half of word k
      const uint32_t u = word(raw[i / 8], i % 8 / 2);
      return __uint_as_float(i % 2 ? u & 0xffff0000u : u << 16);
    }
  }
};

template <class T>
struct RowSlice<T, false> {
  static constexpr int kVec = 1;
  T raw[kLaneElems];
  __device__ void clear() {
#pragma unroll
    for (int i = 0; i < kLaneElems; ++i) raw[i] = from_f32<T>(0.f);
  }
  __device__ void load(const T* row, int lane, int lanes, int head_dim) {
#pragma unroll
    for (int i = 0; i < kLaneElems; ++i) {
      const int e = lane + lanes * i;
      raw[i] = e < head_dim ? row[e] : from_f32<T>(0.f);
    }
  }
  __device__ float get(int i) const { return to_f32(raw[i]); }
};

// Row element held as a lane's element i (see RowSlice).
template <int kVec>
__device__ __forceinline__ int element_of(int lane, int lanes, int i) {
  return (lane + lanes * (i / kVec)) * kVec + i % kVec;
}

// The weights that merge two running softmax states of maxima m and mo (base 2; -inf: nothing
// seen yet): m_new = max(m, mo), a = 2^(m - m_new), c = 2^(mo - m_new), 0 for an empty state.
__device__ __forceinline__ void merge_weights(float m, float mo, float& m_new, float& a, float& c) {
  m_new = fmaxf(m, mo);
  const float m_use = m_new == -INFINITY ? 0.f : m_new;
  a = exp2f(m - m_use);
  c = exp2f(mo - m_use);
}

// Grid (splits, kv heads · slices, B); slice s of a kv head holds its query heads
// s·kHeads … s·kHeads + kHeads - 1 (all of them when the group fits in kHeads). The launch bound
// (3 CTAs an SM up to 4 heads) leaves registers for q, acc and kUnroll rows without spilling.
template <class T, bool kVectorized, int kHeads>
__global__ void __launch_bounds__(kThreads, kHeads >= 8 ? 1 : 3)
    paged_decode_split_kernel(const T* q, const T* k_pages, const T* v_pages, PagedArgs a,
                              float* part_acc, float* part_ml) {
  using Slice = RowSlice<T, kVectorized>;
  constexpr int kVec = Slice::kVec;
  constexpr int kUnroll = kHeads >= 8 ? 2 : 4;
  const int b = blockIdx.z;
  int row;
  const int len = entry_length(a, b, row);
  if (int64_t(blockIdx.x) * a.chunk_len >= len) return;  // padding, or no chunk of this split

  const int slices = (a.group + kHeads - 1) / kHeads;
  const int kh = blockIdx.y / slices, head0 = blockIdx.y % slices * kHeads;
  const int heads = min(kHeads, a.group - head0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int L = a.lanes, rl = lane % L, rows_per_warp = 32 / L, r = lane / L;
  const int d = a.head_dim;

  float qf[kHeads][kLaneElems], acc[kHeads][kLaneElems], m[kHeads], l[kHeads];
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
    const T* qh = q + (int64_t(b) * a.q_heads + kh * a.group + head0 + h) * d;
#pragma unroll
    for (int i = 0; i < kLaneElems; ++i) {
      const int e = element_of<kVec>(rl, L, i);
      qf[h][i] = h < heads && e < d ? to_f32(qh[e]) * a.scale_log2 : 0.f;
      acc[h][i] = 0.f;
    }
    m[h] = -INFINITY;
    l[h] = 0.f;
  }

  const int64_t slot_stride = int64_t(a.kv_heads) * d;
  const int32_t* table = a.table + int64_t(row) * a.max_pages;
  const int per_warp = rows_per_warp * kUnroll;
  const int chunks = (len + a.chunk_len - 1) / a.chunk_len;
  for (int chunk = blockIdx.x; chunk < chunks; chunk += a.splits) {
    const int c0 = chunk * a.chunk_len, c1 = min(c0 + a.chunk_len, len);
    for (int base = c0 + warp * per_warp; base < c1; base += kWarps * per_warp) {
      Slice ks[kUnroll], vs[kUnroll];
      bool valid[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int p = base + u * rows_per_warp + r;
        const int page = p < c1 ? table[p / a.page_size] : -1;
        valid[u] = page >= 0 && page < a.num_pages;
        if (valid[u]) {
          const int64_t off =
              (int64_t(page) * a.page_size + p % a.page_size) * slot_stride + int64_t(kh) * d;
          ks[u].load(k_pages + off, rl, L, d);
          vs[u].load(v_pages + off, rl, L, d);
        } else {
          ks[u].clear();
          vs[u].clear();
        }
      }
      float s[kUnroll][kHeads];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int h = 0; h < kHeads; ++h) {
          float dot = 0.f;
#pragma unroll
          for (int i = 0; i < kLaneElems; ++i) dot += qf[h][i] * ks[u].get(i);
          s[u][h] = dot;
        }
      for (int o = L / 2; o > 0; o >>= 1)
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
#pragma unroll
          for (int h = 0; h < kHeads; ++h) s[u][h] += __shfl_xor_sync(0xffffffffu, s[u][h], o);
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) mx = fmaxf(mx, valid[u] ? s[u][h] : -INFINITY);
        const float m_new = fmaxf(m[h], mx), m_use = m_new == -INFINITY ? 0.f : m_new;
        const float corr = exp2f(m[h] - m_use);
        m[h] = m_new;
        l[h] *= corr;
#pragma unroll
        for (int i = 0; i < kLaneElems; ++i) acc[h][i] *= corr;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          s[u][h] = valid[u] ? exp2f(s[u][h] - m_use) : 0.f;
          l[h] += s[u][h];
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
#pragma unroll
        for (int i = 0; i < kLaneElems; ++i) {
          const float v = vs[u].get(i);
#pragma unroll
          for (int h = 0; h < kHeads; ++h) acc[h][i] += s[u][h] * v;
        }
    }
  }

  // The warp's row groups merged into row group 0, then the warps in order through shared memory.
  for (int o = L; o < 32; o <<= 1)
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[h], o);
      const float lo = __shfl_xor_sync(0xffffffffu, l[h], o);
      float m_new, wa, wo;
      merge_weights(m[h], mo, m_new, wa, wo);
      m[h] = m_new;
      l[h] = l[h] * wa + lo * wo;
#pragma unroll
      for (int i = 0; i < kLaneElems; ++i)
        acc[h][i] = acc[h][i] * wa + __shfl_xor_sync(0xffffffffu, acc[h][i], o) * wo;
    }
  extern __shared__ float smem[];
  float* warp_acc = smem;                      // [kWarps][kHeads][d]
  float* warp_m = smem + kWarps * kHeads * d;  // [kWarps][kHeads]
  float* warp_l = warp_m + kWarps * kHeads;    // [kWarps][kHeads]
  if (r == 0) {
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
#pragma unroll
      for (int i = 0; i < kLaneElems; ++i) {
        const int e = element_of<kVec>(rl, L, i);
        if (e < d) warp_acc[(warp * kHeads + h) * d + e] = acc[h][i];
      }
      if (rl == 0) {
        warp_m[warp * kHeads + h] = m[h];
        warp_l[warp * kHeads + h] = l[h];
      }
    }
  }
  __syncthreads();
  for (int he = threadIdx.x; he < heads * d; he += kThreads) {
    const int h = he / d, e = he % d;
    float mx = -INFINITY;
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, warp_m[w * kHeads + h]);
    const float m_use = mx == -INFINITY ? 0.f : mx;
    float sum = 0.f, out = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      const float wt = exp2f(warp_m[w * kHeads + h] - m_use);
      sum += warp_l[w * kHeads + h] * wt;
      out += warp_acc[(w * kHeads + h) * d + e] * wt;
    }
    const int64_t part =
        (int64_t(b) * a.q_heads + kh * a.group + head0 + h) * a.splits + blockIdx.x;
    part_acc[part * d + e] = out;
    if (e == 0) {
      part_ml[2 * part] = mx;
      part_ml[2 * part + 1] = sum;
    }
  }
}

// Grid (Hq, B): out[b, h] = Σ_x w_x · acc_x / Σ_x w_x · l_x over the splits x that ran, with
// w_x = 2^(m_x - max m), summed in split order. Zeros for padding (and for an entry whose every
// position sat on an out-of-range page).
template <class T>
__global__ void __launch_bounds__(kCombineThreads)
    paged_decode_combine_kernel(const float* part_acc, const float* part_ml, PagedArgs a, T* out) {
  __shared__ float weight[kMaxSplits];
  __shared__ float inv_total;
  const int h = blockIdx.x, b = blockIdx.y, d = a.head_dim;
  T* o = out + (int64_t(b) * a.q_heads + h) * d;
  int row;
  const int len = entry_length(a, b, row);
  if (len == 0) {
    for (int e = threadIdx.x; e < d; e += blockDim.x) o[e] = from_f32<T>(0.f);
    return;
  }
  const int ran = min(a.splits, (len + a.chunk_len - 1) / a.chunk_len);
  const int64_t part0 = (int64_t(b) * a.q_heads + h) * a.splits;
  float mx = -INFINITY;
  for (int x = 0; x < ran; ++x) mx = fmaxf(mx, part_ml[2 * (part0 + x)]);
  const float m_use = mx == -INFINITY ? 0.f : mx;
  for (int x = threadIdx.x; x < ran; x += blockDim.x)
    weight[x] = exp2f(part_ml[2 * (part0 + x)] - m_use);
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int x = 0; x < ran; ++x) total += weight[x] * part_ml[2 * (part0 + x) + 1];
    inv_total = total > 0.f ? 1.f / total : 0.f;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float sum = 0.f;
    for (int x = 0; x < ran; ++x) sum += weight[x] * part_acc[(part0 + x) * d + e];
    o[e] = from_f32<T>(sum * inv_total);
  }
}

// Grid (N): token n's Hkv · d values copied to its slot in `units` of U (16-byte vectors when a
// token's bytes allow, else elements).
template <class U>
__global__ void kv_cache_write_kernel(const U* fresh, const int32_t* table, const int32_t* rows,
                                      const int32_t* positions, int64_t num_pages, int page_size,
                                      int table_rows, int max_pages, int64_t units, U* pages) {
  const int64_t n = blockIdx.x;
  const int row = rows[n], pos = positions[n];
  if (row < 0 || row >= table_rows || pos < 0 || pos >= int64_t(max_pages) * page_size) return;
  const int page = table[int64_t(row) * max_pages + pos / page_size];
  if (page < 0 || page >= num_pages) return;
  U* dst = pages + (int64_t(page) * page_size + pos % page_size) * units;
  for (int64_t i = threadIdx.x; i < units; i += blockDim.x) dst[i] = fresh[n * units + i];
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int next_pow2(int64_t n) {
  int p = 1;
  while (p < n) p *= 2;
  return p;
}

// Picks the query heads a CTA holds (kHeads) and whether rows load as 16-byte vectors.
template <class T, class F>
void with_split_kernel(int64_t group, bool vectorized, F&& f) {
  auto heads = [&](auto vec) {
    if (group <= 1)
      f(paged_decode_split_kernel<T, decltype(vec)::value, 1>, 1);
    else if (group <= 2)
      f(paged_decode_split_kernel<T, decltype(vec)::value, 2>, 2);
    else if (group <= 4)
      f(paged_decode_split_kernel<T, decltype(vec)::value, 4>, 4);
    else
      f(paged_decode_split_kernel<T, decltype(vec)::value, 8>, 8);
  };
  if (vectorized)
    heads(std::true_type{});
  else
    heads(std::false_type{});
}

}  // namespace

void paged_attention_decode(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages,
                            const Tensor& block_table, const Tensor& rows, const Tensor& lengths,
                            double scale, Tensor& out) {
  const char* op = "paged_attention_decode";
  require_cuda(q, op, "q");
  const PagedKvShape s =
      check_paged_attention_decode(q, k_pages, v_pages, block_table, rows, lengths, out);
  if (s.head_dim > kMaxHeadDim)
    throw Error(op, "head_dim", "at most " + std::to_string(kMaxHeadDim),
                std::to_string(s.head_dim));
  if (s.tokens > 65535) throw Error(op, "batch size", "at most 65535", std::to_string(s.tokens));
  if (s.capacity() > INT32_MAX)
    throw Error(op, "capacity (max_pages · page_size)", "below 2^31", std::to_string(s.capacity()));
  with_gpu_float_type(q.dtype(), [&](auto zero) {
    using T = decltype(zero);
    if (out.numel() == 0) return;
    PagedArgs a{};
    a.table = ptr<int32_t>(block_table);
    a.rows = ptr<int32_t>(rows);
    a.lengths = ptr<int32_t>(lengths);
    a.num_pages = s.num_pages;
    a.capacity = s.capacity();
    a.page_size = int(s.page_size);
    a.table_rows = int(s.table_rows);
    a.max_pages = int(s.max_pages);
    a.q_heads = int(s.q_heads);
    a.kv_heads = int(s.kv_heads);
    a.group = int(s.q_heads / s.kv_heads);
    a.head_dim = int(s.head_dim);
    a.chunk_len = int(s.page_size * ceil_div(kChunkPositions, s.page_size));
    a.scale_log2 = float(scale) * kLog2e;
    const bool vectorized = s.head_dim % int64_t(16 / sizeof(T)) == 0;
    const int64_t vec = vectorized ? 16 / sizeof(T) : 1;
    a.lanes = next_pow2(ceil_div(s.head_dim / vec, kLaneElems / vec));
    with_split_kernel<T>(a.group, vectorized, [&](auto kernel, int heads) {
      const int64_t slices = ceil_div(a.group, heads);
      const int64_t ctas = s.tokens * s.kv_heads * slices;
      const int64_t chunks = std::max<int64_t>(1, ceil_div(a.capacity, a.chunk_len));
      a.splits =
          int(std::clamp(ceil_div(kTargetCtas, ctas), int64_t(1), std::min(chunks, kMaxSplits)));
      Tensor part_acc =
          Tensor::empty({s.tokens, s.q_heads, a.splits, s.head_dim}, DType::F32, Device::CUDA);
      Tensor part_ml = Tensor::empty({s.tokens, s.q_heads, a.splits, 2}, DType::F32, Device::CUDA);
      const size_t shared = size_t(kWarps * heads) * size_t(s.head_dim + 2) * sizeof(float);
      const dim3 grid(unsigned(a.splits), unsigned(s.kv_heads * slices), unsigned(s.tokens));
      kernel<<<grid, kThreads, shared, stream()>>>(ptr<T>(q), ptr<T>(k_pages), ptr<T>(v_pages), a,
                                                   ptr<float>(part_acc), ptr<float>(part_ml));
      NH_CUDA_CHECK_LAUNCH();
      paged_decode_combine_kernel<T>
          <<<dim3(unsigned(s.q_heads), unsigned(s.tokens)), kCombineThreads, 0, stream()>>>(
              ptr<float>(part_acc), ptr<float>(part_ml), a, ptr<T>(out));
      NH_CUDA_CHECK_LAUNCH();
    });
  });
}

void kv_cache_write(const Tensor& fresh, const Tensor& block_table, const Tensor& rows,
                    const Tensor& positions, Tensor& pages) {
  const char* op = "kv_cache_write";
  require_cuda(fresh, op, "fresh");
  const PagedKvShape s = check_kv_cache_write(fresh, block_table, rows, positions, pages);
  if (s.capacity() > INT32_MAX)
    throw Error(op, "capacity (max_pages · page_size)", "below 2^31", std::to_string(s.capacity()));
  with_gpu_float_type(fresh.dtype(), [&](auto zero) {
    using T = decltype(zero);
    if (s.tokens == 0) return;
    if (s.tokens > INT32_MAX)
      throw Error(op, "tokens", "at most 2^31 - 1", std::to_string(s.tokens));
    const int64_t bytes = s.kv_heads * s.head_dim * int64_t(sizeof(T));
    auto launch = [&](auto unit) {
      using U = decltype(unit);
      kv_cache_write_kernel<U><<<unsigned(s.tokens), kThreads, 0, stream()>>>(
          ptr<U>(fresh), ptr<int32_t>(block_table), ptr<int32_t>(rows), ptr<int32_t>(positions),
          s.num_pages, int(s.page_size), int(s.table_rows), int(s.max_pages),
          bytes / int64_t(sizeof(U)), ptr<U>(pages));
      NH_CUDA_CHECK_LAUNCH();
    };
    if (bytes % 16 == 0)
      launch(uint4{});
    else
      launch(T{});
  });
}

}  // namespace nh::cuda
