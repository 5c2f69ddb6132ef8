#include "ops/linear.h"

#include "ops/cpu/gemm.h"

namespace nh::cpu {

namespace {
void check_linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  if (w.ndim() != 2 || x.ndim() < 1 || x.size(-1) != w.size(1))
    throw Error("linear", "shapes", "x [..., K] and w [N, K]",
                "x " + shape_str(x.shape()) + ", w " + shape_str(w.shape()));
  if (b.defined()) expect_shape(b, {w.size(0)}, "linear bias");
}
}  // namespace

void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
  check_linear(x, w, b);
  const int64_t k = w.size(1), n = w.size(0), m = x.numel() / k;
  NH_CHECK(y.numel() == m * n, "linear: y has the wrong size");
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    linear_forward<T>(x.data<T>(), w.data<T>(), b.defined() ? b.data<T>() : nullptr, y.data<T>(),
                      m, n, k);
  });
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor& dx, Tensor& dw,
                     Tensor& db) {
  const int64_t k = w.size(1), n = w.size(0), m = x.numel() / k;
  NH_CHECK(dy.numel() == m * n, "linear: dy has the wrong size");
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    linear_backward<T>(x.data<T>(), w.data<T>(), dy.data<T>(),
                       dx.defined() ? dx.data<T>() : nullptr, dw.defined() ? dw.data<T>() : nullptr,
                       db.defined() ? db.data<T>() : nullptr, m, n, k);
  });
}

}  // namespace nh::cpu
