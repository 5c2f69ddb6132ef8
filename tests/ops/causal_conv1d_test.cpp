#include "ops/causal_conv1d.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "support/expect.h"
#include "support/gradcheck.h"

namespace nh {
namespace {

using test::expect_near_all;

using test::dot;
using test::expect_grad_close;
using test::random_tensor;

// The header's formula, in double: taps before the row start or in another document read 0.
Tensor conv_loop(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& seq_idx) {
  const int64_t batch = x.size(0), seq_len = x.size(1), channels = x.size(2), kernel = w.size(1);
  Tensor y = Tensor::empty(x.shape(), DType::F64);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq_len; ++t)
      for (int64_t c = 0; c < channels; ++c) {
        double s = bias.defined() ? read_float(bias, c) : 0.0;
        for (int64_t j = 0; j < kernel; ++j) {
          const int64_t p = t - kernel + 1 + j;
          if (p < 0) continue;
          if (seq_idx.defined() &&
              read_float(seq_idx, b * seq_len + p) != read_float(seq_idx, b * seq_len + t))
            continue;
          s += read_float(w, c * kernel + j) * read_float(x, (b * seq_len + p) * channels + c);
        }
        y.data<double>()[(b * seq_len + t) * channels + c] = s / (1 + std::exp(-s));
      }
  return y;
}

// Tokens [begin, end) of row b of a [B, S, C] tensor, as a [1, end - begin, C] tensor.
Tensor document(const Tensor& x, int64_t b, int64_t begin, int64_t end) {
  const int64_t seq_len = x.size(1), channels = x.size(2);
  Tensor d = Tensor::empty({1, end - begin, channels}, DType::F64);
  for (int64_t i = 0; i < (end - begin) * channels; ++i)
    d.data<double>()[i] = x.data<double>()[(b * seq_len + begin) * channels + i];
  return d;
}

TEST(CausalConv1d, ForwardMatchesDoubleLoopWithAndWithoutBias) {
  Tensor x = random_tensor({2, 9, 5}, 1), w = random_tensor({5, 4}, 2),
         bias = random_tensor({5}, 3);
  Tensor y = Tensor::empty({2, 9, 5}, DType::F64);
  causal_conv1d_forward(x, w, bias, Tensor(), y);
  expect_near_all(y, conv_loop(x, w, bias, Tensor()), 1e-12);
  causal_conv1d_forward(x, w, Tensor(), Tensor(), y);
  expect_near_all(y, conv_loop(x, w, Tensor(), Tensor()), 1e-12);
}

TEST(CausalConv1d, ForwardMatchesDoubleLoopWhenKernelIsLongerThanSequence) {
  Tensor x = random_tensor({3, 2, 7}, 4), w = random_tensor({7, 4}, 5),
         bias = random_tensor({7}, 6);
  Tensor y = Tensor::empty({3, 2, 7}, DType::F64);
  causal_conv1d_forward(x, w, bias, Tensor(), y);
  expect_near_all(y, conv_loop(x, w, bias, Tensor()), 1e-12);
}

TEST(CausalConv1d, FloatForwardMatchesDoubleWithinFp32Precision) {
  Tensor x = random_tensor({2, 11, 6}, 7), w = random_tensor({6, 4}, 8),
         bias = random_tensor({6}, 9);
  Tensor yf = Tensor::empty({2, 11, 6}, DType::F32);
  causal_conv1d_forward(x.to(DType::F32), w.to(DType::F32), bias.to(DType::F32), Tensor(), yf);
  // Inputs rounded to fp32 (2^-24 relative) times 5 O(1) terms; the sum itself is in double.
  expect_near_all(yf, conv_loop(x, w, bias, Tensor()), 1e-5);
}

// Row 0 holds documents of 3 and 7 tokens, row 1 documents of 6, 1 and 3 tokens.
struct Packing {
  Tensor seq_idx = Tensor::from(std::vector<int32_t>{0, 0, 0, 1, 1, 1, 1, 1, 1, 1,  //
                                                     4, 4, 4, 4, 4, 4, 5, 6, 6, 6},
                                {2, 10});
  struct Doc {
    int64_t row, begin, end;
  };
  std::vector<Doc> docs = {{0, 0, 3}, {0, 3, 10}, {1, 0, 6}, {1, 6, 7}, {1, 7, 10}};
};

TEST(CausalConv1d, PackedRowMatchesEachDocumentAlone) {
  const Packing pack;
  const int64_t channels = 5;
  Tensor x = random_tensor({2, 10, channels}, 10), w = random_tensor({channels, 4}, 11);
  Tensor bias = random_tensor({channels}, 12);
  Tensor y = Tensor::empty({2, 10, channels}, DType::F64);
  causal_conv1d_forward(x, w, bias, pack.seq_idx, y);
  expect_near_all(y, conv_loop(x, w, bias, pack.seq_idx), 1e-12);
  for (const auto& d : pack.docs) {
    Tensor xd = document(x, d.row, d.begin, d.end);
    Tensor yd = Tensor::empty(xd.shape(), DType::F64);
    causal_conv1d_forward(xd, w, bias, Tensor(), yd);
    expect_near_all(document(y, d.row, d.begin, d.end), yd, 1e-14);
  }
}

TEST(CausalConv1d, PackedBackwardMatchesEachDocumentAlone) {
  const Packing pack;
  const int64_t channels = 5, kernel = 4;
  Tensor x = random_tensor({2, 10, channels}, 13), w = random_tensor({channels, kernel}, 14);
  Tensor bias = random_tensor({channels}, 15), dy = random_tensor({2, 10, channels}, 16);
  Tensor dx = Tensor::empty({2, 10, channels}, DType::F64);
  Tensor dw = Tensor::zeros({channels, kernel}, DType::F64),
         db = Tensor::zeros({channels}, DType::F64);
  causal_conv1d_backward(x, w, bias, pack.seq_idx, dy, dx, dw, db);
  // The weight gradients of the documents run alone add up into one pair.
  Tensor dw_sum = Tensor::zeros({channels, kernel}, DType::F64);
  Tensor db_sum = Tensor::zeros({channels}, DType::F64);
  for (const auto& d : pack.docs) {
    Tensor xd = document(x, d.row, d.begin, d.end), dyd = document(dy, d.row, d.begin, d.end);
    Tensor dxd = Tensor::empty(xd.shape(), DType::F64);
    causal_conv1d_backward(xd, w, bias, Tensor(), dyd, dxd, dw_sum, db_sum);
    expect_near_all(document(dx, d.row, d.begin, d.end), dxd, 1e-14);
  }
  expect_near_all(dw, dw_sum, 1e-12);
  expect_near_all(db, db_sum, 1e-12);
}

void check_gradients(const Tensor& seq_idx, uint64_t seed) {
  const int64_t batch = 2, seq_len = 10, channels = 3, kernel = 4;
  Tensor x = random_tensor({batch, seq_len, channels}, seed);
  Tensor w = random_tensor({channels, kernel}, seed + 1, 0.7);
  Tensor bias = random_tensor({channels}, seed + 2);
  Tensor r = random_tensor({batch, seq_len, channels}, seed + 3);
  Tensor y = Tensor::empty({batch, seq_len, channels}, DType::F64);
  auto loss = [&] {
    causal_conv1d_forward(x, w, bias, seq_idx, y);
    return dot(y, r);
  };
  Tensor dx = random_tensor({batch, seq_len, channels}, seed + 4);  // overwritten
  Tensor dw0 = random_tensor({channels, kernel}, seed + 5),
         db0 = random_tensor({channels}, seed + 6);
  Tensor dw = dw0.clone(), db = db0.clone();
  causal_conv1d_backward(x, w, bias, seq_idx, r, dx, dw, db);
  for (int64_t i = 0; i < dw.numel(); ++i) dw.data<double>()[i] -= dw0.data<double>()[i];
  for (int64_t i = 0; i < db.numel(); ++i) db.data<double>()[i] -= db0.data<double>()[i];
  expect_grad_close("dx", x, dx, loss);
  expect_grad_close("dw", w, dw, loss);
  expect_grad_close("dbias", bias, db, loss);
}

TEST(CausalConv1d, BackwardMatchesNumericGradient) { check_gradients(Tensor(), 20); }

TEST(CausalConv1d, BackwardMatchesNumericGradientWithSeqIdx) {
  check_gradients(Packing().seq_idx, 30);
}

TEST(CausalConv1d, BackwardSkipsUndefinedWeightGradients) {
  Tensor x = random_tensor({1, 7, 4}, 40), w = random_tensor({4, 3}, 41);
  Tensor dy = random_tensor({1, 7, 4}, 42);
  Tensor dx = Tensor::empty({1, 7, 4}, DType::F64), dx_ref = Tensor::empty({1, 7, 4}, DType::F64);
  Tensor dw, db, dw_ref = Tensor::zeros({4, 3}, DType::F64),
                 db_ref = Tensor::zeros({4}, DType::F64);
  causal_conv1d_backward(x, w, Tensor(), Tensor(), dy, dx, dw, db);
  causal_conv1d_backward(x, w, Tensor(), Tensor(), dy, dx_ref, dw_ref, db_ref);
  expect_near_all(dx, dx_ref, 0);
}

TEST(CausalConv1d, MismatchedShapesAndDtypesThrow) {
  Tensor x = random_tensor({2, 5, 3}, 50), w = random_tensor({3, 4}, 51);
  Tensor y = Tensor::empty({2, 5, 3}, DType::F64);
  Tensor w_bad = random_tensor({4, 4}, 52), bias_bad = random_tensor({4}, 53);
  Tensor seq_i64 = Tensor::from(std::vector<int64_t>(10, 0), {2, 5});
  Tensor seq_bad = Tensor::from(std::vector<int32_t>(5, 0), {1, 5});
  Tensor x2d = random_tensor({5, 3}, 54), y2d = Tensor::empty({5, 3}, DType::F64);
  EXPECT_THROW(causal_conv1d_forward(x, w_bad, Tensor(), Tensor(), y), Error);
  EXPECT_THROW(causal_conv1d_forward(x, w, bias_bad, Tensor(), y), Error);
  EXPECT_THROW(causal_conv1d_forward(x, w, Tensor(), seq_i64, y), Error);
  EXPECT_THROW(causal_conv1d_forward(x, w, Tensor(), seq_bad, y), Error);
  EXPECT_THROW(causal_conv1d_forward(x2d, w, Tensor(), Tensor(), y2d), Error);
  Tensor dx = Tensor::empty({2, 5, 3}, DType::F64), dw_bad = Tensor::zeros({3, 5}, DType::F64);
  Tensor db;
  EXPECT_THROW(causal_conv1d_backward(x, w, Tensor(), Tensor(), y, dx, dw_bad, db), Error);
}

}  // namespace
}  // namespace nh
