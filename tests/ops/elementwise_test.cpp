#include "ops/elementwise.h"

#include <gtest/gtest.h>

#include "support/gradcheck.h"

namespace nh {

TEST(Columns, CopyThenWriteRestoresTheSlice) {
  Tensor wide = test::random_tensor({3, 7}, 1, 1.0, DType::F32);
  Tensor part = Tensor::empty({3, 4}, DType::F32);
  copy_columns(wide, 2, part);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) EXPECT_EQ(part.data<float>()[r * 4 + c], wide.data<float>()[r * 7 + 2 + c]);
  Tensor back = Tensor::zeros({3, 7}, DType::F32);
  write_columns(part, back, 2);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 7; ++c)
      EXPECT_EQ(back.data<float>()[r * 7 + c], c >= 2 && c < 6 ? wide.data<float>()[r * 7 + c] : 0.f);
}

TEST(Columns, OutOfRangeSliceThrows) {
  Tensor wide = Tensor::zeros({3, 7}, DType::F32), part = Tensor::zeros({3, 4}, DType::F32);
  EXPECT_THROW(copy_columns(wide, 4, part), Error);
  Tensor rows = Tensor::zeros({2, 4}, DType::F32);
  EXPECT_THROW(write_columns(rows, wide, 0), Error);
}

TEST(AddInplace, AddsElementwise) {
  Tensor a = test::random_tensor({4, 5}, 2), b = test::random_tensor({4, 5}, 3);
  Tensor want = a.clone();
  add_inplace(a, b);
  for (int i = 0; i < 20; ++i)
    EXPECT_DOUBLE_EQ(a.data<double>()[i], want.data<double>()[i] + b.data<double>()[i]);
}

}  // namespace nh
