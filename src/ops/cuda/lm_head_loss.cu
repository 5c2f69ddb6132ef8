// CUDA LM head and cross-entropy (SPEC §6), in chunks of kChunkRows rows so that the [T, V]
// logits are never all held (unless the caller's `logits` tensor asks for them: then the chunks
// are views into it). Per chunk: logits = h·wᵀ through cuBLASLt (nh::cuda::gemm, fp32
// accumulation) in the dtype of h and w, then one block per row computes the log-sum-exp in
// fp32. As on the CPU, the softmax reads the logits as stored (bf16 logits are rounded first).
//
// The loss is deterministic: per-row terms go to an fp32 buffer and one block sums them in
// double in a fixed order; the sum, the count and the first bad label come back to the host in
// one small copy. Labels are validated on the GPU (an integer atomicMin keeps the first bad
// row, so the Error names the same label as the CPU's); the backward validates before it
// touches dw, at the cost of one synchronisation.
#include <algorithm>
#include <cstdint>
#include <string>

#include "core/kernel_versions.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.cuh"
#include "ops/lm_head_loss.h"

namespace nh::cuda {

namespace {

// Rows per chunk: the op holds at most [kChunkRows, V] logits (in h's dtype) at a time.
constexpr int64_t kChunkRows = 1024;
constexpr int64_t kIgnoreIndex = -100;
constexpr int kRowThreads = 512;
constexpr int kSumThreads = 1024;
constexpr unsigned long long kNoBadRow = ~0ull;

// What the forward reads back: the loss sum and count, and the first row whose label is neither
// -100 nor in [0, V) (kNoBadRow when every label is good).
struct LossResult {
  double sum;
  long long count;
  unsigned long long first_bad;
};

__device__ __forceinline__ bool counted(int64_t label, int64_t vocab) {
  return label != kIgnoreIndex && label >= 0 && label < vocab;
}

// A running maximum m and the sum s of exp(x − m) over the values seen (one pass over a row).
struct MaxSum {
  float m = -INFINITY, s = 0.f;
  __device__ void add(const float* v, int n) {
    float mx = m;
    for (int i = 0; i < n; ++i) mx = fmaxf(mx, v[i]);
    if (mx == -INFINITY) return;
    float sum = s * __expf(m - mx);
    for (int i = 0; i < n; ++i) sum += __expf(v[i] - mx);
    m = mx;
    s = sum;
  }
  __device__ void merge(const MaxSum& o) {
    const float mx = fmaxf(m, o.m);
    if (mx == -INFINITY) return;
    s = s * __expf(m - mx) + o.s * __expf(o.m - mx);
    m = mx;
  }
};

// The merge of every lane's MaxSum, in every lane (a fixed butterfly: deterministic).
__device__ MaxSum warp_merge(MaxSum ms) {
  for (int offset = 16; offset > 0; offset /= 2) {
    MaxSum o;
    o.m = __shfl_xor_sync(0xffffffffu, ms.m, offset);
    o.s = __shfl_xor_sync(0xffffffffu, ms.s, offset);
    ms.merge(o);
  }
  return ms;
}

// Elements a thread reads at a time: 16 bytes.
template <class T>
constexpr int kVec = 16 / sizeof(T);

// Calls f(i, v, n) for this thread's runs of a row: n = kVec values v of x[i …] (16-byte loads)
// when the row allows, else single values.
template <class T, class F>
__device__ void for_row_runs(const T* x, int64_t vocab, F&& f) {
  constexpr int kV = kVec<T>;
  float v[kV];
  if (vocab % kV == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    for (int64_t i = int64_t(threadIdx.x) * kV; i < vocab; i += int64_t(blockDim.x) * kV) {
      const uint4 raw = *reinterpret_cast<const uint4*>(x + i);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < kV; ++j) v[j] = to_f32(e[j]);
      f(i, v, kV);
    }
    return;
  }
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    v[0] = to_f32(x[i]);
    f(i, v, 1);
  }
}

// logsumexp of one row of logits in fp32, in one pass; called by a whole block (a fixed
// reduction tree: deterministic).
template <class T>
__device__ float row_logsumexp(const T* x, int64_t vocab) {
  MaxSum ms;
  for_row_runs(x, vocab, [&](int64_t, const float* v, int n) { ms.add(v, n); });
  ms = warp_merge(ms);
  __shared__ MaxSum partial[32];
  __shared__ float result;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = ms;
  __syncthreads();
  if (warp == 0) {
    ms = lane < int(blockDim.x / 32) ? partial[lane] : MaxSum{};
    ms = warp_merge(ms);
    if (lane == 0) result = ms.m + logf(ms.s);
  }
  __syncthreads();
  return result;
}

// Grid-stride over labels [rows]: the smallest row whose label is bad, into *first_bad.
__global__ void find_bad_label_kernel(const int64_t* labels, int64_t rows, int64_t vocab,
                                      unsigned long long* first_bad) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * blockDim.x)
    if (labels[r] != kIgnoreIndex && !counted(labels[r], vocab))
      atomicMin(first_bad, (unsigned long long)r);
}

// One block per row of a chunk: terms[row] = logsumexp(logits[row]) − logits[row, label], 0 for
// ignored (or bad) labels.
template <class T>
__global__ void cross_entropy_rows_kernel(const T* logits, const int64_t* labels, int64_t vocab,
                                          float* terms) {
  const int64_t row = blockIdx.x, label = labels[row];
  const T* x = logits + row * vocab;
  if (!counted(label, vocab)) {  // the same for the whole block
    if (threadIdx.x == 0) terms[row] = 0.f;
    return;
  }
  const float lse = row_logsumexp(x, vocab);
  if (threadIdx.x == 0) terms[row] = lse - to_f32(x[label]);
}

// One block per row of a chunk, in place: logits[row] becomes
// (softmax(logits[row]) − onehot(label)) · grad_scale, or 0 for ignored (or bad) labels; with
// `terms`, also terms[row] as cross_entropy_rows_kernel writes it.
template <class T>
__global__ void softmax_minus_onehot_kernel(T* logits, const int64_t* labels, int64_t vocab,
                                            float grad_scale, float* terms) {
  const int64_t row = blockIdx.x, label = labels[row];
  T* x = logits + row * vocab;
  if (!counted(label, vocab)) {
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) x[i] = from_f32<T>(0.f);
    if (terms != nullptr && threadIdx.x == 0) terms[row] = 0.f;
    return;
  }
  const float target = to_f32(x[label]);  // read before row_logsumexp's barriers: then it is
                                          // overwritten
  const float lse = row_logsumexp(x, vocab);
  if (terms != nullptr && threadIdx.x == 0) terms[row] = lse - target;
  for_row_runs(x, vocab, [&](int64_t i, const float* v, int n) {
    alignas(16) T out[kVec<T>];
    for (int j = 0; j < n; ++j)
      out[j] = from_f32<T>((__expf(v[j] - lse) - (i + j == label ? 1.f : 0.f)) * grad_scale);
    if (n == kVec<T>)
      *reinterpret_cast<uint4*>(x + i) = *reinterpret_cast<const uint4*>(out);
    else
      x[i] = out[0];
  });
}

// One block of kSumThreads: the sum (in double) of terms over counted rows and their count,
// each thread over a fixed stride of rows, then a fixed tree.
__global__ void __launch_bounds__(kSumThreads)
    loss_sum_kernel(const float* terms, const int64_t* labels, int64_t rows, int64_t vocab,
                    LossResult* result) {
  __shared__ double sums[kSumThreads];
  __shared__ long long counts[kSumThreads];
  double sum = 0;
  long long count = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kSumThreads)
    if (counted(labels[r], vocab)) {
      sum += terms[r];
      ++count;
    }
  sums[threadIdx.x] = sum;
  counts[threadIdx.x] = count;
  __syncthreads();
  for (int half = kSumThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      sums[threadIdx.x] += sums[threadIdx.x + half];
      counts[threadIdx.x] += counts[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    result->sum = sums[0];
    result->count = counts[0];
  }
}

using lm_head::HeadDims;

// Checks h [T, D] (any leading shape) in F32 or BF16, w [V, D] of the same dtype and labels
// (T elements, I64), all on the GPU. The label values are checked on the GPU (launch_label_check).
HeadDims check_head(const Tensor& h, const Tensor& w, const Tensor& labels) {
  require_cuda(h, "lm_head_loss", "h");
  require_cuda(w, "lm_head_loss", "w");
  require_cuda(labels, "lm_head_loss", "labels");
  const HeadDims d = lm_head::check_shapes(h, w);
  if (h.dtype() != DType::F32 && h.dtype() != DType::BF16)
    throw Error("lm_head_loss", "h dtype", "F32 or BF16 on CUDA", dtype_name(h.dtype()));
  lm_head::check_types(h, w, labels, d);
  return d;
}

// Launches the label check into result->first_bad (set to kNoBadRow first).
void launch_label_check(const Tensor& labels, const HeadDims& d, LossResult* result) {
  NH_CUDA_CHECK(cudaMemsetAsync(&result->first_bad, 0xff, sizeof(result->first_bad), stream()));
  constexpr int kThreads = 256;
  find_bad_label_kernel<<<std::min<unsigned>(blocks_for(d.rows, kThreads), 1024), kThreads, 0,
                          stream()>>>(ptr<const int64_t>(labels), d.rows, d.vocab,
                                      &result->first_bad);
  NH_CUDA_CHECK_LAUNCH();
}

// The CPU's Error for the bad label at `row` (its value read back from the GPU).
[[noreturn]] void throw_bad_label(const Tensor& labels, unsigned long long row, int64_t vocab) {
  int64_t label = 0;
  NH_CUDA_CHECK(cudaMemcpyAsync(&label, ptr<const int64_t>(labels) + row, sizeof(label),
                                cudaMemcpyDeviceToHost, stream()));
  NH_CUDA_CHECK(cudaStreamSynchronize(stream()));
  throw Error("lm_head_loss", "labels[" + std::to_string(row) + "]",
              "-100 or a token in [0, " + std::to_string(vocab) + ")", std::to_string(label));
}

// Logits of rows [r0, r0 + n) into lg [n, V]: lg = h[r0 : r0 + n] · wᵀ.
void chunk_logits(const Tensor& h, const Tensor& w, const HeadDims& d, int64_t r0, int64_t n,
                  void* lg) {
  const char* hp = static_cast<const char*>(h.raw()) + r0 * d.dim * dtype_size(h.dtype());
  gemm(false, true, n, d.vocab, d.dim, 1.f, hp, d.dim, w.raw(), d.dim, 0.f, lg, d.vocab, h.dtype());
}

// The loss from per-row terms: summed on the GPU (loss_sum_kernel) into the LossResult in
// `result_buf`, whose first_bad the caller's label check filled, and read back.
LossSum sum_terms(const Tensor& terms, const Tensor& labels, const HeadDims& d,
                  const Tensor& result_buf) {
  LossResult* result = static_cast<LossResult*>(result_buf.raw());
  loss_sum_kernel<<<1, kSumThreads, 0, stream()>>>(ptr<const float>(terms),
                                                   ptr<const int64_t>(labels), d.rows, d.vocab,
                                                   result);
  NH_CUDA_CHECK_LAUNCH();
  LossResult host;
  NH_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof(host), cudaMemcpyDeviceToHost, stream()));
  NH_CUDA_CHECK(cudaStreamSynchronize(stream()));
  if (host.first_bad != kNoBadRow) throw_bad_label(labels, host.first_bad, d.vocab);
  return {host.sum, int64_t(host.count)};
}

// The label check of the backward ops, before they touch dw: one synchronisation. Returns the
// LossResult buffer it filled (for sum_terms).
Tensor check_labels_now(const Tensor& labels, const HeadDims& d) {
  Tensor result_buf = Tensor::empty({int64_t(sizeof(LossResult))}, DType::U8, Device::CUDA);
  LossResult* result = static_cast<LossResult*>(result_buf.raw());
  launch_label_check(labels, d, result);
  unsigned long long first_bad = 0;
  NH_CUDA_CHECK(cudaMemcpyAsync(&first_bad, &result->first_bad, sizeof(first_bad),
                                cudaMemcpyDeviceToHost, stream()));
  NH_CUDA_CHECK(cudaStreamSynchronize(stream()));
  if (first_bad != kNoBadRow) throw_bad_label(labels, first_bad, d.vocab);
  return result_buf;
}

void check_gradients(const Tensor& h, const Tensor& w, const Tensor& dh, const Tensor& dw) {
  require_cuda(dh, "lm_head_loss", "dh");
  require_cuda(dw, "lm_head_loss", "dw");
  lm_head::check_gradients(h, w, dh, dw);
}

// dh overwritten and dw accumulated, chunk by chunk: the chunk's logits, turned into
// (softmax − onehot) · grad_scale in place (0 for ignored rows, computed in fp32 and stored in
// the dtype of h; with `terms`, the loss terms too), then dh = G · w and dw += Gᵀ · h. A BF16 dw
// is rounded once per chunk.
void head_gradients(const Tensor& h, const Tensor& w, const Tensor& labels, const HeadDims& d,
                    double grad_scale, Tensor& dh, Tensor& dw, float* terms) {
  const size_t elem = dtype_size(h.dtype());
  const Tensor grad =
      Tensor::empty({std::min(kChunkRows, d.rows), d.vocab}, h.dtype(), Device::CUDA);
  const int64_t* lp = ptr<const int64_t>(labels);
  for (int64_t r0 = 0; r0 < d.rows; r0 += kChunkRows) {
    const int64_t n = std::min(kChunkRows, d.rows - r0);
    chunk_logits(h, w, d, r0, n, grad.raw());
    with_gpu_float_type(h.dtype(), [&](auto zero) {
      using T = decltype(zero);
      softmax_minus_onehot_kernel<T><<<unsigned(n), kRowThreads, 0, stream()>>>(
          ptr<T>(grad), lp + r0, d.vocab, float(grad_scale),
          terms != nullptr ? terms + r0 : nullptr);
      NH_CUDA_CHECK_LAUNCH();
    });
    const char* hp = static_cast<const char*>(h.raw()) + r0 * d.dim * elem;
    char* dhp = static_cast<char*>(dh.raw()) + r0 * d.dim * elem;
    gemm(false, false, n, d.dim, d.vocab, 1.f, grad.raw(), d.vocab, w.raw(), d.dim, 0.f, dhp, d.dim,
         h.dtype());
    if (dw.defined())
      gemm(true, false, d.vocab, d.dim, n, 1.f, grad.raw(), d.vocab, hp, d.dim, 1.f, dw.raw(),
           d.dim, h.dtype());
  }
}

}  // namespace

// h [T, D], w [V, D], labels I64 [T] -> Σ over counted rows of lse − logit[label] (fp32 terms,
// summed in double), and the count; logits [T, V] written when defined.
LossSum lm_head_loss_forward(const Tensor& h, const Tensor& w, const Tensor& labels,
                             Tensor& logits) {
  const HeadDims d = check_head(h, w, labels);
  if (logits.defined() &&
      (logits.device() != Device::CUDA || logits.ndim() < 1 || logits.size(-1) != d.vocab ||
       logits.numel() != d.rows * d.vocab || logits.dtype() != h.dtype()))
    throw Error("lm_head_loss", "logits",
                std::string(dtype_name(h.dtype())) + " CUDA [" + std::to_string(d.rows) + ", " +
                    std::to_string(d.vocab) + "]",
                std::string(dtype_name(logits.dtype())) + " " + device_name(logits.device()) + " " +
                    shape_str(logits.shape()));
  if (d.rows == 0) return {};
  const Tensor result_buf = Tensor::empty({int64_t(sizeof(LossResult))}, DType::U8, Device::CUDA);
  LossResult* result = static_cast<LossResult*>(result_buf.raw());
  launch_label_check(labels, d, result);

  const size_t elem = dtype_size(h.dtype());
  const Tensor buffer = logits.defined() ? Tensor()
                                         : Tensor::empty({std::min(kChunkRows, d.rows), d.vocab},
                                                         h.dtype(), Device::CUDA);
  const Tensor terms = Tensor::empty({d.rows}, DType::F32, Device::CUDA);
  const int64_t* lp = ptr<const int64_t>(labels);
  for (int64_t r0 = 0; r0 < d.rows; r0 += kChunkRows) {
    const int64_t n = std::min(kChunkRows, d.rows - r0);
    void* lg =
        logits.defined() ? static_cast<char*>(logits.raw()) + r0 * d.vocab * elem : buffer.raw();
    chunk_logits(h, w, d, r0, n, lg);
    with_gpu_float_type(h.dtype(), [&](auto zero) {
      using T = decltype(zero);
      cross_entropy_rows_kernel<T><<<unsigned(n), kRowThreads, 0, stream()>>>(
          static_cast<const T*>(lg), lp + r0, d.vocab, ptr<float>(terms) + r0);
      NH_CUDA_CHECK_LAUNCH();
    });
  }
  return sum_terms(terms, labels, d, result_buf);
}

// dh [T, D] overwritten, dw [V, D] accumulated (head_gradients).
void lm_head_loss_backward(const Tensor& h, const Tensor& w, const Tensor& labels,
                           double grad_scale, Tensor& dh, Tensor& dw) {
  const HeadDims d = check_head(h, w, labels);
  check_gradients(h, w, dh, dw);
  if (d.rows == 0) return;
  check_labels_now(labels, d);
  head_gradients(h, w, labels, d, grad_scale, dh, dw, nullptr);
}

// The forward's loss and the backward's gradients in one pass over the chunks: three GEMMs per
// chunk instead of four (NH_KERNELS=lm_head_loss=two_pass runs the forward, then the backward).
LossSum lm_head_loss_forward_backward(const Tensor& h, const Tensor& w, const Tensor& labels,
                                      double grad_scale, Tensor& dh, Tensor& dw) {
  if (kernel_version("lm_head_loss") == 1) {  // the playground's two_pass
    Tensor none;
    const LossSum loss = nh::cuda::lm_head_loss_forward(h, w, labels, none);
    nh::cuda::lm_head_loss_backward(h, w, labels, grad_scale, dh, dw);
    return loss;
  }
  const HeadDims d = check_head(h, w, labels);
  check_gradients(h, w, dh, dw);
  if (d.rows == 0) return {};
  const Tensor result_buf = check_labels_now(labels, d);
  const Tensor terms = Tensor::empty({d.rows}, DType::F32, Device::CUDA);
  head_gradients(h, w, labels, d, grad_scale, dh, dw, ptr<float>(terms));
  return sum_terms(terms, labels, d, result_buf);
}

}  // namespace nh::cuda
