#include "ops/adamw.h"

#include <gtest/gtest.h>

#include <cmath>

#include "support/gradcheck.h"

namespace nh {

// Two steps against the formula written out in double, with decay and a gradient scale.
TEST(AdamW, TwoStepsMatchTheFormula) {
  Tensor w = test::random_tensor({3, 5}, 1, 1.0, DType::F32);
  Tensor g1 = test::random_tensor({3, 5}, 2, 1.0, DType::F32);
  Tensor g2 = test::random_tensor({3, 5}, 3, 1.0, DType::F32);
  Tensor m = Tensor::zeros({3, 5}, DType::F32), v = Tensor::zeros({3, 5}, DType::F32);
  std::vector<double> ew(15), em(15, 0), ev(15, 0);
  for (int i = 0; i < 15; ++i) ew[i] = w.data<float>()[i];
  AdamWStep s{0.01, 0.9, 0.95, 1e-8, 0.1, 1, 0.5};
  for (int step = 1; step <= 2; ++step) {
    const Tensor& g = step == 1 ? g1 : g2;
    s.step = step;
    adamw_step(w, g, m, v, s);
    for (int i = 0; i < 15; ++i) {
      const double gi = double(g.data<float>()[i]) * 0.5;
      em[i] = 0.9 * em[i] + 0.1 * gi;
      ev[i] = 0.95 * ev[i] + 0.05 * gi * gi;
      const double mh = em[i] / (1 - std::pow(0.9, step)), vh = ev[i] / (1 - std::pow(0.95, step));
      ew[i] -= 0.01 * (mh / (std::sqrt(vh) + 1e-8) + 0.1 * ew[i]);
    }
  }
  for (int i = 0; i < 15; ++i) EXPECT_NEAR(w.data<float>()[i], ew[i], 1e-6);
}

TEST(AdamW, MismatchedShapesThrow) {
  Tensor w = Tensor::zeros({4}, DType::F32), g = Tensor::zeros({5}, DType::F32);
  Tensor m = Tensor::zeros({4}, DType::F32), v = Tensor::zeros({4}, DType::F32);
  EXPECT_THROW(adamw_step(w, g, m, v, AdamWStep{}), Error);
}

TEST(SumsOfSquares, AreTheSquaredNormsOfEachTensor) {
  const Tensor a = test::random_tensor({7, 3}, 4), b = test::random_tensor({5}, 5);
  double want[2] = {0, 0};
  for (int i = 0; i < 21; ++i) want[0] += a.data<double>()[i] * a.data<double>()[i];
  for (int i = 0; i < 5; ++i) want[1] += b.data<double>()[i] * b.data<double>()[i];
  const std::vector<double> got = sums_of_squares({a, b});
  ASSERT_EQ(got.size(), 2u);
  EXPECT_DOUBLE_EQ(got[0], want[0]);
  EXPECT_DOUBLE_EQ(got[1], want[1]);
  EXPECT_TRUE(sums_of_squares({}).empty());
}

}  // namespace nh
