// Row-major matrix product on the CPU through BLAS (OpenBLAS), for float and
// double: C = alpha * op(A) · op(B) + beta * C, op(X) = X or Xᵀ.
// A is [M, K] (or [K, M] when trans_a), B is [K, N] (or [N, K] when trans_b),
// C is [M, N]; lda/ldb/ldc are the row strides.
#pragma once

#include <cstdint>

namespace nh::cpu {

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// The common case of a linear layer: y[M, N] (+)= x[M, K] · w[N, K]ᵀ.
template <class T>
void linear_forward(const T* x, const T* w, const T* bias, T* y, int64_t m, int64_t n, int64_t k);
// dx[M, K] (+)= dy · w; dw[N, K] += dyᵀ · x; dbias[N] += Σ_rows dy. Null outputs are skipped.
// dx is overwritten unless accumulate_dx.
template <class T>
void linear_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* dbias, int64_t m,
                     int64_t n, int64_t k, bool accumulate_dx = false);

}  // namespace nh::cpu
