// Shared pieces of the CUDA kernels: error checks that name the file, line and library
// message; the stream ops run on; element types (bf16 storage, fp32 arithmetic); launch sizes.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/error.h"
#include "core/tensor.h"

namespace nh::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t e, const char* what, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t s, const char* what, const char* file, int line);

#define NH_CUDA_CHECK(expr)                                                     \
  do {                                                                          \
    const cudaError_t nh_e = (expr);                                            \
    if (nh_e != cudaSuccess) ::nh::cuda::throw_cuda_error(nh_e, #expr, __FILE__, __LINE__); \
  } while (0)
#define NH_CUBLAS_CHECK(expr)                                                     \
  do {                                                                            \
    const cublasStatus_t nh_s = (expr);                                           \
    if (nh_s != CUBLAS_STATUS_SUCCESS)                                            \
      ::nh::cuda::throw_cublas_error(nh_s, #expr, __FILE__, __LINE__);            \
  } while (0)
// After a kernel launch: a bad configuration shows up here, not at the next sync.
#define NH_CUDA_CHECK_LAUNCH() NH_CUDA_CHECK(cudaGetLastError())

// The stream every op runs on (one per process for now; streams per purpose come later).
inline cudaStream_t stream() { return cudaStreamPerThread; }
// The process's cuBLASLt handle and a workspace for it.
cublasLtHandle_t cublaslt();
void* cublaslt_workspace(size_t& bytes);

using bf16 = __nv_bfloat16;

// Loads and stores between a storage type and fp32 arithmetic.
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16(x); }

// kVec elements moved as one aligned load or store.
template <class T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  static constexpr int kSize = kVec;
  T v[kVec];
};

// Calls f(Pack<T, 16 / sizeof(T)>{}) where `count` (elements a kernel walks in packs) and every
// tensor's base address allow 16-byte packs, and `wide` (a kernel playground switch), else
// f(Pack<T, 1>{}).
template <class T, class F>
void with_pack(int64_t count, std::initializer_list<const Tensor*> tensors, F&& f,
               bool wide = true) {
  constexpr int kVec = 16 / sizeof(T);
  bool vec = wide && count % kVec == 0;
  for (const Tensor* t : tensors) vec = vec && reinterpret_cast<uintptr_t>(t->raw()) % 16 == 0;
  if (vec)
    f(Pack<T, kVec>{});
  else
    f(Pack<T, 1>{});
}

// Calls f(T{}) with T = float or bf16 by dtype (the GPU backend stores F32 or BF16).
template <class F>
void with_gpu_float_type(DType dtype, F&& f) {
  if (dtype == DType::F32)
    f(float{});
  else if (dtype == DType::BF16)
    f(bf16{});
  else
    throw Error("cuda op", "dtype", "F32 or BF16", dtype_name(dtype));
}

// Calls f(T{}, R{}): T the storage type of x, R that of a norm's saved statistics (F32 or T).
template <class F>
void with_norm_types(const Tensor& x, const Tensor& rstd, F&& f) {
  with_gpu_float_type(x.dtype(), [&](auto t) {
    using T = decltype(t);
    if (rstd.dtype() == DType::F32)
      f(T{}, float{});
    else
      f(T{}, T{});
  });
}

template <class T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.raw());
}

// An Error unless t lives on the GPU.
inline void require_cuda(const Tensor& t, const char* op, const char* name) {
  if (t.defined() && t.device() != Device::CUDA)
    throw Error(op, name, "a CUDA tensor", "a CPU tensor");
}

inline unsigned blocks_for(int64_t n, int threads) {
  return unsigned((n + threads - 1) / threads);
}

// Launches kernel<<<grid, threads>>> with `smem` bytes of dynamic shared memory, allowing it
// more than the 48 KB default first.
template <class Kernel, class... Args>
void launch_with_smem(Kernel kernel, dim3 grid, int threads, size_t smem, Args... args) {
  NH_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, threads, smem, stream()>>>(args...);
  NH_CUDA_CHECK_LAUNCH();
}

}  // namespace nh::cuda
