// Device memory for Tensor: stream-ordered allocation from the device's default pool, on the
// stream the ops run on, so memory freed by one op is reused by the next without a sync.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "core/cuda_memory.h"

namespace nh {

namespace {

std::atomic<int64_t> g_current{0}, g_peak{0};

cudaStream_t ops_stream() { return cudaStreamPerThread; }

void check(cudaError_t e, const char* what, size_t bytes = 0) {
  if (e == cudaSuccess) return;
  std::string msg = std::string("CUDA ") + what + ": " + cudaGetErrorString(e);
  if (e == cudaErrorMemoryAllocation) {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    msg += " (asked for " + std::to_string(bytes >> 20) + " MiB with " +
           std::to_string(g_current.load() >> 20) + " MiB held by tensors, " +
           std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) +
           " MiB; a smaller micro_batch_size or seq_length, or recompute: [all], would help)";
  }
  throw Error(msg);
}

// Keeps freed blocks in the pool instead of returning them to the driver at each sync.
void keep_pool_memory() {
  static const bool done = [] {
    int device = 0;
    cudaMemPool_t pool;
    check(cudaGetDevice(&device), "cudaGetDevice");
    check(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
    uint64_t keep = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
          "cudaMemPoolSetAttribute");
    return true;
  }();
  (void)done;
}

template <class D, class S>
__global__ void convert_kernel(D* dst, const S* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = D(float(src[i]));
}

template <class F>
void with_storage_type(DType dt, F&& f) {
  switch (dt) {
    case DType::F32: f(float{}); return;
    case DType::F16: f(__half{}); return;
    case DType::BF16: f(__nv_bfloat16{}); return;
    default: throw Error("device conversion", "dtype", "F32, F16 or BF16", dtype_name(dt));
  }
}

}  // namespace

bool cuda_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::shared_ptr<void> cuda_allocate(size_t bytes) {
  keep_pool_memory();
  void* p = nullptr;
  check(cudaMallocAsync(&p, bytes, ops_stream()), "cudaMallocAsync", bytes);
  const int64_t now = g_current += int64_t(bytes);
  int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
  return std::shared_ptr<void>(p, [bytes](void* q) {
    g_current -= int64_t(bytes);
    cudaFreeAsync(q, ops_stream());
  });
}

void cuda_memset_zero(void* p, size_t bytes) {
  check(cudaMemsetAsync(p, 0, bytes, ops_stream()), "memset");
}

// Host memory here is pageable (never pinned): cudaMemcpyAsync stages it before returning, so a
// copy to the GPU needs no wait; a copy to the host waits until its bytes have arrived.
void cuda_copy(void* dst, Device dst_device, const void* src, Device, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, ops_stream()), "memcpy");
  if (dst_device == Device::CPU) check(cudaStreamSynchronize(ops_stream()), "memcpy");
}

void cuda_convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, int64_t n) {
  if (n == 0) return;
  const int threads = 256;
  const unsigned blocks = unsigned(std::min<int64_t>((n + threads - 1) / threads, 65535));
  with_storage_type(dst_dtype, [&](auto d) {
    with_storage_type(src_dtype, [&](auto s) {
      using D = decltype(d);
      using S = decltype(s);
      convert_kernel<D, S><<<blocks, threads, 0, ops_stream()>>>(static_cast<D*>(dst),
                                                                 static_cast<const S*>(src), n);
    });
  });
  check(cudaGetLastError(), "convert kernel");
}

void cuda_synchronize() { check(cudaStreamSynchronize(ops_stream()), "synchronize"); }

std::string cuda_device_name() {
  int device = 0;
  cudaDeviceProp prop;
  if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&prop, device) != cudaSuccess)
    return "";
  return prop.name;
}

void cuda_profiler(bool on) {
  cuda_synchronize();
  check(on ? cudaProfilerStart() : cudaProfilerStop(), "profiler range");
}

DeviceMemoryStats device_memory_stats() {
  DeviceMemoryStats s{g_current.load(), g_peak.load(), 0, 0};
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
    s.free = int64_t(free_b);
    s.total = int64_t(total_b);
  }
  return s;
}

void reset_device_memory_peak() { g_peak = g_current.load(); }

}  // namespace nh
