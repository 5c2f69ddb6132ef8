#include "ops/activations.h"

#include <gtest/gtest.h>

#include <cmath>

#include "support/gradcheck.h"

namespace nh {
namespace {

using test::dot;
using test::expect_grad_close;
using test::random_tensor;

TEST(Relu2, ForwardMatchesDoubleLoop) {
  Tensor x = random_tensor({3, 7, 5}, 1, 2.0), y = Tensor::empty({3, 7, 5}, DType::F64);
  relu2_forward(x, y);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double v = x.data<double>()[i];
    EXPECT_EQ(y.data<double>()[i], v > 0 ? v * v : 0.0);
  }
}

TEST(Relu2, BackwardMatchesNumericGradient) {
  Tensor x = random_tensor({4, 9}, 2, 2.0), r = random_tensor({4, 9}, 3);
  Tensor y = Tensor::empty({4, 9}, DType::F64);
  auto loss = [&] {
    relu2_forward(x, y);
    return dot(y, r);
  };
  Tensor dx = random_tensor({4, 9}, 4);  // overwritten
  relu2_backward(x, r, dx);
  expect_grad_close("dx", x, dx, loss);
}

TEST(Silu, ForwardMatchesDoubleLoop) {
  Tensor x = random_tensor({2, 13}, 5, 3.0), y = Tensor::empty({2, 13}, DType::F64);
  silu_forward(x, y);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double v = x.data<double>()[i];
    EXPECT_NEAR(y.data<double>()[i], v / (1 + std::exp(-v)), 1e-15 * (1 + std::fabs(v)));
  }
}

TEST(Silu, BackwardMatchesNumericGradient) {
  Tensor x = random_tensor({5, 7}, 6, 3.0), r = random_tensor({5, 7}, 7);
  Tensor y = Tensor::empty({5, 7}, DType::F64);
  auto loss = [&] {
    silu_forward(x, y);
    return dot(y, r);
  };
  Tensor dx = random_tensor({5, 7}, 8);  // overwritten
  silu_backward(x, r, dx);
  expect_grad_close("dx", x, dx, loss);
}

TEST(Activations, FloatMatchesDoubleWithinFp32Precision) {
  Tensor x = random_tensor({3, 11}, 9, 3.0), dy = random_tensor({3, 11}, 10);
  Tensor xf = x.to(DType::F32), dyf = dy.to(DType::F32);
  Tensor y = Tensor::empty({3, 11}, DType::F64), yf = Tensor::empty({3, 11}, DType::F32);
  // Each result is a handful of fp32 operations on O(1..10) values: 1e-5 relative is ample.
  auto expect_close = [&](const char* what) {
    for (int64_t i = 0; i < y.numel(); ++i) {
      const double want = y.data<double>()[i];
      EXPECT_NEAR(yf.data<float>()[i], want, 1e-5 * (1 + std::fabs(want))) << what << " " << i;
    }
  };
  relu2_forward(x, y);
  relu2_forward(xf, yf);
  expect_close("relu2");
  relu2_backward(x, dy, y);
  relu2_backward(xf, dyf, yf);
  expect_close("relu2 backward");
  silu_forward(x, y);
  silu_forward(xf, yf);
  expect_close("silu");
  silu_backward(x, dy, y);
  silu_backward(xf, dyf, yf);
  expect_close("silu backward");
}

// exp(-x) overflows for very negative x; the result must still be the limit, not NaN.
TEST(Silu, LargeInputsGiveTheLimitsInFloat) {
  Tensor x = Tensor::from(std::vector<float>{-1000.f, -100.f, 100.f, 1000.f}, {4});
  Tensor dy = Tensor::from(std::vector<float>{1.5f, -0.5f, 2.f, 0.25f}, {4});
  Tensor y = Tensor::empty({4}, DType::F32), dx = Tensor::empty({4}, DType::F32);
  silu_forward(x, y);
  silu_backward(x, dy, dx);
  const float want_y[] = {0.f, 0.f, 100.f, 1000.f}, want_dx[] = {0.f, 0.f, 2.f, 0.25f};
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(y.data<float>()[i], want_y[i], 1e-6f * (1 + std::fabs(want_y[i])));
    EXPECT_NEAR(dx.data<float>()[i], want_dx[i], 1e-6f);
  }
}

TEST(Activations, MismatchedShapesAndDtypesThrow) {
  Tensor x = random_tensor({2, 3}, 11);
  Tensor y_bad = Tensor::empty({3, 2}, DType::F64), y_f32 = Tensor::empty({2, 3}, DType::F32);
  Tensor dy_bad = random_tensor({6}, 12), dx = Tensor::empty({2, 3}, DType::F64);
  EXPECT_THROW(relu2_forward(x, y_bad), Error);
  EXPECT_THROW(silu_forward(x, y_f32), Error);
  EXPECT_THROW(relu2_backward(x, dy_bad, dx), Error);
  EXPECT_THROW(silu_backward(x, x, y_bad), Error);
}

}  // namespace
}  // namespace nh
