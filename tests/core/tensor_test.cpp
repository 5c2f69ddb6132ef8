#include "core/tensor.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"

namespace nh {

TEST(Tensor, ConvertsThroughBf16AndF16WithinTheirPrecision) {
  Rng rng(1);
  std::vector<float> v(257);
  for (auto& x : v) x = float(rng.normal() * 3.0);
  Tensor f = Tensor::from(v, {257});
  Tensor bf = f.to(DType::BF16).to(DType::F32);
  Tensor hf = f.to(DType::F16).to(DType::F32);
  for (int i = 0; i < 257; ++i) {
    // bf16 keeps 8 significant bits, f16 11: relative rounding error 2^-9 and 2^-12.
    EXPECT_NEAR(bf.data<float>()[i], v[i], std::fabs(v[i]) * 0x1.0p-8);
    EXPECT_NEAR(hf.data<float>()[i], v[i], std::fabs(v[i]) * 0x1.0p-11 + 1e-7);
  }
}

TEST(Tensor, F16HandlesInfinityNaNAndSubnormals) {
  EXPECT_TRUE(std::isinf(f16_to_float(float_to_f16(1e6f))));
  EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(NAN))));
  const float tiny = 0x1.0p-24f * 3;  // three units of the smallest f16 subnormal
  EXPECT_EQ(f16_to_float(float_to_f16(tiny)), tiny);
  EXPECT_EQ(f16_to_float(float_to_f16(65504.0f)), 65504.0f);
}

TEST(Tensor, ReshapeAndSliceShareStorage) {
  Tensor t = Tensor::from(std::vector<float>{1, 2, 3, 4, 5, 6}, {3, 2});
  Tensor s = t.slice0(1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 2}));
  s.data<float>()[0] = 30;
  EXPECT_EQ(t.data<float>()[2], 30);
  EXPECT_THROW(t.reshape({4}), Error);
  EXPECT_THROW(t.data<double>(), Error);
}

}  // namespace nh
