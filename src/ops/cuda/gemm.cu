// Row-major GEMM through cuBLASLt (gemm.cuh). cuBLASLt is column-major, and a row-major
// [r, c] matrix with row stride ld is the column-major [c, r] matrix with leading dimension ld,
// its transpose. So row-major C = op(A)·op(B) is computed as column-major
// Cᵀ[n, m] = op(B)ᵀ·op(A)ᵀ: B's memory is the first operand (transposed when trans_b) and A's
// memory the second (transposed when trans_a), with no copies.
#include <algorithm>
#include <compare>
#include <map>
#include <mutex>
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.cuh"

namespace nh::cuda {

namespace {

// C = beta · C for the k == 0 case (an empty sum), which cuBLASLt does not take. beta == 0
// writes zeros without reading C, as cuBLAS does.
template <class T>
__global__ void scale_matrices_kernel(T* c, int64_t m, int64_t n, int64_t ldc, int64_t stride_c,
                                      int64_t batch, float beta) {
  const int64_t total = batch * m * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = i % n, row = (i / n) % m, mat = i / (m * n);
    T& x = c[mat * stride_c + row * ldc + col];
    x = from_f32<T>(beta == 0.f ? 0.f : beta * to_f32(x));
  }
}

// Everything the descriptors and the chosen algorithm depend on.
struct GemmKey {
  bool trans_a, trans_b;
  int64_t m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c, batch;
  DType dtype;
  // The heuristic only offers algorithms whose vector loads suit these pointer alignments.
  uint32_t align_a = 256, align_b = 256, align_c = 256;
  auto operator<=>(const GemmKey&) const = default;
};

// Descriptors and algorithm for one GemmKey; made once and kept for the process's lifetime
// (a model uses a few dozen shapes).
struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t layout_a = nullptr, layout_b = nullptr, layout_c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

// The largest power of two (at most 256, cuBLASLt's default) that divides the address of
// every matrix of a batch: the first one's address and the byte stride between them.
uint32_t alignment_of(const void* p, int64_t stride, int64_t batch, DType dtype) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  const uint64_t stride_bytes = batch > 1 ? uint64_t(stride) * dtype_size(dtype) : 0;
  uint32_t align = 256;
  while (align > 1 && (address % align != 0 || stride_bytes % align != 0)) align /= 2;
  return align;
}

// A column-major layout of `rows` x `cols` with leading dimension ld, batched.
cublasLtMatrixLayout_t make_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                                   int64_t batch, int64_t stride) {
  cublasLtMatrixLayout_t layout = nullptr;
  NH_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, uint64_t(rows), uint64_t(cols), ld));
  if (batch > 1) {
    const int32_t count = int32_t(batch);
    NH_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                     &count, sizeof(count)));
    NH_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
        layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
  return layout;
}

GemmPlan make_plan(const GemmKey& key, size_t workspace_bytes) {
  const cudaDataType_t type = key.dtype == DType::F32 ? CUDA_R_32F : CUDA_R_16BF;
  GemmPlan plan;
  // CUBLAS_COMPUTE_32F (not ..._FAST_TF32): F32 inputs multiply in full fp32.
  NH_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: B's memory is the first operand, A's the second.
  const cublasOperation_t op_first = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  NH_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first,
                                                 sizeof(op_first)));
  NH_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second,
                                                 sizeof(op_second)));
  // Stored (pre-op) column-major shapes: row-major B [k, n] is column-major [n, k], and so on.
  plan.layout_b = key.trans_b ? make_layout(type, key.k, key.n, key.ldb, key.batch, key.stride_b)
                              : make_layout(type, key.n, key.k, key.ldb, key.batch, key.stride_b);
  plan.layout_a = key.trans_a ? make_layout(type, key.m, key.k, key.lda, key.batch, key.stride_a)
                              : make_layout(type, key.k, key.m, key.lda, key.batch, key.stride_a);
  plan.layout_c = make_layout(type, key.n, key.m, key.ldc, key.batch, key.stride_c);

  cublasLtMatmulPreference_t pref = nullptr;
  NH_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t max_workspace = workspace_bytes;
  NH_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_workspace, sizeof(max_workspace)));
  // The first operand is B's memory, the second A's (see above).
  NH_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align_b, sizeof(key.align_b)));
  NH_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align_a, sizeof(key.align_a)));
  NH_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align_c, sizeof(key.align_c)));
  NH_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align_c, sizeof(key.align_c)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(cublaslt(), plan.desc, plan.layout_b, plan.layout_a,
                                     plan.layout_c, plan.layout_c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  NH_CUBLAS_CHECK(status);
  if (found == 0)
    throw Error("gemm", "cuBLASLt algorithm", "one for this shape",
                "none (m " + std::to_string(key.m) + ", n " + std::to_string(key.n) + ", k " +
                    std::to_string(key.k) + ", " + dtype_name(key.dtype) + ")");
  plan.algo = result.algo;
  return plan;
}

const GemmPlan& plan_for(const GemmKey& key, size_t workspace_bytes) {
  static std::mutex mutex;
  static std::map<GemmKey, GemmPlan> plans;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, make_plan(key, workspace_bytes)).first;
  return it->second;  // std::map never moves its elements
}

void check_ld(const char* name, int64_t ld, int64_t columns) {
  if (ld < columns)
    throw Error("gemm", name, "a row stride >= " + std::to_string(columns), std::to_string(ld));
}

}  // namespace

void gemm_strided_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                          const void* a, int64_t lda, int64_t stride_a, const void* b, int64_t ldb,
                          int64_t stride_b, float beta, void* c, int64_t ldc, int64_t stride_c,
                          int64_t batch, DType dtype) {
  if (dtype != DType::F32 && dtype != DType::BF16)
    throw Error("gemm", "dtype", "F32 or BF16", dtype_name(dtype));
  if (m < 0 || n < 0 || k < 0 || batch < 0)
    throw Error("gemm", "sizes", "m, n, k, batch >= 0",
                std::to_string(m) + ", " + std::to_string(n) + ", " + std::to_string(k) + ", " +
                    std::to_string(batch));
  if (batch > INT32_MAX) throw Error("gemm", "batch", "at most 2^31 - 1", std::to_string(batch));
  if (m == 0 || n == 0 || batch == 0) return;
  check_ld("ldc", ldc, n);
  if (batch > 1 && stride_c < m * ldc)
    throw Error("gemm", "stride_c", "at least m · ldc = " + std::to_string(m * ldc),
                std::to_string(stride_c));
  if (k == 0) {
    const int threads = 256;
    const int64_t total = batch * m * n;
    const unsigned blocks = unsigned(std::min<int64_t>(blocks_for(total, threads), 65535));
    with_gpu_float_type(dtype, [&](auto zero) {
      using T = decltype(zero);
      scale_matrices_kernel<T>
          <<<blocks, threads, 0, stream()>>>(static_cast<T*>(c), m, n, ldc, stride_c, batch, beta);
      NH_CUDA_CHECK_LAUNCH();
    });
    return;
  }
  check_ld("lda", lda, trans_a ? m : k);
  check_ld("ldb", ldb, trans_b ? k : n);

  size_t workspace_bytes = 0;
  void* workspace = cublaslt_workspace(workspace_bytes);
  GemmKey key{trans_a, trans_b, m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c, batch, dtype};
  key.align_a = alignment_of(a, stride_a, batch, dtype);
  key.align_b = alignment_of(b, stride_b, batch, dtype);
  key.align_c = alignment_of(c, stride_c, batch, dtype);
  const GemmPlan& plan = plan_for(key, workspace_bytes);
  NH_CUBLAS_CHECK(cublasLtMatmul(cublaslt(), plan.desc, &alpha, b, plan.layout_b, a, plan.layout_a,
                                 &beta, c, plan.layout_c, c, plan.layout_c, &plan.algo, workspace,
                                 workspace_bytes, stream()));
}

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a,
          int64_t lda, const void* b, int64_t ldb, float beta, void* c, int64_t ldc, DType dtype) {
  gemm_strided_batched(trans_a, trans_b, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1,
                       dtype);
}

}  // namespace nh::cuda
