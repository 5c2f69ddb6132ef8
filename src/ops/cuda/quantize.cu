// NF4 and Int8 quantisation on the GPU (the contract is in ops/quantize.h), byte for byte and
// value for value what the CPU backend computes: every fp32 step is an explicitly rounded
// intrinsic (nvcc would otherwise fuse a product and a sum into an fma), maxima are exact in any
// order, and the mean of the absmax values is summed in double in the CPU's order.
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/cuda/reduce.cuh"
#include "ops/quantize.h"

namespace nh::cuda {

namespace {

using quant::CodeBook;

constexpr int kThreads = 256;

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float load(__half x) { return __half2float(x); }
__device__ __forceinline__ float load(double x) { return __double2float_rn(x); }
__device__ __forceinline__ void store(float& d, float v) { d = v; }
__device__ __forceinline__ void store(bf16& d, float v) { d = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store(__half& d, float v) { d = __float2half_rn(v); }
__device__ __forceinline__ void store(double& d, float v) { d = v; }

// Calls f(T{}) with T the storage type of any float dtype.
template <class F>
void with_any_float_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32:
      f(float{});
      return;
    case DType::BF16:
      f(bf16{});
      return;
    case DType::F16:
      f(__half{});
      return;
    case DType::F64:
      f(double{});
      return;
    default:
      throw Error("quantize", "dtype", "F64, F32, F16 or BF16", dtype_name(dtype));
  }
}

// The index of the code nearest s: the number of midpoints below s (ties to the lower code), the
// count the CPU's std::lower_bound gives.
template <int N>
__device__ int code_of(const CodeBook<N>& book, float s) {
  int lo = 0, hi = N - 1;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (book.mid[mid] < s)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// One block of blockwise quantisation, from its max |x| m: the stored absmax and how its values
// are scaled into [-1, 1] (ops/quantize.h).
struct BlockScale {
  float absmax, inv;
  bool partial;

  __device__ BlockScale(float m, bool partial_block) : partial(partial_block) {
    absmax = partial ? fmaxf(m, quant::kMinAbsmax) : m;
    inv = __fdiv_rn(1.f, fmaxf(m, quant::kMinAbsmax));
  }
  __device__ float scaled(float x) const {
    return partial ? __fdiv_rn(x, absmax) : __fmul_rn(x, inv);
  }
};

// One warp per NF4 block of 64, each lane a pair of elements (one byte); past the end, zeros.
template <class T>
__global__ void nf4_quantize_kernel(const T* x, int64_t n, CodeBook<16> book, uint8_t* data,
                                    float* absmax) {
  const int64_t block = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t begin = block * quant::kNf4Block, i = begin + 2 * (threadIdx.x % 32);
  if (begin >= n) return;  // the whole warp
  const float a = i < n ? load(x[i]) : 0.f, b = i + 1 < n ? load(x[i + 1]) : 0.f;
  float m = fmaxf(fabsf(a), fabsf(b));
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  const BlockScale scale(m, n - begin < quant::kNf4Block);
  if (threadIdx.x % 32 == 0) absmax[block] = scale.absmax;
  if (i < n)
    data[i / 2] = uint8_t(code_of(book, scale.scaled(a)) << 4 | code_of(book, scale.scaled(b)));
}

// partial[g] = the double sum, in order, of absmax over block g of 256 (the CPU's order).
__global__ void absmax_sums_kernel(const float* absmax, int64_t n, double* partial) {
  const int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t begin = g * quant::kAbsmaxBlock;
  if (begin >= n) return;
  double s = 0;
  for (int64_t i = begin; i < min(n, begin + quant::kAbsmaxBlock); ++i) s += absmax[i];
  partial[g] = s;
}

// One thread block per block of 256 absmax values: a = absmax − offset, the block's max |a| and
// each a's index in the dynamic map.
__global__ void absmax_quantize_kernel(const float* absmax, int64_t n, float offset,
                                       CodeBook<256> book, uint8_t* codes, float* absmax2) {
  const int64_t begin = blockIdx.x * quant::kAbsmaxBlock, i = begin + threadIdx.x;
  const float a = i < n ? __fsub_rn(absmax[i], offset) : 0.f;
  const BlockScale scale(block_max(fabsf(a)), n - begin < quant::kAbsmaxBlock);
  if (threadIdx.x == 0) absmax2[blockIdx.x] = scale.absmax;
  if (i < n) codes[i] = uint8_t(code_of(book, scale.scaled(a)));
}

// One thread block per row: the row absmax, q = round-half-even(x · fl(127 / absmax)).
template <class T>
__global__ void int8_quantize_kernel(const T* x, int64_t cols, uint8_t* data, float* row_scale) {
  const T* xr = x + blockIdx.x * cols;
  uint8_t* qr = data + blockIdx.x * cols;
  float m = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, fabsf(load(xr[c])));
  m = block_max(m);
  const float scale = m > 0.f ? fminf(__fdiv_rn(127.f, m), FLT_MAX) : 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    qr[c] = uint8_t(int8_t(__float2int_rn(__fmul_rn(load(xr[c]), scale))));
  if (threadIdx.x == 0) row_scale[blockIdx.x] = __fdiv_rn(m, 127.f);
}

// One thread per byte: A = fl(fl(dynamic[code] · absmax2) + offset), w = fl(nf4[nibble] · A).
template <class T>
__global__ void nf4_dequantize_kernel(const uint8_t* data, const uint8_t* codes,
                                      const float* absmax2, float offset, int64_t n,
                                      CodeBook<16> nf4, CodeBook<256> dynamic, T* out) {
  const int64_t i = 2 * (blockIdx.x * int64_t(blockDim.x) + threadIdx.x);
  if (i >= n) return;
  const int64_t b = i / quant::kNf4Block;
  const float absmax =
      __fadd_rn(__fmul_rn(dynamic.value[codes[b]], absmax2[b / quant::kAbsmaxBlock]), offset);
  const uint8_t byte = data[i / 2];
  store(out[i], __fmul_rn(nf4.value[byte >> 4], absmax));
  if (i + 1 < n) store(out[i + 1], __fmul_rn(nf4.value[byte & 15], absmax));
}

template <class T>
__global__ void int8_dequantize_kernel(const uint8_t* data, const float* row_scale, int64_t n,
                                       int64_t cols, T* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) store(out[i], __fmul_rn(float(int8_t(data[i])), row_scale[i / cols]));
}

template <class T>
void quantize_nf4(const T* x, QuantizedTensor& q) {
  const int64_t n = shape_numel(q.shape), blocks = (n + quant::kNf4Block - 1) / quant::kNf4Block;
  const int64_t groups = (blocks + quant::kAbsmaxBlock - 1) / quant::kAbsmaxBlock;
  q.data = Tensor::empty({(n + 1) / 2}, DType::U8, Device::CUDA);
  q.absmax_q = Tensor::empty({blocks}, DType::U8, Device::CUDA);
  q.absmax2 = Tensor::empty({groups}, DType::F32, Device::CUDA);
  const Tensor absmax = Tensor::empty({blocks}, DType::F32, Device::CUDA);
  nf4_quantize_kernel<T><<<blocks_for(blocks * 32, kThreads), kThreads, 0, stream()>>>(
      x, n, quant::nf4_code_book(), ptr<uint8_t>(q.data), ptr<float>(absmax));
  NH_CUDA_CHECK_LAUNCH();
  const Tensor partial = Tensor::empty({groups}, DType::F64, Device::CUDA);
  absmax_sums_kernel<<<blocks_for(groups, kThreads), kThreads, 0, stream()>>>(
      ptr<float>(absmax), blocks, ptr<double>(partial));
  NH_CUDA_CHECK_LAUNCH();
  const Tensor sums = partial.to(Device::CPU);
  double total = 0;
  for (int64_t g = 0; g < groups; ++g) total += sums.data<double>()[g];
  q.offset = float(total / double(blocks));
  absmax_quantize_kernel<<<unsigned(groups), unsigned(quant::kAbsmaxBlock), 0, stream()>>>(
      ptr<float>(absmax), blocks, q.offset, quant::dynamic_code_book(), ptr<uint8_t>(q.absmax_q),
      ptr<float>(q.absmax2));
  NH_CUDA_CHECK_LAUNCH();
}

template <class T>
void quantize_int8(const T* x, QuantizedTensor& q) {
  const int64_t n = shape_numel(q.shape), cols = q.shape.back(), rows = n / cols;
  if (rows > INT_MAX) throw Error("quantize", "rows", "at most 2^31 - 1", std::to_string(rows));
  q.data = Tensor::empty({n}, DType::U8, Device::CUDA);
  q.row_scale = Tensor::empty({rows}, DType::F32, Device::CUDA);
  const int threads = int(std::min<int64_t>(kThreads, (cols + 31) / 32 * 32));
  int8_quantize_kernel<T><<<unsigned(rows), threads, 0, stream()>>>(x, cols, ptr<uint8_t>(q.data),
                                                                    ptr<float>(q.row_scale));
  NH_CUDA_CHECK_LAUNCH();
}

}  // namespace

QuantizedTensor quantize(const Tensor& w, QuantKind kind) {
  quant::check_input(w);
  require_cuda(w, "quantize", "w");
  QuantizedTensor q;
  q.kind = kind;
  q.shape = w.shape();
  with_any_float_type(w.dtype(), [&](auto t) {
    using T = decltype(t);
    if (kind == QuantKind::NF4)
      quantize_nf4(ptr<T>(w), q);
    else
      quantize_int8(ptr<T>(w), q);
  });
  return q;
}

void dequantize(const QuantizedTensor& q, Tensor& out) {
  quant::check_quantized(q, out);
  require_cuda(q.data, "dequantize", "q.data");
  const int64_t n = out.numel();
  with_any_float_type(out.dtype(), [&](auto t) {
    using T = decltype(t);
    if (q.kind == QuantKind::NF4)
      nf4_dequantize_kernel<T><<<blocks_for((n + 1) / 2, kThreads), kThreads, 0, stream()>>>(
          ptr<uint8_t>(q.data), ptr<uint8_t>(q.absmax_q), ptr<float>(q.absmax2), q.offset, n,
          quant::nf4_code_book(), quant::dynamic_code_book(), ptr<T>(out));
    else
      int8_dequantize_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
          ptr<uint8_t>(q.data), ptr<float>(q.row_scale), n, q.shape.back(), ptr<T>(out));
    NH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace nh::cuda
