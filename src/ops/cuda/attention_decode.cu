// CUDA attention of one new token over its KV cache (the contract is in ops/attention_decode.h,
// SPEC §4): storage F32 or BF16, every product and the softmax in fp32.
//
// One block per (query head, batch row). Warp w walks the cache positions w, w + kWarps, … with
// its own online softmax (running max m, sum l) and accumulator row in shared memory (lane owns
// dims lane, lane + 32, …); the warps are merged at the end in a fixed order, so the result does
// not depend on scheduling. The lengths are read on the host (they are checked there anyway)
// and passed as a kernel argument, which needs no copy to the device and no sync.
#include <algorithm>
#include <string>
#include <utility>

#include "ops/attention_decode.h"
#include "ops/cuda/common.cuh"

namespace nh::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Shared memory is (kWarps + 1) · head_dim floats: 36 KiB at this bound, under the default 48.
constexpr int64_t kMaxHeadDim = 1024;
// Batch rows per launch: their lengths travel in the kernel arguments (2 KiB of the 4 allowed).
constexpr int kRowsPerLaunch = 256;

struct RowLengths {
  int64_t n[kRowsPerLaunch];
};

template <class T>
__global__ void attention_decode_kernel(const T* q, const T* k, const T* v, RowLengths lengths,
                                        int64_t row0, int64_t cache_len, int q_heads, int kv_heads,
                                        int head_dim, float scale, T* out) {
  extern __shared__ float smem[];
  float* qs = smem;              // [head_dim]
  float* acc = smem + head_dim;  // [kWarps][head_dim]
  __shared__ float warp_max[kWarps], warp_sum[kWarps];
  const int h = blockIdx.x, kh = h / (q_heads / kv_heads);
  const int64_t b = row0 + blockIdx.y, n = lengths.n[blockIdx.y];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t q_row = (b * q_heads + h) * head_dim;
  for (int e = threadIdx.x; e < head_dim; e += blockDim.x) qs[e] = to_f32(q[q_row + e]);
  float* my_acc = acc + warp * head_dim;
  for (int e = lane; e < head_dim; e += 32) my_acc[e] = 0.f;
  __syncthreads();

  const int64_t step = int64_t(kv_heads) * head_dim;  // between cache positions
  const int64_t head0 = (b * cache_len * kv_heads + kh) * head_dim;
  float m = -INFINITY, l = 0.f;
  for (int64_t j = warp; j < n; j += kWarps) {
    const T* kj = k + head0 + j * step;
    float s = 0.f;
    for (int e = lane; e < head_dim; e += 32) s += qs[e] * to_f32(kj[e]);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    s *= scale;
    // exp(m - m_new) is 0 for the first position (m = -inf).
    const float m_new = fmaxf(m, s), corr = expf(m - m_new), p = expf(s - m_new);
    l = l * corr + p;
    const T* vj = v + head0 + j * step;
    for (int e = lane; e < head_dim; e += 32) my_acc[e] = my_acc[e] * corr + p * to_f32(vj[e]);
    m = m_new;
  }
  if (lane == 0) {
    warp_max[warp] = m;
    warp_sum[warp] = l;
  }
  __syncthreads();

  // Warp 0 always has position 0, so mx is finite; a warp that saw no position weighs 0.
  float mx = -INFINITY;
  for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, warp_max[w]);
  float weight[kWarps], total = 0.f;
  for (int w = 0; w < kWarps; ++w) {
    weight[w] = expf(warp_max[w] - mx);
    total += weight[w] * warp_sum[w];
  }
  for (int e = threadIdx.x; e < head_dim; e += blockDim.x) {
    float o = 0.f;
    for (int w = 0; w < kWarps; ++w) o += weight[w] * acc[w * head_dim + e];
    out[q_row + e] = from_f32<T>(o / total);
  }
}

void check_dtype(const Tensor& t, DType dtype, const std::string& what) {
  if (t.dtype() != dtype)
    throw Error("attention_decode", what + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

}  // namespace

void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& lengths, double scale, Tensor& out) {
  const std::pair<const char*, const Tensor*> gpu[] = {
      {"q", &q}, {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"out", &out}};
  for (const auto& [name, t] : gpu) require_cuda(*t, "attention_decode", name);
  if (q.ndim() != 3) throw Error("attention_decode", "q shape", "[B, Hq, d]", shape_str(q.shape()));
  if (k_cache.ndim() != 4)
    throw Error("attention_decode", "k_cache shape", "[B, L, Hkv, d]", shape_str(k_cache.shape()));
  const int64_t batch = q.size(0), q_heads = q.size(1), head_dim = q.size(2);
  const int64_t cache_len = k_cache.size(1), kv_heads = k_cache.size(2);
  if (kv_heads < 1 || q_heads % kv_heads != 0)
    throw Error("attention_decode", "num_key_value_heads",
                "a divisor of Hq = " + std::to_string(q_heads), std::to_string(kv_heads));
  if (head_dim > kMaxHeadDim)
    throw Error("attention_decode", "head_dim", "at most " + std::to_string(kMaxHeadDim),
                std::to_string(head_dim));
  expect_shape(k_cache, {batch, cache_len, kv_heads, head_dim}, "attention_decode k_cache");
  expect_shape(v_cache, k_cache.shape(), "attention_decode v_cache");
  expect_shape(out, q.shape(), "attention_decode out");
  check_dtype(k_cache, q.dtype(), "k_cache");
  check_dtype(v_cache, q.dtype(), "v_cache");
  check_dtype(out, q.dtype(), "out");
  if (lengths.device() != Device::CPU)
    throw Error("attention_decode", "lengths", "a CPU tensor", "a CUDA tensor");
  check_dtype(lengths, DType::I64, "lengths");
  expect_shape(lengths, {batch}, "attention_decode lengths");
  const int64_t* len = lengths.data<int64_t>();
  for (int64_t b = 0; b < batch; ++b)
    if (len[b] < 1 || len[b] > cache_len)
      throw Error("attention_decode", "lengths[" + std::to_string(b) + "]",
                  "1 to L = " + std::to_string(cache_len), std::to_string(len[b]));
  if (out.numel() == 0) return;
  const size_t shared = size_t(kWarps + 1) * size_t(head_dim) * sizeof(float);
  with_gpu_float_type(q.dtype(), [&](auto zero) {
    using T = decltype(zero);
    for (int64_t row0 = 0; row0 < batch; row0 += kRowsPerLaunch) {
      const int64_t rows = std::min<int64_t>(kRowsPerLaunch, batch - row0);
      RowLengths chunk{};
      std::copy(len + row0, len + row0 + rows, chunk.n);
      attention_decode_kernel<T>
          <<<dim3(unsigned(q_heads), unsigned(rows)), kThreads, shared, stream()>>>(
              ptr<T>(q), ptr<T>(k_cache), ptr<T>(v_cache), chunk, row0, cache_len, int(q_heads),
              int(kv_heads), int(head_dim), float(scale), ptr<T>(out));
      NH_CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace nh::cuda
