#include "ops/rmsnorm.h"

#include <gtest/gtest.h>

#include <cmath>

#include "support/gradcheck.h"

namespace nh {
namespace {

using test::dot;
using test::expect_grad_close;
using test::random_tensor;

constexpr double kEps = 1e-5;

TEST(RmsNorm, ForwardMatchesDoubleLoop) {
  const int64_t rows = 2 * 3, dim = 13;
  Tensor x = random_tensor({2, 3, dim}, 1, 2.0), w = random_tensor({dim}, 2, 0.5, DType::F64, 1.0);
  Tensor y = Tensor::empty({2, 3, dim}, DType::F64), rstd = Tensor::empty({rows}, DType::F64);
  rmsnorm_forward(x, w, kEps, y, rstd);
  const double* xp = x.data<double>();
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t d = 0; d < dim; ++d) ss += xp[r * dim + d] * xp[r * dim + d];
    const double rs = 1 / std::sqrt(ss / dim + kEps);
    EXPECT_NEAR(rstd.data<double>()[r], rs, 1e-12 * rs);
    for (int64_t d = 0; d < dim; ++d)
      EXPECT_NEAR(y.data<double>()[r * dim + d], w.data<double>()[d] * xp[r * dim + d] * rs, 1e-12);
  }
}

// The residual add then the norm: x becomes x + delta and y the norm of that, against a loop.
TEST(RmsNorm, AddThenNormUpdatesXAndNormalisesTheSum) {
  const int64_t rows = 5, dim = 11;
  const Tensor x0 = random_tensor({rows, dim}, 21, 2.0), delta = random_tensor({rows, dim}, 22);
  const Tensor w = random_tensor({dim}, 23, 0.5, DType::F64, 1.0);
  Tensor x = x0.clone(), y = Tensor::empty({rows, dim}, DType::F64),
         rstd = Tensor::empty({rows}, DType::F64);
  add_rmsnorm_forward(x, delta, w, kEps, y, rstd);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t d = 0; d < dim; ++d) {
      const int64_t i = r * dim + d;
      const double v = x0.data<double>()[i] + delta.data<double>()[i];
      EXPECT_EQ(x.data<double>()[i], v);
      ss += v * v;
    }
    const double rs = 1 / std::sqrt(ss / dim + kEps);
    for (int64_t d = 0; d < dim; ++d)
      EXPECT_NEAR(y.data<double>()[r * dim + d], w.data<double>()[d] * x.data<double>()[r * dim + d] * rs,
                  1e-12);
  }
  EXPECT_THROW(add_rmsnorm_forward(x, random_tensor({rows, dim + 1}, 24), w, kEps, y, rstd), Error);
}

// SPEC §1: in fp32 the normalised x·rstd is rounded to fp32 before the multiply by w, so the
// result is exactly w ⊙ fl(x·rstd) with rstd as returned.
TEST(RmsNorm, FloatForwardRoundsBeforeTheWeightAndMatchesDouble) {
  const int64_t rows = 5, dim = 37;
  Tensor x = random_tensor({rows, dim}, 3), w = random_tensor({dim}, 4, 0.5, DType::F64, 1.0);
  Tensor xf = x.to(DType::F32), wf = w.to(DType::F32);
  Tensor yf = Tensor::empty({rows, dim}, DType::F32), rf = Tensor::empty({rows}, DType::F32);
  Tensor y = Tensor::empty({rows, dim}, DType::F64), r = Tensor::empty({rows}, DType::F64);
  rmsnorm_forward(xf, wf, kEps, yf, rf);
  rmsnorm_forward(x, w, kEps, y, r);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t d = 0; d < dim; ++d) {
      const int64_t k = i * dim + d;
      const float n = xf.data<float>()[k] * rf.data<float>()[i];
      EXPECT_EQ(yf.data<float>()[k], wf.data<float>()[d] * n);
      // fp32 inputs of size O(1): a few ulps relative to the double result.
      EXPECT_NEAR(yf.data<float>()[k], y.data<double>()[k],
                  1e-5 * (1 + std::fabs(y.data<double>()[k])));
    }
}

TEST(RmsNorm, BackwardMatchesNumericGradientOverwritesDxAccumulatesDw) {
  const int64_t dim = 11;
  Tensor x = random_tensor({3, 4, dim}, 5), w = random_tensor({dim}, 6, 0.5, DType::F64, 1.0);
  Tensor r = random_tensor({3, 4, dim}, 7);
  Tensor y = Tensor::empty({3, 4, dim}, DType::F64), rstd = Tensor::empty({3, 4}, DType::F64);
  auto loss = [&] {
    rmsnorm_forward(x, w, kEps, y, rstd);
    return dot(y, r);
  };
  loss();
  Tensor dx = random_tensor({3, 4, dim}, 8);  // garbage the backward must overwrite
  Tensor dw0 = random_tensor({dim}, 9);
  Tensor dw = dw0.clone();
  rmsnorm_backward(x, w, rstd, r, dx, dw);
  for (int64_t i = 0; i < dim; ++i) dw.data<double>()[i] -= dw0.data<double>()[i];
  expect_grad_close("dx", x, dx, loss);
  expect_grad_close("dw", w, dw, loss);
}

// More than 64 channels: the dw sum runs over column blocks, the last one partial.
TEST(RmsNorm, BackwardMatchesNumericGradientWithWideRows) {
  const int64_t dim = 67;
  Tensor x = random_tensor({3, dim}, 10), w = random_tensor({dim}, 11, 0.5, DType::F64, 1.0);
  Tensor r = random_tensor({3, dim}, 12);
  Tensor y = Tensor::empty({3, dim}, DType::F64), rstd = Tensor::empty({3}, DType::F64);
  auto loss = [&] {
    rmsnorm_forward(x, w, kEps, y, rstd);
    return dot(y, r);
  };
  loss();
  Tensor dx = Tensor::empty({3, dim}, DType::F64), dw = Tensor::zeros({dim}, DType::F64);
  rmsnorm_backward(x, w, rstd, r, dx, dw);
  expect_grad_close("dx", x, dx, loss);
  expect_grad_close("dw", w, dw, loss);
}

TEST(RmsNorm, MismatchedShapesAndDtypesThrow) {
  Tensor x = random_tensor({4, 6}, 13), w = random_tensor({6}, 14);
  Tensor y = Tensor::empty({4, 6}, DType::F64), rstd = Tensor::empty({4}, DType::F64);
  EXPECT_THROW(rmsnorm_forward(x, random_tensor({5}, 15), kEps, y, rstd), Error);
  EXPECT_THROW(rmsnorm_forward(x, w.to(DType::F32), kEps, y, rstd), Error);
  Tensor y_bad = Tensor::empty({4, 5}, DType::F64);
  EXPECT_THROW(rmsnorm_forward(x, w, kEps, y_bad, rstd), Error);
  Tensor rstd_bad = Tensor::empty({3}, DType::F64);
  EXPECT_THROW(rmsnorm_forward(x, w, kEps, y, rstd_bad), Error);
  Tensor dx = Tensor::empty({4, 6}, DType::F64), dw_bad = Tensor::zeros({7}, DType::F64);
  rmsnorm_forward(x, w, kEps, y, rstd);
  EXPECT_THROW(rmsnorm_backward(x, w, rstd, y, dx, dw_bad), Error);
  Tensor dw = Tensor::zeros({6}, DType::F64);
  EXPECT_THROW(rmsnorm_backward(x, w, rstd, random_tensor({4, 7}, 16), dx, dw), Error);
}

}  // namespace
}  // namespace nh
