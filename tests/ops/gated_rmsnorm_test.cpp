#include "ops/gated_rmsnorm.h"

#include <gtest/gtest.h>

#include <cmath>

#include "support/gradcheck.h"

namespace nh {
namespace {

using test::dot;
using test::expect_grad_close;
using test::random_tensor;

constexpr double kEps = 1e-5;

double silu(double v) { return v / (1 + std::exp(-v)); }

// SPEC §2: g = x·silu(z), then RMSNorm over each group of C/groups channels, times w.
TEST(GatedRmsNorm, ForwardMatchesDoubleLoopPerGroup) {
  const int64_t rows = 2 * 3, channels = 15, groups = 3, gs = channels / groups;
  Tensor x = random_tensor({2, 3, channels}, 1, 1.5), z = random_tensor({2, 3, channels}, 2, 2.0);
  Tensor w = random_tensor({channels}, 3, 0.5, DType::F64, 1.0);
  Tensor y = Tensor::empty({2, 3, channels}, DType::F64);
  Tensor rstd = Tensor::empty({rows, groups}, DType::F64);
  gated_rmsnorm_forward(x, z, w, groups, kEps, y, rstd);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < groups; ++j) {
      double g[gs], ss = 0;
      for (int64_t c = 0; c < gs; ++c) {
        const int64_t i = r * channels + j * gs + c;
        g[c] = x.data<double>()[i] * silu(z.data<double>()[i]);
        ss += g[c] * g[c];
      }
      const double rs = 1 / std::sqrt(ss / gs + kEps);
      EXPECT_NEAR(rstd.data<double>()[r * groups + j], rs, 1e-12 * rs);
      for (int64_t c = 0; c < gs; ++c) {
        const int64_t i = r * channels + j * gs + c;
        EXPECT_NEAR(y.data<double>()[i], w.data<double>()[j * gs + c] * g[c] * rs, 1e-12);
      }
    }
}

TEST(GatedRmsNorm, FloatForwardMatchesDoubleWithinFp32Precision) {
  const int64_t rows = 4, channels = 12, groups = 4;
  Tensor x = random_tensor({rows, channels}, 4), z = random_tensor({rows, channels}, 5);
  Tensor w = random_tensor({channels}, 6, 0.5, DType::F64, 1.0);
  Tensor y = Tensor::empty({rows, channels}, DType::F64),
         r = Tensor::empty({rows, groups}, DType::F64);
  Tensor yf = Tensor::empty({rows, channels}, DType::F32);
  Tensor rf = Tensor::empty({rows, groups}, DType::F32);
  gated_rmsnorm_forward(x, z, w, groups, kEps, y, r);
  gated_rmsnorm_forward(x.to(DType::F32), z.to(DType::F32), w.to(DType::F32), groups, kEps, yf, rf);
  // Normalised values are O(1) (up to sqrt(group size) = 1.7): fp32 keeps ~1e-7 relative,
  // and a group of tiny g can amplify the error through rstd, hence 1e-5.
  for (int64_t i = 0; i < y.numel(); ++i)
    EXPECT_NEAR(yf.data<float>()[i], y.data<double>()[i], 1e-5);
}

// One group (the whole row) and several groups; 70 channels crosses the 64-column dw block.
TEST(GatedRmsNorm, BackwardMatchesNumericGradientForEachGroupCount) {
  struct Case {
    int64_t channels, groups;
  };
  for (const Case& cs : {Case{10, 1}, Case{15, 3}, Case{70, 5}}) {
    const int64_t channels = cs.channels, groups = cs.groups;
    SCOPED_TRACE(testing::Message() << "C = " << channels << ", groups = " << groups);
    Tensor x = random_tensor({2, 3, channels}, 7 + channels, 1.5);
    Tensor z = random_tensor({2, 3, channels}, 8 + channels, 2.0);
    Tensor w = random_tensor({channels}, 9 + channels, 0.5, DType::F64, 1.0);
    Tensor r = random_tensor({2, 3, channels}, 10 + channels);
    Tensor y = Tensor::empty({2, 3, channels}, DType::F64);
    Tensor rstd = Tensor::empty({6, groups}, DType::F64);
    auto loss = [&] {
      gated_rmsnorm_forward(x, z, w, groups, kEps, y, rstd);
      return dot(y, r);
    };
    loss();
    Tensor dx = random_tensor({2, 3, channels}, 11);  // garbage the backward must overwrite
    Tensor dz = random_tensor({2, 3, channels}, 12);
    Tensor dw0 = random_tensor({channels}, 13);
    Tensor dw = dw0.clone();
    gated_rmsnorm_backward(x, z, w, groups, rstd, r, dx, dz, dw);
    for (int64_t i = 0; i < channels; ++i) dw.data<double>()[i] -= dw0.data<double>()[i];
    expect_grad_close("dx", x, dx, loss);
    expect_grad_close("dz", z, dz, loss);
    expect_grad_close("dw", w, dw, loss);
  }
}

TEST(GatedRmsNorm, GroupsNotDividingChannelsThrow) {
  Tensor x = random_tensor({2, 15}, 14), z = random_tensor({2, 15}, 15),
         w = random_tensor({15}, 16);
  Tensor y = Tensor::empty({2, 15}, DType::F64), rstd = Tensor::empty({2, 4}, DType::F64);
  EXPECT_THROW(gated_rmsnorm_forward(x, z, w, 4, kEps, y, rstd), Error);
  Tensor rstd0 = Tensor::empty({2, 0}, DType::F64);
  EXPECT_THROW(gated_rmsnorm_forward(x, z, w, 0, kEps, y, rstd0), Error);
  Tensor dx = Tensor::empty({2, 15}, DType::F64), dz = Tensor::empty({2, 15}, DType::F64);
  Tensor dw = Tensor::zeros({15}, DType::F64);
  EXPECT_THROW(gated_rmsnorm_backward(x, z, w, 4, rstd, y, dx, dz, dw), Error);
}

TEST(GatedRmsNorm, MismatchedShapesAndDtypesThrow) {
  Tensor x = random_tensor({2, 12}, 17), z = random_tensor({2, 12}, 18),
         w = random_tensor({12}, 19);
  Tensor y = Tensor::empty({2, 12}, DType::F64), rstd = Tensor::empty({2, 3}, DType::F64);
  Tensor z_bad = random_tensor({2, 11}, 20), w_bad = random_tensor({11}, 21);
  Tensor rstd_bad = Tensor::empty({2, 2}, DType::F64), z_f32 = z.to(DType::F32);
  EXPECT_THROW(gated_rmsnorm_forward(x, z_bad, w, 3, kEps, y, rstd), Error);
  EXPECT_THROW(gated_rmsnorm_forward(x, z, w_bad, 3, kEps, y, rstd), Error);
  EXPECT_THROW(gated_rmsnorm_forward(x, z, w, 3, kEps, y, rstd_bad), Error);
  EXPECT_THROW(gated_rmsnorm_forward(x, z_f32, w, 3, kEps, y, rstd), Error);
  gated_rmsnorm_forward(x, z, w, 3, kEps, y, rstd);
  Tensor dx = Tensor::empty({2, 12}, DType::F64), dz_bad = Tensor::empty({2, 11}, DType::F64);
  Tensor dw = Tensor::zeros({12}, DType::F64);
  EXPECT_THROW(gated_rmsnorm_backward(x, z, w, 3, rstd, y, dx, dz_bad, dw), Error);
}

}  // namespace
}  // namespace nh
