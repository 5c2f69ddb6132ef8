// Token embedding on the GPU (ops/embedding.h): weight, out, dout and dweight in one dtype
// (F32 or BF16), ids I64 on the GPU.
//   Every call first checks the ids on the GPU (the lowest bad position, by an integer atomicMin)
//   and reads that one number back: a bad id is an Error before anything is written.
//   forward: a row gather.
//   backward: deterministic without float atomics: the (id, position) pairs are sorted by id
//   with CUB's stable radix sort, so the tokens of one id form a segment in token order; the
//   segment's first position owns the dweight row and adds the segment's dout rows in fp32,
//   then once into dweight.
#include <algorithm>
#include <climits>
#include <cub/device/device_radix_sort.cuh>
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/embedding.h"

namespace nh::cuda {

namespace {

constexpr int kThreads = 256;
constexpr unsigned long long kNoBadId = ULLONG_MAX;

// *first_bad = the lowest t with ids[t] outside [0, vocab) (left at kNoBadId when none).
__global__ void find_bad_id_kernel(const int64_t* ids, int64_t n, int64_t vocab,
                                   unsigned long long* first_bad) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n;
       t += int64_t(gridDim.x) * blockDim.x)
    if (ids[t] < 0 || ids[t] >= vocab) atomicMin(first_bad, (unsigned long long)t);
}

// out[t, :] = weight[ids[t], :] (zeros for an id outside [0, vocab)): blockIdx.y strides over
// tokens, x threads over the columns.
template <class T>
__global__ void gather_rows_kernel(const int64_t* ids, const T* weight, T* out, int64_t n,
                                   int64_t vocab, int64_t dim) {
  for (int64_t t = blockIdx.y; t < n; t += gridDim.y) {
    const int64_t id = ids[t];
    const bool valid = id >= 0 && id < vocab;
    const T* src = weight + (valid ? id : 0) * dim;
    T* dst = out + t * dim;
    for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < dim;
         d += int64_t(gridDim.x) * blockDim.x)
      dst[d] = valid ? src[d] : from_f32<T>(0.f);
  }
}

// The sort's input: keys[t] = ids[t] (checked to lie in [0, vocab), vocab <= 2^31 - 1),
// positions[t] = t.
__global__ void make_sort_pairs_kernel(const int64_t* ids, int64_t n, uint32_t* keys,
                                       int32_t* positions) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n;
       t += int64_t(gridDim.x) * blockDim.x) {
    keys[t] = uint32_t(ids[t]);
    positions[t] = int32_t(t);
  }
}

// For each segment of equal sorted ids (blockIdx.y strides over the sorted positions; only a
// segment's first position does work): dweight[id, d] += Σ_segment dout[position, d], the
// terms in token order, in fp32. x threads over the columns. Each row has one owner: no races.
template <class T>
__global__ void add_id_segments_kernel(const uint32_t* sorted_ids, const int32_t* positions,
                                       const T* dout, T* dweight, int64_t n, int64_t dim) {
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    const uint32_t id = sorted_ids[i];
    if (i > 0 && sorted_ids[i - 1] == id) continue;
    T* row = dweight + int64_t(id) * dim;
    for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < dim;
         d += int64_t(gridDim.x) * blockDim.x) {
      float sum = 0.f;
      for (int64_t j = i; j < n && sorted_ids[j] == id; ++j)
        sum += to_f32(dout[int64_t(positions[j]) * dim + d]);
      row[d] = from_f32<T>(to_f32(row[d]) + sum);
    }
  }
}

// out and dout may have any leading shape, as long as they hold `count` rows of `dim`.
void check_rows(const Tensor& rows, int64_t count, int64_t dim, DType dtype,
                const std::string& what) {
  require_cuda(rows, "embedding", what.c_str());
  if (rows.ndim() < 1 || rows.size(-1) != dim || rows.numel() != count * dim)
    throw Error("embedding", what + " shape",
                std::to_string(count) + " rows of " + std::to_string(dim), shape_str(rows.shape()));
  if (rows.dtype() != dtype)
    throw Error("embedding", what + " dtype", dtype_name(dtype), dtype_name(rows.dtype()));
}

void check_weight(const Tensor& weight, const std::string& what) {
  require_cuda(weight, "embedding", what.c_str());
  if (weight.ndim() != 2)
    throw Error("embedding", what + " shape", "[V, D]", shape_str(weight.shape()));
}

void check_ids_tensor(const Tensor& ids) {
  require_cuda(ids, "embedding", "ids");
  if (ids.dtype() != DType::I64)
    throw Error("embedding", "ids dtype", "I64", dtype_name(ids.dtype()));
}

// Throws the CPU backend's Error for the first id outside [0, vocab); one small read-back.
void check_ids(const Tensor& ids, int64_t vocab) {
  check_ids_tensor(ids);
  const int64_t n = ids.numel();
  if (n == 0) return;
  Tensor flag = Tensor::empty({1}, DType::I64, Device::CUDA);
  auto* first_bad = static_cast<unsigned long long*>(flag.raw());
  NH_CUDA_CHECK(cudaMemsetAsync(first_bad, 0xff, sizeof(*first_bad), stream()));
  const unsigned blocks = unsigned(std::min<int64_t>(blocks_for(n, kThreads), 1024));
  find_bad_id_kernel<<<blocks, kThreads, 0, stream()>>>(ptr<int64_t>(ids), n, vocab, first_bad);
  NH_CUDA_CHECK_LAUNCH();
  unsigned long long bad = 0;
  NH_CUDA_CHECK(cudaMemcpyAsync(&bad, first_bad, sizeof(bad), cudaMemcpyDeviceToHost, stream()));
  NH_CUDA_CHECK(cudaStreamSynchronize(stream()));
  if (bad == kNoBadId) return;
  int64_t id = 0;
  NH_CUDA_CHECK(
      cudaMemcpyAsync(&id, ptr<int64_t>(ids) + bad, sizeof(id), cudaMemcpyDeviceToHost, stream()));
  NH_CUDA_CHECK(cudaStreamSynchronize(stream()));
  throw Error("embedding", "ids[" + std::to_string(bad) + "]",
              "an id in [0, " + std::to_string(vocab) + ")", std::to_string(id));
}

// blockIdx.x over columns (few blocks: a row is at most a few thousand), y over rows.
dim3 row_grid(int64_t rows, int64_t dim) {
  return dim3(unsigned(std::min<int64_t>(blocks_for(dim, kThreads), 16)),
              unsigned(std::min<int64_t>(rows, 65535)));
}

// The bits the radix sort needs for keys in [0, vocab).
int key_bits(int64_t vocab) {
  int bits = 1;
  while (bits < 31 && (int64_t(1) << bits) < vocab) ++bits;
  return bits;
}

}  // namespace

// ids I64 [T] (any shape), weight [V, D] -> out [T, D] (any shape of T rows of D).
void embedding_forward(const Tensor& ids, const Tensor& weight, Tensor& out, bool ids_checked) {
  check_weight(weight, "weight");
  const int64_t vocab = weight.size(0), dim = weight.size(1), n = ids.numel();
  check_rows(out, n, dim, weight.dtype(), "out");
  if (ids_checked)
    check_ids_tensor(ids);
  else
    check_ids(ids, vocab);
  if (n == 0 || dim == 0) return;
  with_gpu_float_type(weight.dtype(), [&](auto zero) {
    using T = decltype(zero);
    gather_rows_kernel<T><<<row_grid(n, dim), kThreads, 0, stream()>>>(
        ptr<int64_t>(ids), ptr<T>(weight), ptr<T>(out), n, vocab, dim);
    NH_CUDA_CHECK_LAUNCH();
  });
}

// ids I64 [T], dout [T, D] -> dweight [V, D] += scatter of dout by id.
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight) {
  check_weight(dweight, "dweight");
  const int64_t vocab = dweight.size(0), dim = dweight.size(1), n = ids.numel();
  check_rows(dout, n, dim, dweight.dtype(), "dout");
  // 32-bit sort keys and positions.
  if (vocab > INT32_MAX)
    throw Error("embedding", "vocabulary", "at most 2^31 - 1 rows on the GPU",
                std::to_string(vocab));
  if (n > INT32_MAX)
    throw Error("embedding", "ids", "at most 2^31 - 1 tokens on the GPU", std::to_string(n));
  check_ids(ids, vocab);
  if (n == 0 || dim == 0) return;

  Tensor keys = Tensor::empty({n}, DType::I32, Device::CUDA);
  Tensor sorted_keys = Tensor::empty({n}, DType::I32, Device::CUDA);
  Tensor positions = Tensor::empty({n}, DType::I32, Device::CUDA);
  Tensor sorted_positions = Tensor::empty({n}, DType::I32, Device::CUDA);
  auto* keys_in = static_cast<uint32_t*>(keys.raw());
  auto* keys_out = static_cast<uint32_t*>(sorted_keys.raw());
  const unsigned blocks = unsigned(std::min<int64_t>(blocks_for(n, kThreads), 1024));
  make_sort_pairs_kernel<<<blocks, kThreads, 0, stream()>>>(ptr<int64_t>(ids), n, keys_in,
                                                            ptr<int32_t>(positions));
  NH_CUDA_CHECK_LAUNCH();

  const int bits = key_bits(vocab);
  size_t temp_bytes = 0;
  NH_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, temp_bytes, keys_in, keys_out, ptr<int32_t>(positions),
      ptr<int32_t>(sorted_positions), int(n), 0, bits, stream()));
  Tensor temp = Tensor::empty({int64_t(temp_bytes)}, DType::U8, Device::CUDA);
  NH_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      temp.raw(), temp_bytes, keys_in, keys_out, ptr<int32_t>(positions),
      ptr<int32_t>(sorted_positions), int(n), 0, bits, stream()));

  with_gpu_float_type(dweight.dtype(), [&](auto zero) {
    using T = decltype(zero);
    add_id_segments_kernel<T><<<row_grid(n, dim), kThreads, 0, stream()>>>(
        keys_out, ptr<int32_t>(sorted_positions), ptr<T>(dout), ptr<T>(dweight), n, dim);
    NH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace nh::cuda
