#include "ops/cpu/gemm.h"

#include <cblas.h>

namespace nh::cpu {

namespace {
CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }
}  // namespace

template <>
void gemm<float>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, tr(ta), tr(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <>
void gemm<double>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                  int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_dgemm(CblasRowMajor, tr(ta), tr(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <class T>
void linear_forward(const T* x, const T* w, const T* bias, T* y, int64_t m, int64_t n, int64_t k) {
  if (bias)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) y[i * n + j] = bias[j];
  gemm<T>(false, true, m, n, k, T(1), x, k, w, k, bias ? T(1) : T(0), y, n);
}

template <class T>
void linear_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* dbias, int64_t m,
                     int64_t n, int64_t k, bool accumulate_dx) {
  if (dx) gemm<T>(false, false, m, k, n, T(1), dy, n, w, k, accumulate_dx ? T(1) : T(0), dx, k);
  if (dw) gemm<T>(true, false, n, k, m, T(1), dy, n, x, k, T(1), dw, k);
  if (dbias)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) dbias[j] += dy[i * n + j];
}

template void linear_forward<float>(const float*, const float*, const float*, float*, int64_t,
                                    int64_t, int64_t);
template void linear_forward<double>(const double*, const double*, const double*, double*, int64_t,
                                     int64_t, int64_t);
template void linear_backward<float>(const float*, const float*, const float*, float*, float*,
                                     float*, int64_t, int64_t, int64_t, bool);
template void linear_backward<double>(const double*, const double*, const double*, double*, double*,
                                      double*, int64_t, int64_t, int64_t, bool);

}  // namespace nh::cpu
