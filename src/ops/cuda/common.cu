#include "ops/cuda/common.cuh"

namespace nh::cuda {

void throw_cuda_error(cudaError_t e, const char* what, const char* file, int line) {
  throw Error(std::string(file) + ":" + std::to_string(line) + ": " + what + ": " +
              cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

void throw_cublas_error(cublasStatus_t s, const char* what, const char* file, int line) {
  throw Error(std::string(file) + ":" + std::to_string(line) + ": " + what + ": " +
              cublasGetStatusName(s) + ": " + cublasGetStatusString(s));
}

cublasLtHandle_t cublaslt() {
  static cublasLtHandle_t handle = [] {
    cublasLtHandle_t h;
    NH_CUBLAS_CHECK(cublasLtCreate(&h));
    return h;
  }();
  return handle;
}

void* cublaslt_workspace(size_t& bytes) {
  // 32 MiB, what cuBLASLt's Hopper kernels ask for at most.
  static const size_t kBytes = size_t(32) << 20;
  static void* workspace = [] {
    void* p = nullptr;
    NH_CUDA_CHECK(cudaMalloc(&p, kBytes));
    return p;
  }();
  bytes = kBytes;
  return workspace;
}

}  // namespace nh::cuda
