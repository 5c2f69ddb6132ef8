#include "ops/lm_head_loss.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.h"
#include "support/gradcheck.h"

namespace nh {
namespace {

using test::expect_grad_close;
using test::random_tensor;

constexpr int64_t kIgnore = -100;

// Labels in [0, vocab), with the rows for which `ignored(t)` holds set to -100.
template <class F>
Tensor make_labels(int64_t rows, int64_t vocab, uint64_t seed, F ignored) {
  Rng rng(seed);
  std::vector<int64_t> v(rows);
  for (int64_t t = 0; t < rows; ++t)
    v[t] = ignored(t) ? kIgnore : int64_t(rng.uniform() * double(vocab));
  return Tensor::from(v, {rows});
}

struct LoopLoss {
  double sum = 0;
  int64_t count = 0;
  Tensor logits;
};

// Full [T, V] logits and the plain log-sum-exp loss, in double.
LoopLoss loss_loop(const Tensor& h, const Tensor& w, const Tensor& labels) {
  const int64_t rows = labels.numel(), vocab = w.size(0), dim = w.size(1);
  LoopLoss out;
  out.logits = Tensor::empty({rows, vocab}, DType::F64);
  double* lg = out.logits.data<double>();
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t v = 0; v < vocab; ++v) {
      double s = 0;
      for (int64_t d = 0; d < dim; ++d)
        s += read_float(h, t * dim + d) * read_float(w, v * dim + d);
      lg[t * vocab + v] = s;
    }
    const int64_t label = labels.data<int64_t>()[t];
    if (label == kIgnore) continue;
    double mx = lg[t * vocab], se = 0;
    for (int64_t v = 1; v < vocab; ++v) mx = std::max(mx, lg[t * vocab + v]);
    for (int64_t v = 0; v < vocab; ++v) se += std::exp(lg[t * vocab + v] - mx);
    out.sum += mx + std::log(se) - lg[t * vocab + label];
    ++out.count;
  }
  return out;
}

// 300 rows span three chunks of 128, the last one partial.
TEST(LmHeadLoss, ForwardMatchesDoubleLoopOverFullLogits) {
  const int64_t rows = 300, dim = 7, vocab = 11;
  Tensor h = random_tensor({rows, dim}, 1), w = random_tensor({vocab, dim}, 2);
  Tensor labels = make_labels(rows, vocab, 3, [](int64_t t) { return t % 7 == 3; });
  const LoopLoss ref = loss_loop(h, w, labels);
  Tensor logits = Tensor::empty({rows, vocab}, DType::F64);
  const LossSum got = lm_head_loss_forward(h, w, labels, logits);
  EXPECT_EQ(got.count, ref.count);
  EXPECT_NEAR(got.sum, ref.sum, 1e-12 * ref.sum);
  for (int64_t i = 0; i < logits.numel(); ++i)
    EXPECT_NEAR(logits.data<double>()[i], ref.logits.data<double>()[i], 1e-12);
  Tensor no_logits;
  const LossSum again = lm_head_loss_forward(h, w, labels, no_logits);
  EXPECT_EQ(again.sum, got.sum);
  EXPECT_EQ(again.count, got.count);
}

// Rows 128..255 (a whole chunk) and every fifth row are ignored: the loss and the gradients equal
// those of the other rows alone, and the ignored rows of dh are zero.
TEST(LmHeadLoss, IgnoredRowsContributeNothingToLossOrGradients) {
  const int64_t rows = 300, dim = 6, vocab = 10;
  auto ignored = [](int64_t t) { return t % 5 == 0 || (t >= 128 && t < 256); };
  Tensor h = random_tensor({rows, dim}, 4), w = random_tensor({vocab, dim}, 5);
  Tensor labels = make_labels(rows, vocab, 6, ignored);
  std::vector<int64_t> kept;
  for (int64_t t = 0; t < rows; ++t)
    if (!ignored(t)) kept.push_back(t);
  const int64_t n = int64_t(kept.size());
  Tensor h_kept = Tensor::empty({n, dim}, DType::F64), labels_kept = Tensor::empty({n}, DType::I64);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t d = 0; d < dim; ++d)
      h_kept.data<double>()[i * dim + d] = h.data<double>()[kept[i] * dim + d];
    labels_kept.data<int64_t>()[i] = labels.data<int64_t>()[kept[i]];
  }
  Tensor none;
  const LossSum all = lm_head_loss_forward(h, w, labels, none);
  const LossSum only = lm_head_loss_forward(h_kept, w, labels_kept, none);
  EXPECT_EQ(all.count, n);
  EXPECT_NEAR(all.sum, only.sum, 1e-12 * only.sum);

  const double scale = 0.37;
  Tensor dh = random_tensor({rows, dim}, 7);  // garbage the backward must overwrite
  Tensor dw = Tensor::zeros({vocab, dim}, DType::F64);
  Tensor dh_kept = Tensor::empty({n, dim}, DType::F64);
  Tensor dw_kept = Tensor::zeros({vocab, dim}, DType::F64);
  lm_head_loss_backward(h, w, labels, scale, dh, dw);
  lm_head_loss_backward(h_kept, w, labels_kept, scale, dh_kept, dw_kept);
  for (int64_t i = 0, k = 0; i < rows; ++i) {
    for (int64_t d = 0; d < dim; ++d) {
      const double got = dh.data<double>()[i * dim + d];
      if (ignored(i))
        EXPECT_EQ(got, 0.0) << "row " << i;
      else
        EXPECT_NEAR(got, dh_kept.data<double>()[k * dim + d], 1e-12) << "row " << i;
    }
    if (!ignored(i)) ++k;
  }
  for (int64_t i = 0; i < dw.numel(); ++i)
    EXPECT_NEAR(dw.data<double>()[i], dw_kept.data<double>()[i], 1e-12);
}

// The mean loss (sum / count) over 140 rows: one full chunk and a partial one.
TEST(LmHeadLoss, BackwardMatchesNumericGradientOfMeanLoss) {
  const int64_t rows = 140, dim = 5, vocab = 9;
  Tensor h = random_tensor({rows, dim}, 8), w = random_tensor({vocab, dim}, 9);
  Tensor labels = make_labels(rows, vocab, 10, [](int64_t t) { return t % 6 == 1; });
  Tensor none;
  const double count = double(lm_head_loss_forward(h, w, labels, none).count);
  auto loss = [&] { return lm_head_loss_forward(h, w, labels, none).sum / count; };
  Tensor dh = random_tensor({rows, dim}, 11);  // overwritten
  Tensor dw0 = random_tensor({vocab, dim}, 12);
  Tensor dw = dw0.clone();
  lm_head_loss_backward(h, w, labels, 1 / count, dh, dw);
  for (int64_t i = 0; i < dw.numel(); ++i) dw.data<double>()[i] -= dw0.data<double>()[i];
  expect_grad_close("dh", h, dh, loss);
  expect_grad_close("dw", w, dw, loss);
}

// The one-pass op of training: the forward's loss and the backward's gradients, exactly.
TEST(LmHeadLoss, ForwardBackwardGivesTheLossAndTheGradientsOfTheTwoPasses) {
  const int64_t rows = 140, dim = 5, vocab = 9;
  Tensor h = random_tensor({rows, dim}, 13), w = random_tensor({vocab, dim}, 14);
  Tensor labels = make_labels(rows, vocab, 15, [](int64_t t) { return t % 5 == 2; });
  Tensor none, dh = random_tensor({rows, dim}, 16), dh_both = random_tensor({rows, dim}, 17);
  Tensor dw = random_tensor({vocab, dim}, 18), dw_both = dw.clone();
  const LossSum loss = lm_head_loss_forward(h, w, labels, none);
  lm_head_loss_backward(h, w, labels, 0.25, dh, dw);
  const LossSum both = lm_head_loss_forward_backward(h, w, labels, 0.25, dh_both, dw_both);
  EXPECT_EQ(both.sum, loss.sum);
  EXPECT_EQ(both.count, loss.count);
  for (int64_t i = 0; i < dh.numel(); ++i)
    ASSERT_EQ(dh_both.data<double>()[i], dh.data<double>()[i]) << i;
  for (int64_t i = 0; i < dw.numel(); ++i)
    ASSERT_EQ(dw_both.data<double>()[i], dw.data<double>()[i]) << i;
}

// Logits of size ~100 overflow exp in fp32 unless the log-sum-exp is shifted by the maximum.
TEST(LmHeadLoss, FloatWithLargeLogitsMatchesDouble) {
  const int64_t rows = 37, dim = 16, vocab = 23;
  Tensor h = random_tensor({rows, dim}, 13, 25.0), w = random_tensor({vocab, dim}, 14);
  Tensor labels = make_labels(rows, vocab, 15, [](int64_t t) { return t == 4; });
  Tensor none;
  const LossSum ref = lm_head_loss_forward(h, w, labels, none);
  const LossSum got = lm_head_loss_forward(h.to(DType::F32), w.to(DType::F32), labels, none);
  ASSERT_TRUE(std::isfinite(got.sum));
  EXPECT_EQ(got.count, ref.count);
  // Each logit (~100) carries fp32 rounding of ~1e-5 absolute; 36 rows of such terms.
  EXPECT_NEAR(got.sum, ref.sum, 1e-5 * ref.sum);
  Tensor hf = h.to(DType::F32), wf = w.to(DType::F32);
  Tensor dh = Tensor::empty({rows, dim}, DType::F32), dw = Tensor::zeros({vocab, dim}, DType::F32);
  lm_head_loss_backward(hf, wf, labels, 1.0, dh, dw);
  for (int64_t i = 0; i < dh.numel(); ++i) ASSERT_TRUE(std::isfinite(dh.data<float>()[i]));
  for (int64_t i = 0; i < dw.numel(); ++i) ASSERT_TRUE(std::isfinite(dw.data<float>()[i]));
}

TEST(LmHeadLoss, LabelOutOfRangeThrows) {
  const int64_t rows = 4, dim = 3, vocab = 5;
  Tensor h = random_tensor({rows, dim}, 16), w = random_tensor({vocab, dim}, 17);
  Tensor none, dh = Tensor::empty({rows, dim}, DType::F64);
  Tensor dw = Tensor::zeros({vocab, dim}, DType::F64);
  for (int64_t bad : {vocab, int64_t(-1), int64_t(-101)}) {
    Tensor labels = Tensor::from(std::vector<int64_t>{0, kIgnore, bad, 4}, {rows});
    EXPECT_THROW(lm_head_loss_forward(h, w, labels, none), Error) << bad;
    EXPECT_THROW(lm_head_loss_backward(h, w, labels, 1.0, dh, dw), Error) << bad;
  }
}

TEST(LmHeadLoss, MismatchedShapesAndDtypesThrow) {
  const int64_t rows = 4, dim = 3, vocab = 5;
  Tensor h = random_tensor({rows, dim}, 18), w = random_tensor({vocab, dim}, 19);
  Tensor labels = Tensor::from(std::vector<int64_t>{0, 1, 2, 3}, {rows});
  Tensor none;
  Tensor w_bad = random_tensor({vocab, dim + 1}, 20);
  Tensor labels_short = Tensor::from(std::vector<int64_t>{0, 1, 2}, {3});
  Tensor labels_i32 = Tensor::from(std::vector<int32_t>{0, 1, 2, 3}, {rows});
  Tensor logits_bad = Tensor::empty({rows, vocab + 1}, DType::F64);
  EXPECT_THROW(lm_head_loss_forward(h, w_bad, labels, none), Error);
  EXPECT_THROW(lm_head_loss_forward(h, w, labels_short, none), Error);
  EXPECT_THROW(lm_head_loss_forward(h, w, labels_i32, none), Error);
  EXPECT_THROW(lm_head_loss_forward(h, w, labels, logits_bad), Error);
  EXPECT_THROW(lm_head_loss_forward(h, w.to(DType::F32), labels, none), Error);
  Tensor dh = Tensor::empty({rows, dim}, DType::F64), dw = Tensor::zeros({vocab, dim}, DType::F64);
  Tensor dh_bad = Tensor::empty({rows, dim + 1}, DType::F64);
  Tensor dw_bad = Tensor::zeros({vocab + 1, dim}, DType::F64);
  EXPECT_THROW(lm_head_loss_backward(h, w, labels, 1.0, dh_bad, dw), Error);
  EXPECT_THROW(lm_head_loss_backward(h, w, labels, 1.0, dh, dw_bad), Error);
}

}  // namespace
}  // namespace nh
