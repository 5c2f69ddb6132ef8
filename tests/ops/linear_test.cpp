#include "ops/linear.h"

#include <gtest/gtest.h>

#include "support/gradcheck.h"

namespace nh {
namespace {

using test::dot;
using test::expect_grad_close;
using test::random_tensor;

// y[m, n] = Σ_k x[m, k] w[n, k] + b[n], in double, x seen as [M, K].
Tensor linear_loop(const Tensor& x, const Tensor& w, const Tensor& b, const Shape& y_shape) {
  const int64_t k = w.size(1), n = w.size(0), m = x.numel() / k;
  Tensor y = Tensor::empty(y_shape, DType::F64);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = b.defined() ? read_float(b, j) : 0.0;
      for (int64_t l = 0; l < k; ++l) s += read_float(x, i * k + l) * read_float(w, j * k + l);
      y.data<double>()[i * n + j] = s;
    }
  return y;
}

TEST(Linear, ForwardMatchesDoubleLoopWithLeadingDimsAndBias) {
  Tensor x = random_tensor({2, 3, 7}, 1), w = random_tensor({5, 7}, 2), b = random_tensor({5}, 3);
  Tensor y = Tensor::empty({2, 3, 5}, DType::F64);
  linear_forward(x, w, b, y);
  Tensor ref = linear_loop(x, w, b, {2, 3, 5});
  for (int64_t i = 0; i < y.numel(); ++i)
    EXPECT_NEAR(y.data<double>()[i], ref.data<double>()[i], 1e-12);
}

TEST(Linear, ForwardWithoutBiasMatchesDoubleLoop) {
  Tensor x = random_tensor({9, 6}, 4), w = random_tensor({3, 6}, 5);
  Tensor y = random_tensor({9, 3}, 6);  // garbage that the forward must overwrite
  linear_forward(x, w, Tensor(), y);
  Tensor ref = linear_loop(x, w, Tensor(), {9, 3});
  for (int64_t i = 0; i < y.numel(); ++i)
    EXPECT_NEAR(y.data<double>()[i], ref.data<double>()[i], 1e-12);
}

TEST(Linear, FloatForwardMatchesDoubleWithinFp32Precision) {
  Tensor x = random_tensor({4, 13}, 7), w = random_tensor({6, 13}, 8), b = random_tensor({6}, 9);
  Tensor y = Tensor::empty({4, 6}, DType::F64), yf = Tensor::empty({4, 6}, DType::F32);
  linear_forward(x, w, b, y);
  linear_forward(x.to(DType::F32), w.to(DType::F32), b.to(DType::F32), yf);
  // 13 products of O(1) terms in fp32: a few ulps of a sum of size ~4.
  for (int64_t i = 0; i < y.numel(); ++i)
    EXPECT_NEAR(yf.data<float>()[i], y.data<double>()[i], 1e-5);
}

TEST(Linear, BackwardMatchesNumericGradientAndAccumulatesDwDb) {
  Tensor x = random_tensor({2, 5, 7}, 10), w = random_tensor({4, 7}, 11),
         b = random_tensor({4}, 12);
  Tensor r = random_tensor({2, 5, 4}, 13);
  Tensor y = Tensor::empty({2, 5, 4}, DType::F64);
  auto loss = [&] {
    linear_forward(x, w, b, y);
    return dot(y, r);
  };
  Tensor dx = random_tensor({2, 5, 7}, 14);  // overwritten
  Tensor dw0 = random_tensor({4, 7}, 15), db0 = random_tensor({4}, 16);
  Tensor dw = dw0.clone(), db = db0.clone();
  linear_backward(x, w, r, dx, dw, db);
  for (int64_t i = 0; i < dw.numel(); ++i) dw.data<double>()[i] -= dw0.data<double>()[i];
  for (int64_t i = 0; i < db.numel(); ++i) db.data<double>()[i] -= db0.data<double>()[i];
  expect_grad_close("dx", x, dx, loss);
  expect_grad_close("dw", w, dw, loss);
  expect_grad_close("db", b, db, loss);
}

TEST(Linear, MismatchedShapesThrow) {
  Tensor x = random_tensor({3, 7}, 17), w = random_tensor({4, 7}, 18);
  Tensor y = Tensor::empty({3, 4}, DType::F64);
  Tensor w_bad = random_tensor({4, 6}, 19), b_bad = random_tensor({5}, 20);
  Tensor y_bad = Tensor::empty({3, 5}, DType::F64), dy_bad = random_tensor({3, 5}, 21);
  Tensor dx = Tensor::empty({3, 7}, DType::F64), dw = Tensor::zeros({4, 7}, DType::F64), db;
  EXPECT_THROW(linear_forward(x, w_bad, Tensor(), y), Error);
  EXPECT_THROW(linear_forward(x, w, b_bad, y), Error);
  EXPECT_THROW(linear_forward(x, w, Tensor(), y_bad), Error);
  EXPECT_THROW(linear_backward(x, w, dy_bad, dx, dw, db), Error);
}

}  // namespace
}  // namespace nh
