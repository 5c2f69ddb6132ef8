// Mixture-of-experts ops on the GPU (src/ops/moe.h, SPEC §5): the group-limited sigmoid router,
// the routed experts, the expert load and the correction-bias update. Same contracts and results
// as the CPU reference (src/ops/cpu/moe.cpp): ties go to the lower index, topk_idx rows are best
// first, and routed rows are grouped by expert in token order.
//
// Precision: the router's logits, sigmoid and selection are fp32 whatever u's dtype (SPEC §5);
// the experts store bf16 or fp32 in h's dtype and accumulate in fp32 (the GEMMs through
// cuBLASLt, the weighted sums over a token's k slots in registers).
#include <algorithm>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.cuh"
#include "ops/cuda/low_rank.cuh"
#include "ops/moe.h"

namespace nh::cuda {

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;
// Router: one warp per token, this many tokens per block (fewer when E is large).
constexpr int kRouterWarps = 4;
constexpr size_t kMaxRouterSharedBytes = 48 * 1024;

// ---------------------------------------------------------------------------------------------
// Kernels

// y[i] = x[i] in another float dtype (bf16 operands widened for an fp32 GEMM, and back).
template <class Src, class Dst>
__global__ void convert_kernel(const Src* x, int64_t n, Dst* y) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = from_f32<Dst>(to_f32(x[i]));
}

// The index of the best value[i] among i in [0, n) with flag[i] == want, by the larger value and
// then the lower index (the CPU's BestFirst order), the same in every lane of the warp. Each lane
// scans i = lane, lane + 32, ... in increasing order (a strict > keeps the lower index), then a
// butterfly combines the lanes' winners; the answer is broadcast from lane 0 so that every lane
// agrees even for NaN scores. -1 when no i qualifies.
__device__ int warp_best_index(const float* value, const int* flag, int want, int n) {
  const int lane = threadIdx.x % 32;
  float best_v = 0.f;
  int best_i = -1;
  for (int i = lane; i < n; i += 32)
    if (flag[i] == want && (best_i < 0 || value[i] > best_v)) {
      best_v = value[i];
      best_i = i;
    }
  for (int offset = 16; offset > 0; offset /= 2) {
    const float v = __shfl_xor_sync(kFullMask, best_v, offset);
    const int i = __shfl_xor_sync(kFullMask, best_i, offset);
    if (i >= 0 && (best_i < 0 || v > best_v || (v == best_v && i < best_i))) {
      best_v = v;
      best_i = i;
    }
  }
  return __shfl_sync(kFullMask, best_i, 0);
}

// The router after the logits GEMM: one warp per token (kRouterWarps tokens per block, or
// `warps` when E is large). Per warp, shared memory holds s [E], choice [E], available [E],
// group_score [G], group_kept [G], chosen [k] (4-byte words). Steps follow the CPU: sigmoid,
// choice = s + bias, group score = the sum of the two largest choices of the group, topk_group
// rounds of a warp arg-max over groups, then top_k rounds over the experts of the kept groups;
// weights s[idx] normalised by their sum (in selection order, as the CPU sums) and scaled.
// logits may alias scores (F32 scores hold the logits first): each element is read before it is
// written, by the same lane.
template <class T>
__global__ void route_select_kernel(const float* logits, const float* bias, int64_t n_tokens,
                                    int n_experts, int n_group, int topk_group, int top_k,
                                    bool norm_topk_prob, float scale, T* scores, int64_t* topk_idx,
                                    T* topk_w) {
  extern __shared__ float router_shared[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t t = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (t >= n_tokens) return;  // whole warps leave: the shuffles below stay warp-complete
  const int words = 3 * n_experts + 2 * n_group + top_k;
  float* s = router_shared + size_t(warp) * words;
  float* choice = s + n_experts;
  int* available = reinterpret_cast<int*>(choice + n_experts);
  float* group_score = reinterpret_cast<float*>(available + n_experts);
  int* group_kept = reinterpret_cast<int*>(group_score + n_group);
  int* chosen = group_kept + n_group;

  const float* logit = logits + t * n_experts;
  T* score = scores + t * n_experts;
  for (int e = lane; e < n_experts; e += 32) {
    const float sv = 1.f / (1.f + expf(-logit[e]));
    s[e] = sv;
    choice[e] = sv + bias[e];
    score[e] = from_f32<T>(sv);
  }
  __syncwarp();

  const int group_size = n_experts / n_group;
  for (int g = lane; g < n_group; g += 32) {
    float first = -INFINITY, second = -INFINITY;
    for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
      if (choice[e] > first) {
        second = first;
        first = choice[e];
      } else if (choice[e] > second) {
        second = choice[e];
      }
    }
    group_score[g] = first + second;
    group_kept[g] = 0;
  }
  __syncwarp();
  for (int round = 0; round < topk_group; ++round) {
    const int g = warp_best_index(group_score, group_kept, 0, n_group);
    if (lane == 0 && g >= 0) group_kept[g] = 1;
    __syncwarp();
  }

  for (int e = lane; e < n_experts; e += 32) available[e] = group_kept[e / group_size];
  __syncwarp();
  float sum = 0.f;  // the same in every lane
  for (int j = 0; j < top_k; ++j) {
    const int e = warp_best_index(choice, available, 1, n_experts);
    // e >= 0: the kept groups hold at least top_k experts (moe_check_route_config).
    if (lane == 0) {
      available[e] = 0;
      chosen[j] = e;
    }
    sum += s[e];
    __syncwarp();
  }
  sum += 1e-20f;
  for (int j = lane; j < top_k; j += 32) {
    const int e = chosen[j];
    float w = s[e];
    if (norm_topk_prob) w /= sum;
    w *= scale;
    topk_idx[t * top_k + j] = e;
    topk_w[t * top_k + j] = from_f32<T>(w);
  }
}

// dlogits [T, E] (zeroed before) at each token's chosen experts: the gradient through the
// normalisation w_j = c·s_j / S (S = Σ s + 1e-20), dL/ds_j = c·(g_j / S − Σ_i g_i s_i / S²), and
// the sigmoid, ds/dlogit = s(1 − s). One thread per token. Ids outside [0, E) are skipped (the
// CPU throws; checking here would cost a host round trip, and the router never writes them).
template <class T>
__global__ void route_dlogits_kernel(const int64_t* topk_idx, const T* scores, const T* dtopk_w,
                                     int64_t n_tokens, int64_t n_experts, int top_k,
                                     bool norm_topk_prob, float scale, float* dlogits) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= n_tokens) return;
  const int64_t* idx = topk_idx + t * top_k;
  const T* s = scores + t * n_experts;
  const T* g = dtopk_w + t * top_k;
  float sum = 1e-20f, gs = 0.f;
  for (int j = 0; j < top_k; ++j) {
    if (idx[j] < 0 || idx[j] >= n_experts) continue;
    const float sj = to_f32(s[idx[j]]);
    sum += sj;
    gs += to_f32(g[j]) * sj;
  }
  for (int j = 0; j < top_k; ++j) {
    if (idx[j] < 0 || idx[j] >= n_experts) continue;
    const float sj = to_f32(s[idx[j]]), gj = to_f32(g[j]);
    const float ds = norm_topk_prob ? scale * (gj / sum - gs / (sum * sum)) : scale * gj;
    dlogits[t * n_experts + idx[j]] += ds * sj * (1.f - sj);
  }
}

// count[e] += the number of entries of topk_idx equal to e; ids outside [0, E) are not counted,
// except that -1 (another rank's expert) is counted in *others when it is not null.
// One thread per entry; the integer atomics make the counts exact and order-free.
__global__ void count_experts_kernel(const int64_t* topk_idx, int64_t n_entries, int64_t n_experts,
                                     int64_t* count, int64_t* others) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n_entries) return;
  const int64_t e = topk_idx[i];
  if (e >= 0 && e < n_experts) atomicAdd(reinterpret_cast<unsigned long long*>(count + e), 1ull);
  if (e == -1 && others) atomicAdd(reinterpret_cast<unsigned long long*>(others), 1ull);
}

// values[i] = i (the entry numbers the stable sort carries along with the expert ids).
__global__ void iota_kernel(int64_t n, int64_t* values) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) values[i] = i;
}

// row_of[row_source[r]] = r, the inverse permutation. One thread per routed row.
__global__ void invert_permutation_kernel(const int64_t* row_source, int64_t n_rows,
                                          int64_t* row_of) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r < n_rows) row_of[row_source[r]] = r;
}

// rows[r, :] = src[row_source[r] / k, :], the input row of each routed row. One thread per
// element of rows.
template <class T>
__global__ void gather_routed_rows_kernel(const T* src, const int64_t* row_source, int64_t n_rows,
                                          int64_t k, int64_t dim, T* rows) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n_rows * dim) return;
  const int64_t r = i / dim, d = i % dim;
  rows[i] = src[(row_source[r] / k) * dim + d];
}

// act = relu(pre)², elementwise.
template <class T>
__global__ void relu_squared_kernel(const T* pre, int64_t n, T* act) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float p = to_f32(pre[i]);
  act[i] = from_f32<T>(p > 0.f ? p * p : 0.f);
}

// out[t, d] = Σ_j w[t, j] · rows[row_of[t·k + j], d] over the k slots in order (w = 1 when
// topk_w is null: the backward's dh), skipping the slots whose row is n_rows or beyond (another
// rank's expert). One thread per element of out; deterministic, no atomics.
// W, the routing weights' type, is T or float (an fp32 router with bf16 experts).
template <class T, class W>
__global__ void combine_routed_rows_kernel(const T* rows, const int64_t* row_of, const W* topk_w,
                                           int64_t n_rows, int64_t n_tokens, int64_t k,
                                           int64_t dim, T* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n_tokens * dim) return;
  const int64_t t = i / dim, d = i % dim;
  float acc = 0.f;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t r = row_of[t * k + j];
    if (r >= n_rows) continue;
    const float w = topk_w ? to_f32(topk_w[t * k + j]) : 1.f;
    acc += w * to_f32(rows[r * dim + d]);
  }
  out[i] = from_f32<T>(acc);
}

// The experts backward's per-row step, one warp per routed row r (topk entry row_source[r],
// weight w): with a = relu(pre)² and g = dact = dout·down[e] (before the weight),
//   dtopk_w[row_source[r]] = Σ_i g_i a_i,   act := w·a (for ddown),
//   dact := w·g·2·relu(pre) (the pre-activation gradient, for dup and dh).
// a is rounded to T as the forward stored it. The warp's sum is reduced in a fixed order.
// dtopk_w is kept in W (float with an fp32 router: its normalisation backward subtracts nearly
// equal values, which bf16 would not survive).
template <class T, class W>
__global__ void expert_row_grads_kernel(const T* pre, const W* topk_w, const int64_t* row_source,
                                        int64_t n_rows, int64_t inter, T* act, T* dact,
                                        W* dtopk_w) {
  const int lane = threadIdx.x % 32;
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= n_rows) return;
  const float w = to_f32(topk_w[row_source[r]]);
  float dw = 0.f;
  for (int64_t i = lane; i < inter; i += 32) {
    const int64_t at = r * inter + i;
    const float p = to_f32(pre[at]);
    const float a = to_f32(from_f32<T>(p > 0.f ? p * p : 0.f));
    const float g = to_f32(dact[at]);
    dw += g * a;
    act[at] = from_f32<T>(w * a);
    dact[at] = from_f32<T>(p > 0.f ? w * g * 2.f * p : 0.f);
  }
  for (int offset = 16; offset > 0; offset /= 2) dw += __shfl_xor_sync(kFullMask, dw, offset);
  if (lane == 0) dtopk_w[row_source[r]] = from_f32<W>(dw);
}

// correction_bias[e] += rate · sign(mean(load) − load[e]). One block: the total load is summed
// in a fixed tree order (integers, exact), and sign(mean − load[e]) is taken as
// sign(total − E·load[e]), the same sign without a division.
template <class T>
__global__ void update_correction_bias_kernel(T* bias, const int64_t* load, int64_t n_experts,
                                              float rate) {
  __shared__ long long partial[kThreads];
  long long sum = 0;
  for (int64_t e = threadIdx.x; e < n_experts; e += blockDim.x) sum += load[e];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  const long long total = partial[0];
  for (int64_t e = threadIdx.x; e < n_experts; e += blockDim.x) {
    const long long gap = total - n_experts * load[e];
    const float sign = float((gap > 0) - (gap < 0));
    bias[e] = from_f32<T>(to_f32(bias[e]) + rate * sign);
  }
}

// ---------------------------------------------------------------------------------------------
// Host helpers

void expect_dtype(const Tensor& t, DType dtype, const std::string& what) {
  if (t.dtype() != dtype) throw Error(what, "dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

void expect_gpu_float(const Tensor& t, const std::string& what) {
  if (t.dtype() != DType::F32 && t.dtype() != DType::BF16)
    throw Error(what, "dtype", "F32 or BF16", dtype_name(t.dtype()));
}

void require_all_cuda(std::initializer_list<std::pair<const Tensor*, const char*>> tensors,
                      const char* op) {
  for (const auto& [t, name] : tensors) {
    if (!t->defined()) throw Error(op, name, "a CUDA tensor", "an undefined tensor");
    require_cuda(*t, op, name);
  }
}

// x in `dtype` on the GPU: x itself when it already is, else a converted copy.
Tensor converted(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor y = Tensor::empty(x.shape(), dtype, Device::CUDA);
  if (x.numel() == 0) return y;
  with_gpu_float_type(x.dtype(), [&](auto src_zero) {
    using Src = decltype(src_zero);
    with_gpu_float_type(dtype, [&](auto dst_zero) {
      using Dst = decltype(dst_zero);
      convert_kernel<Src, Dst><<<blocks_for(x.numel(), kThreads), kThreads, 0, stream()>>>(
          ptr<Src>(x), x.numel(), ptr<Dst>(y));
      NH_CUDA_CHECK_LAUNCH();
    });
  });
  return y;
}

void check_topk(const Tensor& topk_idx, const Tensor& topk_w, int64_t n_tokens, DType dtype) {
  expect_dtype(topk_idx, DType::I64, "moe topk_idx");
  if (topk_idx.ndim() != 2 || topk_idx.size(0) != n_tokens)
    throw Error("moe topk_idx", "shape", "[T = " + std::to_string(n_tokens) + ", k]",
                shape_str(topk_idx.shape()));
  expect_shape(topk_w, topk_idx.shape(), "moe topk_w");
  expect_dtype(topk_w, dtype, "moe topk_w");
}

void check_router_shapes(const Tensor& u, const Tensor& gate_w) {
  if (u.ndim() != 2 || gate_w.ndim() != 2 || gate_w.size(1) != u.size(1))
    throw Error("moe router", "shapes", "u [T, D] and gate_w [E, D]",
                "u " + shape_str(u.shape()) + ", gate_w " + shape_str(gate_w.shape()));
  expect_gpu_float(u, "moe router u");
  expect_gpu_float(gate_w, "moe router gate_w");
}

struct ExpertsShape {
  int64_t n_tokens, dim, n_experts, inter, k;
};

ExpertsShape check_experts(const Tensor& h, const Tensor& up, const Tensor& down,
                           const Tensor& topk_idx, const Tensor& topk_w) {
  require_all_cuda(
      {{&h, "h"}, {&up, "up"}, {&down, "down"}, {&topk_idx, "topk_idx"}, {&topk_w, "topk_w"}},
      "moe experts");
  if (h.ndim() != 2 || up.ndim() != 3 || up.size(2) != h.size(1))
    throw Error("moe experts", "shapes", "h [T, Din] and up [E, I, Din]",
                "h " + shape_str(h.shape()) + ", up " + shape_str(up.shape()));
  expect_gpu_float(h, "moe experts h");
  const ExpertsShape s{h.size(0), h.size(1), up.size(0), up.size(1), topk_idx.size(-1)};
  expect_shape(down, {s.n_experts, s.dim, s.inter}, "moe experts down");
  expect_dtype(up, h.dtype(), "moe experts up");
  expect_dtype(down, h.dtype(), "moe experts down");
  check_topk(topk_idx, topk_w, s.n_tokens, topk_w.dtype() == DType::F32 ? DType::F32 : h.dtype());
  return s;
}

// Calls f(W{}) with W = float when the routing weights are F32, else T (h's storage type).
template <class T, class F>
void with_weight_type(const Tensor& topk_w, F&& f) {
  if (topk_w.dtype() == DType::F32)
    f(float{});
  else
    f(T{});
}

// The E + 1 expert offsets, copied to the host: the per-expert GEMMs below are launched from a
// host loop over row ranges. This one small device-to-host copy (and stream sync) per call is
// what a grouped GEMM reading the offsets on the device (the MoE performance issue) removes.
std::vector<int64_t> host_offsets(const Tensor& expert_offsets) {
  std::vector<int64_t> offsets(size_t(expert_offsets.numel()));
  NH_CUDA_CHECK(cudaMemcpyAsync(offsets.data(), expert_offsets.raw(),
                                offsets.size() * sizeof(int64_t), cudaMemcpyDeviceToHost,
                                stream()));
  NH_CUDA_CHECK(cudaStreamSynchronize(stream()));
  return offsets;
}

// Fills cache.expert_offsets / row_source / row_of from topk_idx and returns the offsets on the
// host: counts per expert (integer atomics), an inclusive scan into offsets[1..E], and a stable
// radix sort of the (expert id, entry number) pairs, which groups the entries by expert in
// entry (= token) order. Entries of expert -1 (another rank's) sort after every expert, past
// offsets[E]. Throws when an id is outside [0, E) and not -1: such ids are not counted, so the
// counts fall short of T·k.
std::vector<int64_t> build_permutation(const Tensor& topk_idx, int64_t n_experts,
                                       MoeExpertsCache& cache) {
  const int64_t n_rows = topk_idx.numel();
  // The per-expert counts, then the count of -1 entries.
  Tensor count = Tensor::zeros({n_experts + 1}, DType::I64, Device::CUDA);
  int64_t* offsets = ptr<int64_t>(cache.expert_offsets);
  NH_CUDA_CHECK(cudaMemsetAsync(offsets, 0, sizeof(int64_t), stream()));
  if (n_rows > 0) {
    count_experts_kernel<<<blocks_for(n_rows, kThreads), kThreads, 0, stream()>>>(
        ptr<int64_t>(topk_idx), n_rows, n_experts, ptr<int64_t>(count),
        ptr<int64_t>(count) + n_experts);
    NH_CUDA_CHECK_LAUNCH();
  }
  if (n_experts > 0) {
    size_t scan_bytes = 0;
    NH_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, ptr<int64_t>(count),
                                                offsets + 1, n_experts, stream()));
    Tensor scan_temp = Tensor::empty({int64_t(scan_bytes)}, DType::U8, Device::CUDA);
    NH_CUDA_CHECK(cub::DeviceScan::InclusiveSum(scan_temp.raw(), scan_bytes, ptr<int64_t>(count),
                                                offsets + 1, n_experts, stream()));
  }
  std::vector<int64_t> host = host_offsets(cache.expert_offsets);
  int64_t others = 0;
  NH_CUDA_CHECK(cudaMemcpyAsync(&others, ptr<int64_t>(count) + n_experts, sizeof others,
                                cudaMemcpyDeviceToHost, stream()));
  NH_CUDA_CHECK(cudaStreamSynchronize(stream()));
  if (host.back() + others != n_rows)
    throw Error("moe topk_idx", "expert id",
                "in [0, " + std::to_string(n_experts) + ") or -1 (not here)",
                std::to_string(n_rows - host.back() - others) + " ids outside it");
  if (n_rows == 0) return host;

  int64_t* row_source = ptr<int64_t>(cache.row_source);
  int64_t* row_of = ptr<int64_t>(cache.row_of);
  // row_of holds the entry numbers until the sort has read them.
  iota_kernel<<<blocks_for(n_rows, kThreads), kThreads, 0, stream()>>>(n_rows, row_of);
  NH_CUDA_CHECK_LAUNCH();
  Tensor sorted_ids = Tensor::empty({n_rows}, DType::I64, Device::CUDA);
  // Ids are in [0, E) or -1: sorting on the bits that hold E (2^end_bit > E) puts -1, whose low
  // bits are all ones, after every expert.
  int end_bit = 1;
  while (end_bit < 62 && (int64_t(1) << end_bit) <= n_experts) ++end_bit;
  size_t sort_bytes = 0;
  NH_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, ptr<int64_t>(topk_idx),
                                                ptr<int64_t>(sorted_ids), row_of, row_source,
                                                n_rows, 0, end_bit, stream()));
  Tensor sort_temp = Tensor::empty({int64_t(sort_bytes)}, DType::U8, Device::CUDA);
  NH_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp.raw(), sort_bytes, ptr<int64_t>(topk_idx),
                                                ptr<int64_t>(sorted_ids), row_of, row_source,
                                                n_rows, 0, end_bit, stream()));
  invert_permutation_kernel<<<blocks_for(n_rows, kThreads), kThreads, 0, stream()>>>(
      row_source, n_rows, row_of);
  NH_CUDA_CHECK_LAUNCH();
  return host;
}

template <class T>
void gather_routed_rows(const T* src, const int64_t* row_source, int64_t n_rows, int64_t k,
                        int64_t dim, T* rows) {
  if (n_rows * dim == 0) return;
  gather_routed_rows_kernel<T><<<blocks_for(n_rows * dim, kThreads), kThreads, 0, stream()>>>(
      src, row_source, n_rows, k, dim, rows);
  NH_CUDA_CHECK_LAUNCH();
}

template <class T, class W>
void combine_routed_rows(const T* rows, const int64_t* row_of, const W* topk_w, int64_t n_rows,
                         int64_t n_tokens, int64_t k, int64_t dim, T* out) {
  if (n_tokens * dim == 0) return;
  combine_routed_rows_kernel<T, W><<<blocks_for(n_tokens * dim, kThreads), kThreads, 0, stream()>>>(
      rows, row_of, topk_w, n_rows, n_tokens, k, dim, out);
  NH_CUDA_CHECK_LAUNCH();
}

// Element `elements` of t (a LoRA factor or its gradient) as a device pointer.
char* at(const Tensor& t, int64_t elements) {
  return static_cast<char*>(t.raw()) + elements * int64_t(dtype_size(t.dtype()));
}

int64_t lora_rank(const Tensor& a) { return a.defined() ? a.size(1) : 0; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Launchers

// gate_w may be F32 while u is BF16 (or the other way round): the logits GEMM runs in fp32 on
// widened copies of whichever operand is BF16, as the reference computes the router in fp32.
// correction_bias is F32 or BF16; topk_w and scores are in u's dtype (the CPU contract).
void moe_route_forward(const Tensor& u, const Tensor& gate_w, const Tensor& correction_bias,
                       const MoeRouteConfig& cfg, Tensor& topk_idx, Tensor& topk_w,
                       Tensor& scores) {
  require_all_cuda({{&u, "u"},
                    {&gate_w, "gate_w"},
                    {&correction_bias, "correction_bias"},
                    {&topk_idx, "topk_idx"},
                    {&topk_w, "topk_w"},
                    {&scores, "scores"}},
                   "moe router");
  check_router_shapes(u, gate_w);
  const int64_t n_tokens = u.size(0), dim = u.size(1), n_experts = gate_w.size(0);
  moe_check_route_config(cfg, n_experts);
  expect_shape(correction_bias, {n_experts}, "moe router correction_bias");
  expect_gpu_float(correction_bias, "moe router correction_bias");
  expect_shape(topk_idx, {n_tokens, cfg.top_k}, "moe router topk_idx");
  check_topk(topk_idx, topk_w, n_tokens, u.dtype());
  expect_shape(scores, {n_tokens, n_experts}, "moe router scores");
  expect_dtype(scores, u.dtype(), "moe router scores");
  const size_t warp_bytes = sizeof(float) * size_t(3 * n_experts + 2 * cfg.n_group + cfg.top_k);
  if (warp_bytes > kMaxRouterSharedBytes)
    throw Error("moe router", "n_routed_experts",
                "at most about 4000 on the GPU (a token's router state lives in 48 KiB of "
                "shared memory)",
                std::to_string(n_experts));
  if (n_tokens == 0) return;

  const Tensor u32 = converted(u, DType::F32), gate32 = converted(gate_w, DType::F32);
  const Tensor bias32 = converted(correction_bias, DType::F32);
  // F32 scores take the logits first; the select kernel overwrites them with the sigmoid.
  const Tensor logits = scores.dtype() == DType::F32
                            ? scores
                            : Tensor::empty({n_tokens, n_experts}, DType::F32, Device::CUDA);
  gemm(false, true, n_tokens, n_experts, dim, 1.f, u32.raw(), dim, gate32.raw(), dim, 0.f,
       logits.raw(), n_experts, DType::F32);

  const int warps = int(std::min<size_t>(kRouterWarps, kMaxRouterSharedBytes / warp_bytes));
  const unsigned blocks = unsigned((n_tokens + warps - 1) / warps);
  with_gpu_float_type(u.dtype(), [&](auto zero) {
    using T = decltype(zero);
    route_select_kernel<T><<<blocks, 32 * warps, warps * warp_bytes, stream()>>>(
        ptr<float>(logits), ptr<float>(bias32), n_tokens, int(n_experts), int(cfg.n_group),
        int(cfg.topk_group), int(cfg.top_k), cfg.norm_topk_prob, float(cfg.routed_scaling_factor),
        ptr<T>(scores), ptr<int64_t>(topk_idx), ptr<T>(topk_w));
    NH_CUDA_CHECK_LAUNCH();
  });
}

// du (u's dtype) +=, dgate_w (gate_w's dtype) +=. dlogits are fp32; each GEMM runs in its
// output's dtype, so dlogits and the other operand are converted to it where they differ.
void moe_route_backward(const Tensor& u, const Tensor& gate_w, const Tensor& topk_idx,
                        const Tensor& scores, const MoeRouteConfig& cfg, const Tensor& dtopk_w,
                        Tensor& du, Tensor& dgate_w) {
  require_all_cuda({{&u, "u"},
                    {&gate_w, "gate_w"},
                    {&topk_idx, "topk_idx"},
                    {&scores, "scores"},
                    {&dtopk_w, "dtopk_w"},
                    {&du, "du"},
                    {&dgate_w, "dgate_w"}},
                   "moe router");
  check_router_shapes(u, gate_w);
  const int64_t n_tokens = u.size(0), dim = u.size(1), n_experts = gate_w.size(0);
  moe_check_route_config(cfg, n_experts);
  expect_shape(topk_idx, {n_tokens, cfg.top_k}, "moe router topk_idx");
  check_topk(topk_idx, dtopk_w, n_tokens, u.dtype());
  expect_shape(scores, {n_tokens, n_experts}, "moe router scores");
  expect_dtype(scores, u.dtype(), "moe router scores");
  expect_shape(du, u.shape(), "moe router du");
  expect_dtype(du, u.dtype(), "moe router du");
  expect_shape(dgate_w, gate_w.shape(), "moe router dgate_w");
  expect_dtype(dgate_w, gate_w.dtype(), "moe router dgate_w");
  if (n_tokens == 0) return;

  Tensor dlogits = Tensor::zeros({n_tokens, n_experts}, DType::F32, Device::CUDA);
  with_gpu_float_type(u.dtype(), [&](auto zero) {
    using T = decltype(zero);
    route_dlogits_kernel<T><<<blocks_for(n_tokens, kThreads), kThreads, 0, stream()>>>(
        ptr<int64_t>(topk_idx), ptr<T>(scores), ptr<T>(dtopk_w), n_tokens, n_experts,
        int(cfg.top_k), cfg.norm_topk_prob, float(cfg.routed_scaling_factor), ptr<float>(dlogits));
    NH_CUDA_CHECK_LAUNCH();
  });
  {
    const Tensor a = converted(dlogits, du.dtype()), b = converted(gate_w, du.dtype());
    gemm(false, false, n_tokens, dim, n_experts, 1.f, a.raw(), n_experts, b.raw(), dim, 1.f,
         du.raw(), dim, du.dtype());
  }
  const Tensor a = converted(dlogits, dgate_w.dtype()), b = converted(u, dgate_w.dtype());
  gemm(true, false, n_experts, dim, n_tokens, 1.f, a.raw(), n_experts, b.raw(), dim, 1.f,
       dgate_w.raw(), dim, dgate_w.dtype());
}

void moe_experts_forward(const Tensor& h, const Tensor& up, const Tensor& down,
                         const Tensor& topk_idx, const Tensor& topk_w, Tensor& out,
                         MoeExpertsCache& cache, const MoeExpertsLora& lora) {
  const ExpertsShape s = check_experts(h, up, down, topk_idx, topk_w);
  check_experts_lora(lora, up, false);
  require_cuda(out, "moe experts", "out");
  expect_shape(out, h.shape(), "moe experts out");
  expect_dtype(out, h.dtype(), "moe experts out");
  const int64_t n_rows = s.n_tokens * s.k;
  cache.expert_offsets = Tensor::empty({s.n_experts + 1}, DType::I64, Device::CUDA);
  cache.row_source = Tensor::empty({n_rows}, DType::I64, Device::CUDA);
  cache.row_of = Tensor::empty({n_rows}, DType::I64, Device::CUDA);
  cache.pre = Tensor::empty({n_rows, s.inter}, h.dtype(), Device::CUDA);
  const std::vector<int64_t> offsets = build_permutation(topk_idx, s.n_experts, cache);
  if (s.n_tokens * s.dim == 0) return;
  const int64_t n_here = offsets.back();  // the entries routed to an expert here

  with_gpu_float_type(h.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const DType dt = h.dtype();
    Tensor rows = Tensor::empty({n_rows, s.dim}, dt, Device::CUDA);
    Tensor act = Tensor::empty({n_rows, s.inter}, dt, Device::CUDA);
    T* rows_p = ptr<T>(rows);
    T* act_p = ptr<T>(act);
    T* pre_p = ptr<T>(cache.pre);
    const int64_t r_up = lora_rank(lora.up_a), r_down = lora_rank(lora.down_a);
    const float ls = float(lora.scale);
    Tensor xa = Tensor::empty({n_rows * std::max(r_up, r_down)}, dt, Device::CUDA);
    gather_routed_rows(ptr<T>(h), ptr<int64_t>(cache.row_source), n_here, s.k, s.dim, rows_p);
    for (int64_t e = 0; e < s.n_experts; ++e) {
      const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
      if (m == 0) continue;
      gemm(false, true, m, s.inter, s.dim, 1.f, rows_p + r0 * s.dim, s.dim,
           ptr<T>(up) + e * s.inter * s.dim, s.dim, 0.f, pre_p + r0 * s.inter, s.inter, dt);
      if (r_up)
        add_low_rank(rows_p + r0 * s.dim, at(lora.up_a, e * r_up * s.dim),
                     at(lora.up_b, e * s.inter * r_up), ls, m, s.inter, s.dim, r_up, xa.raw(),
                     pre_p + r0 * s.inter, dt);
    }
    if (n_here * s.inter > 0) {
      relu_squared_kernel<T><<<blocks_for(n_here * s.inter, kThreads), kThreads, 0, stream()>>>(
          pre_p, n_here * s.inter, act_p);
      NH_CUDA_CHECK_LAUNCH();
    }
    // The expert outputs reuse the gathered input rows: both are [rows, Din].
    for (int64_t e = 0; e < s.n_experts; ++e) {
      const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
      if (m == 0) continue;
      gemm(false, true, m, s.dim, s.inter, 1.f, act_p + r0 * s.inter, s.inter,
           ptr<T>(down) + e * s.dim * s.inter, s.inter, 0.f, rows_p + r0 * s.dim, s.dim, dt);
      if (r_down)
        add_low_rank(act_p + r0 * s.inter, at(lora.down_a, e * r_down * s.inter),
                     at(lora.down_b, e * s.dim * r_down), ls, m, s.dim, s.inter, r_down,
                     xa.raw(), rows_p + r0 * s.dim, dt);
    }
    with_weight_type<T>(topk_w, [&](auto w) {
      using W = decltype(w);
      combine_routed_rows(rows_p, ptr<int64_t>(cache.row_of), ptr<W>(topk_w), n_here, s.n_tokens,
                          s.k, s.dim, ptr<T>(out));
    });
  });
}

void moe_experts_backward(const Tensor& h, const Tensor& up, const Tensor& down,
                          const Tensor& topk_idx, const Tensor& topk_w,
                          const MoeExpertsCache& cache, const Tensor& dout, Tensor& dh, Tensor& dup,
                          Tensor& ddown, Tensor& dtopk_w, const MoeExpertsLora& lora) {
  const ExpertsShape s = check_experts(h, up, down, topk_idx, topk_w);
  check_experts_lora(lora, up, true);
  for (const Tensor* t : {&dup, &ddown}) require_cuda(*t, "moe experts", "base gradient");
  require_all_cuda({{&cache.expert_offsets, "cache.expert_offsets"},
                    {&cache.row_source, "cache.row_source"},
                    {&cache.row_of, "cache.row_of"},
                    {&cache.pre, "cache.pre"},
                    {&dout, "dout"},
                    {&dh, "dh"},
                    {&dtopk_w, "dtopk_w"}},
                   "moe experts");
  const int64_t n_rows = s.n_tokens * s.k;
  expect_shape(cache.expert_offsets, {s.n_experts + 1}, "moe experts cache offsets");
  expect_shape(cache.row_source, {n_rows}, "moe experts cache row_source");
  expect_shape(cache.row_of, {n_rows}, "moe experts cache row_of");
  expect_shape(cache.pre, {n_rows, s.inter}, "moe experts cache pre");
  for (const Tensor* t : {&cache.expert_offsets, &cache.row_source, &cache.row_of})
    expect_dtype(*t, DType::I64, "moe experts cache");
  expect_shape(dout, h.shape(), "moe experts dout");
  expect_shape(dh, h.shape(), "moe experts dh");
  if (dup.defined()) expect_shape(dup, up.shape(), "moe experts dup");
  if (ddown.defined()) expect_shape(ddown, down.shape(), "moe experts ddown");
  expect_shape(dtopk_w, topk_w.shape(), "moe experts dtopk_w");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&cache.pre, &dout, &dh, &dup, &ddown})
    if (t->defined()) expect_dtype(*t, h.dtype(), "moe experts backward");
  expect_dtype(dtopk_w, topk_w.dtype(), "moe experts dtopk_w");
  if (n_rows == 0 || s.dim == 0) {
    // Nothing was routed or every row is empty: dh and dtopk_w are sums of nothing.
    if (dh.numel() > 0) NH_CUDA_CHECK(cudaMemsetAsync(dh.raw(), 0, dh.nbytes(), stream()));
    if (dtopk_w.numel() > 0)
      NH_CUDA_CHECK(cudaMemsetAsync(dtopk_w.raw(), 0, dtopk_w.nbytes(), stream()));
    return;
  }
  const std::vector<int64_t> offsets = host_offsets(cache.expert_offsets);
  const int64_t n_here = offsets.back();  // the entries routed to an expert here
  // Other ranks' entries get no gradient here.
  NH_CUDA_CHECK(cudaMemsetAsync(dtopk_w.raw(), 0, dtopk_w.nbytes(), stream()));

  with_gpu_float_type(h.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const DType dt = h.dtype();
    Tensor rows = Tensor::empty({n_rows, s.dim}, dt, Device::CUDA);
    Tensor drows = Tensor::empty({n_rows, s.dim}, dt, Device::CUDA);
    Tensor act = Tensor::empty({n_rows, s.inter}, dt, Device::CUDA);
    Tensor dact = Tensor::empty({n_rows, s.inter}, dt, Device::CUDA);
    T* rows_p = ptr<T>(rows);
    T* drows_p = ptr<T>(drows);
    T* act_p = ptr<T>(act);
    T* dact_p = ptr<T>(dact);
    const int64_t* row_source = ptr<int64_t>(cache.row_source);
    const int64_t r_up = lora_rank(lora.up_a), r_down = lora_rank(lora.down_a);
    const float ls = float(lora.scale);
    const int64_t r_max = std::max(r_up, r_down);
    Tensor xa = Tensor::empty({n_rows * r_max}, dt, Device::CUDA),
           g = Tensor::empty({n_rows * r_max}, dt, Device::CUDA);
    gather_routed_rows(ptr<T>(h), row_source, n_here, s.k, s.dim, rows_p);
    gather_routed_rows(ptr<T>(dout), row_source, n_here, s.k, s.dim, drows_p);
    // dact = dout · (down[e] + s · down_b[e] · down_a[e]), before the routing weight (k = Din > 0
    // here, so every row is written).
    for (int64_t e = 0; e < s.n_experts; ++e) {
      const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
      if (m == 0) continue;
      gemm(false, false, m, s.inter, s.dim, 1.f, drows_p + r0 * s.dim, s.dim,
           ptr<T>(down) + e * s.dim * s.inter, s.inter, 0.f, dact_p + r0 * s.inter, s.inter, dt);
      if (!r_down) continue;
      gemm(false, false, m, r_down, s.dim, 1.f, drows_p + r0 * s.dim, s.dim,
           at(lora.down_b, e * s.dim * r_down), r_down, 0.f, g.raw(), r_down, dt);
      gemm(false, false, m, s.inter, r_down, ls, g.raw(), r_down,
           at(lora.down_a, e * r_down * s.inter), s.inter, 1.f, dact_p + r0 * s.inter, s.inter,
           dt);
    }
    if (s.inter > 0 && n_here > 0) {
      const int warps = kThreads / 32;
      with_weight_type<T>(topk_w, [&](auto w) {
        using W = decltype(w);
        expert_row_grads_kernel<T, W>
            <<<unsigned((n_here + warps - 1) / warps), kThreads, 0, stream()>>>(
                ptr<T>(cache.pre), ptr<W>(topk_w), row_source, n_here, s.inter, act_p, dact_p,
                ptr<W>(dtopk_w));
      });
      NH_CUDA_CHECK_LAUNCH();
    }
    for (int64_t e = 0; e < s.n_experts; ++e) {
      const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
      if (m == 0) continue;
      if (ddown.defined())
        gemm(true, false, s.dim, s.inter, m, 1.f, drows_p + r0 * s.dim, s.dim,
             act_p + r0 * s.inter, s.inter, 1.f, ptr<T>(ddown) + e * s.dim * s.inter, s.inter, dt);
      if (r_down)
        low_rank_grads(act_p + r0 * s.inter, at(lora.down_a, e * r_down * s.inter),
                       at(lora.down_b, e * s.dim * r_down), drows_p + r0 * s.dim, ls, m, s.dim,
                       s.inter, r_down, xa.raw(), g.raw(), at(lora.ddown_a, e * r_down * s.inter),
                       at(lora.ddown_b, e * s.dim * r_down), dt);
      if (dup.defined())
        gemm(true, false, s.inter, s.dim, m, 1.f, dact_p + r0 * s.inter, s.inter,
             rows_p + r0 * s.dim, s.dim, 1.f, ptr<T>(dup) + e * s.inter * s.dim, s.dim, dt);
      // drows is free once the down gradients are done: it now takes each routed row's input
      // gradient.
      gemm(false, false, m, s.dim, s.inter, 1.f, dact_p + r0 * s.inter, s.inter,
           ptr<T>(up) + e * s.inter * s.dim, s.dim, 0.f, drows_p + r0 * s.dim, s.dim, dt);
      if (r_up) {
        low_rank_grads(rows_p + r0 * s.dim, at(lora.up_a, e * r_up * s.dim),
                       at(lora.up_b, e * s.inter * r_up), dact_p + r0 * s.inter, ls, m, s.inter,
                       s.dim, r_up, xa.raw(), g.raw(), at(lora.dup_a, e * r_up * s.dim),
                       at(lora.dup_b, e * s.inter * r_up), dt);
        gemm(false, false, m, s.dim, r_up, ls, g.raw(), r_up, at(lora.up_a, e * r_up * s.dim),
             s.dim, 1.f, drows_p + r0 * s.dim, s.dim, dt);
      }
    }
    combine_routed_rows<T, T>(drows_p, ptr<int64_t>(cache.row_of), nullptr, n_here, s.n_tokens,
                              s.k, s.dim, ptr<T>(dh));
  });
}

// Out-of-range ids are not counted (the CPU throws; the GPU would need a host round trip to).
void moe_expert_load(const Tensor& topk_idx, Tensor& load) {
  require_all_cuda({{&topk_idx, "topk_idx"}, {&load, "load"}}, "moe expert load");
  expect_dtype(topk_idx, DType::I64, "moe topk_idx");
  expect_dtype(load, DType::I64, "moe expert load");
  if (load.ndim() != 1) throw Error("moe expert load", "shape", "[E]", shape_str(load.shape()));
  if (load.numel() == 0) return;
  NH_CUDA_CHECK(cudaMemsetAsync(load.raw(), 0, load.nbytes(), stream()));
  if (topk_idx.numel() == 0) return;
  count_experts_kernel<<<blocks_for(topk_idx.numel(), kThreads), kThreads, 0, stream()>>>(
      ptr<int64_t>(topk_idx), topk_idx.numel(), load.size(0), ptr<int64_t>(load), nullptr);
  NH_CUDA_CHECK_LAUNCH();
}

void moe_update_correction_bias(Tensor& correction_bias, const Tensor& expert_load, double rate) {
  require_all_cuda({{&correction_bias, "correction_bias"}, {&expert_load, "expert_load"}},
                   "moe correction bias");
  if (correction_bias.ndim() != 1)
    throw Error("moe correction_bias", "shape", "[E]", shape_str(correction_bias.shape()));
  expect_shape(expert_load, correction_bias.shape(), "moe expert load");
  expect_dtype(expert_load, DType::I64, "moe expert load");
  const int64_t n_experts = correction_bias.size(0);
  if (n_experts == 0) return;
  with_gpu_float_type(correction_bias.dtype(), [&](auto zero) {
    using T = decltype(zero);
    update_correction_bias_kernel<T><<<1, kThreads, 0, stream()>>>(
        ptr<T>(correction_bias), ptr<int64_t>(expert_load), n_experts, float(rate));
    NH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace nh::cuda
