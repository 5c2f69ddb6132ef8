#include "ops/mamba_dt.h"

#include <gtest/gtest.h>

#include <cmath>

#include "support/gradcheck.h"

namespace nh {

using test::dot;
using test::expect_grad_close;
using test::random_tensor;

TEST(MambaDt, ForwardIsClampedSoftplusLikeTorch) {
  Tensor raw = random_tensor({5, 3}, 1, 3.0);
  raw.data<double>()[0] = 25.0;  // above torch's softplus threshold: identity
  Tensor bias = random_tensor({3}, 2);
  Tensor dt = Tensor::empty({5, 3}, DType::F64);
  mamba_dt_forward(raw, bias, 0.05, 2.0, dt);
  for (int64_t i = 0; i < 15; ++i) {
    const double v = raw.data<double>()[i] + bias.data<double>()[i % 3];
    const double sp = v > 20 ? v : std::log(1 + std::exp(v));
    EXPECT_DOUBLE_EQ(dt.data<double>()[i], std::min(std::max(sp, 0.05), 2.0));
  }
}

TEST(MambaDt, GradientsMatchFiniteDifferencesOutsideTheClampEdges) {
  Tensor raw = random_tensor({6, 4}, 3, 1.5), bias = random_tensor({4}, 4);
  Tensor r = random_tensor({6, 4}, 5);
  const double lo = 0.1, hi = 1.5;
  auto loss = [&] {
    Tensor dt = Tensor::empty({6, 4}, DType::F64);
    mamba_dt_forward(raw, bias, lo, hi, dt);
    return dot(dt, r);
  };
  Tensor draw = Tensor::empty({6, 4}, DType::F64), dbias = Tensor::zeros({4}, DType::F64);
  mamba_dt_backward(raw, bias, lo, hi, r, draw, dbias);
  expect_grad_close("dt_raw", raw, draw, loss);
  expect_grad_close("dt_bias", bias, dbias, loss);
}

TEST(MambaA, GradientOfMinusExp) {
  Tensor a_log = random_tensor({5}, 6), r = random_tensor({5}, 7);
  Tensor a = Tensor::empty({5}, DType::F64);
  auto loss = [&] {
    mamba_a_forward(a_log, a);
    return dot(a, r);
  };
  loss();
  Tensor da_log = Tensor::zeros({5}, DType::F64);
  mamba_a_backward(a, r, da_log);
  expect_grad_close("A_log", a_log, da_log, loss);
}

}  // namespace nh
