#include "ops/activations.h"

#include <cmath>
#include <string>
#include "ops/cpu/parallel.h"

namespace nh::cpu {

namespace {

void check_like(const Tensor& t, const Tensor& x, const char* op, const char* what) {
  if (t.shape() != x.shape())
    throw Error(op, std::string(what) + " shape", shape_str(x.shape()), shape_str(t.shape()));
  if (t.dtype() != x.dtype())
    throw Error(op, std::string(what) + " dtype", dtype_name(x.dtype()), dtype_name(t.dtype()));
}

// y[i] = f(x[i]) over all elements, in T = the dtype of x.
template <class F>
void unary(const char* op, const Tensor& x, Tensor& y, F f) {
  check_like(y, x, op, "y");
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.data<T>();
    T* yp = y.data<T>();
    const int64_t n = x.numel();
#pragma omp parallel for if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) yp[i] = f(xp[i]);
  });
}

// dx[i] = f(x[i], dy[i]) over all elements, in T = the dtype of x.
template <class F>
void binary(const char* op, const Tensor& x, const Tensor& dy, Tensor& dx, F f) {
  check_like(dy, x, op, "dy");
  check_like(dx, x, op, "dx");
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* xp = x.data<T>();
    const T* gp = dy.data<T>();
    T* dxp = dx.data<T>();
    const int64_t n = x.numel();
#pragma omp parallel for if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) dxp[i] = f(xp[i], gp[i]);
  });
}

template <class T>
T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

}  // namespace

// SPEC §4: the MLP's squared ReLU.
void relu2_forward(const Tensor& x, Tensor& y) {
  unary("relu2", x, y, [](auto v) { return v > 0 ? v * v : decltype(v)(0); });
}

void relu2_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  binary("relu2", x, dy, dx, [](auto v, auto g) { return v > 0 ? 2 * v * g : decltype(v)(0); });
}

void silu_forward(const Tensor& x, Tensor& y) {
  unary("silu", x, y, [](auto v) { return v * sigmoid(v); });
}

void silu_backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  binary("silu", x, dy, dx, [](auto v, auto g) {
    const auto s = sigmoid(v);
    return g * s * (1 + v * (1 - s));
  });
}

}  // namespace nh::cpu
