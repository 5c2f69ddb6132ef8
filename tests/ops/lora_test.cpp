#include "ops/lora.h"

#include <gtest/gtest.h>

#include "ops/dropout.h"
#include "support/gradcheck.h"

namespace nh {
namespace {

using test::dot;
using test::expect_grad_close;
using test::random_tensor;

// y + s · Σ_j (Σ_k drop(x)[m, k] a[j, k]) b[n, j], in double with the mask drawn element by
// element.
Tensor lora_loop(const Tensor& x, const Tensor& a, const Tensor& b, const LoraPath& path,
                 const Tensor& y) {
  const int64_t k = a.size(1), r = a.size(0), n = b.size(0), m = x.numel() / k;
  Tensor out = y.clone();
  for (int64_t i = 0; i < m; ++i)
    for (int64_t o = 0; o < n; ++o) {
      double sum = 0;
      for (int64_t j = 0; j < r; ++j) {
        double xa = 0;
        for (int64_t l = 0; l < k; ++l) {
          const int64_t idx = i * k + l;
          const double keep = path.dropout == 0 ? 1.0
                              : dropout_keep(path.seed, idx, float(path.dropout))
                                  ? 1.0 / (1.0 - path.dropout)
                                  : 0.0;
          xa += read_float(x, idx) * keep * read_float(a, j * k + l);
        }
        sum += xa * read_float(b, o * r + j);
      }
      out.data<double>()[i * n + o] += path.scale * sum;
    }
  return out;
}

class LoraOp : public ::testing::TestWithParam<double> {};

TEST_P(LoraOp, ForwardAddsTheLowRankPathToY) {
  const LoraPath path{2.5, GetParam(), 77};
  Tensor x = random_tensor({2, 3, 7}, 1), a = random_tensor({3, 7}, 2),
         b = random_tensor({5, 3}, 3);
  Tensor y = random_tensor({2, 3, 5}, 4);
  const Tensor want = lora_loop(x, a, b, path, y);
  lora_forward(x, a, b, path, y);
  for (int64_t i = 0; i < y.numel(); ++i)
    EXPECT_NEAR(y.data<double>()[i], want.data<double>()[i], 1e-12) << i;
}

TEST_P(LoraOp, BackwardMatchesNumericGradientsAndAccumulates) {
  const LoraPath path{0.75, GetParam(), 91};
  Tensor x = random_tensor({4, 6}, 5), a = random_tensor({2, 6}, 6), b = random_tensor({3, 2}, 7);
  Tensor r = random_tensor({4, 3}, 8), y0 = random_tensor({4, 3}, 9);
  auto loss = [&] {
    Tensor y = y0.clone();
    lora_forward(x, a, b, path, y);
    return dot(y, r);
  };
  Tensor dx0 = random_tensor({4, 6}, 10), da0 = random_tensor({2, 6}, 11),
         db0 = random_tensor({3, 2}, 12);
  Tensor dx = dx0.clone(), da = da0.clone(), db = db0.clone();
  lora_backward(x, a, b, path, r, dx, da, db);
  for (auto [g, g0] : {std::pair{&dx, &dx0}, std::pair{&da, &da0}, std::pair{&db, &db0}})
    for (int64_t i = 0; i < g->numel(); ++i) g->data<double>()[i] -= g0->data<double>()[i];
  expect_grad_close("dx", x, dx, loss);
  expect_grad_close("da", a, da, loss);
  expect_grad_close("db", b, db, loss);
  // Without dx the adapter's gradients are the same.
  Tensor da2 = Tensor::zeros(a.shape(), DType::F64), db2 = Tensor::zeros(b.shape(), DType::F64),
         none;
  lora_backward(x, a, b, path, r, none, da2, db2);
  for (int64_t i = 0; i < da.numel(); ++i)
    EXPECT_NEAR(da2.data<double>()[i], da.data<double>()[i], 1e-12);
  for (int64_t i = 0; i < db.numel(); ++i)
    EXPECT_NEAR(db2.data<double>()[i], db.data<double>()[i], 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Dropout, LoraOp, ::testing::Values(0.0, 0.3));

TEST(LoraOp, FloatMatchesDouble) {
  const LoraPath path{0.5, 0.1, 3};
  Tensor x = random_tensor({9, 16}, 13), a = random_tensor({4, 16}, 14),
         b = random_tensor({8, 4}, 15);
  Tensor y = random_tensor({9, 8}, 16), yf = y.to(DType::F32);
  lora_forward(x, a, b, path, y);
  lora_forward(x.to(DType::F32), a.to(DType::F32), b.to(DType::F32), path, yf);
  for (int64_t i = 0; i < y.numel(); ++i)
    EXPECT_NEAR(yf.data<float>()[i], y.data<double>()[i], 1e-4);
}

TEST(LoraOp, MismatchedShapesThrow) {
  Tensor x = random_tensor({3, 7}, 17), a = random_tensor({2, 7}, 18),
         b = random_tensor({4, 2}, 19);
  Tensor y = Tensor::empty({3, 4}, DType::F64);
  const LoraPath path;
  Tensor a_bad = random_tensor({2, 6}, 20), b_bad = random_tensor({4, 3}, 21);
  Tensor y_bad = Tensor::empty({3, 5}, DType::F64), y_f32 = Tensor::empty({3, 4}, DType::F32);
  EXPECT_THROW(lora_forward(x, a_bad, b, path, y), Error);
  EXPECT_THROW(lora_forward(x, a, b_bad, path, y), Error);
  EXPECT_THROW(lora_forward(x, a, b, path, y_bad), Error);
  EXPECT_THROW(lora_forward(x, a, b, path, y_f32), Error);
}

TEST(Dropout, KeepsAboutOneMinusPScalesAndRepeatsWithTheSeed) {
  const int64_t n = 200000;
  Tensor x = random_tensor({n}, 22).to(DType::F32);
  Tensor y = Tensor::empty({n}, DType::F32), again = Tensor::empty({n}, DType::F32),
         other = Tensor::empty({n}, DType::F32);
  dropout_forward(x, 0.25, 5, y);
  dropout_forward(x, 0.25, 5, again);
  dropout_forward(x, 0.25, 6, other);
  int64_t kept = 0, same_as_other = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = y.data<float>()[i];
    ASSERT_EQ(v, again.data<float>()[i]);
    if (v != 0) {
      ++kept;
      EXPECT_FLOAT_EQ(v, x.data<float>()[i] / 0.75f);
    }
    same_as_other += (v != 0) == (other.data<float>()[i] != 0);
  }
  EXPECT_NEAR(double(kept) / n, 0.75, 0.005);
  // Independent masks agree on 0.75² + 0.25² = 62.5 % of the elements.
  EXPECT_NEAR(double(same_as_other) / n, 0.625, 0.005);
  Tensor bad = Tensor::empty({n - 1}, DType::F32);
  EXPECT_THROW(dropout_forward(x, 0.25, 5, bad), Error);
  EXPECT_THROW(dropout_forward(x, 1.0, 5, y), Error);
}

}  // namespace
}  // namespace nh
