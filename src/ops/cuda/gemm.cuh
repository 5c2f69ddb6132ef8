// Row-major matrix products on the GPU through cuBLASLt, the GPU twin of src/ops/cpu/gemm.h.
//
//   C[m, n] = alpha · op(A) · op(B) + beta · C        op(X) = X, or Xᵀ when trans_x
//
//   A is [m, k] (or [k, m] when trans_a), row stride lda (>= its number of columns)
//   B is [k, n] (or [n, k] when trans_b), row stride ldb
//   C is [m, n], row stride ldc (>= n)
//
// All three matrices are device pointers in `dtype` (F32 or BF16); products accumulate in fp32
// (CUBLAS_COMPUTE_32F, never TF32: F32 results match the CPU reference to summation order),
// alpha and beta are fp32. BF16 C is read (when beta != 0) and written in bf16: a sum over
// several calls rounds at every call, so accumulate long sums in an F32 C instead.
// beta == 0 means C is overwritten and never read (it may hold NaNs). k == 0 gives beta · C;
// m == 0 or n == 0 does nothing. C must not alias A or B.
// Runs on nh::cuda::stream() with the shared cuBLASLt workspace, asynchronously; throws an
// nh::Error for a bad dtype, size, stride or a cuBLAS failure. Descriptors and the heuristic's
// algorithm are cached per (transposes, sizes, strides, dtype, pointer alignments); any
// alignment works (bf16 slices at odd offsets too), 16-byte-aligned pointers and strides
// get the fast kernels. Not for concurrent use from several host threads (one workspace).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace nh::cuda {

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a,
          int64_t lda, const void* b, int64_t ldb, float beta, void* c, int64_t ldc, DType dtype);

// `batch` independent products of the shape above: matrix i of A starts at a + i·stride_a
// elements (likewise B and C). A stride may be 0 to reuse one matrix for every product
// (not for C).
void gemm_strided_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                          const void* a, int64_t lda, int64_t stride_a, const void* b, int64_t ldb,
                          int64_t stride_b, float beta, void* c, int64_t ldc, int64_t stride_c,
                          int64_t batch, DType dtype);

}  // namespace nh::cuda
