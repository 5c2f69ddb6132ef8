#include "ops/lm_head_loss.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "cuda/harness.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;

constexpr int64_t kIgnore = -100;

// Labels [rows] in [0, vocab), -100 where ignored(t).
Tensor make_labels(int64_t rows, int64_t vocab, uint64_t seed,
                   const std::function<bool(int64_t)>& ignored) {
  Rng rng(seed);
  std::vector<int64_t> v(rows);
  for (int64_t t = 0; t < rows; ++t)
    v[t] = ignored(t) ? kIgnore : int64_t(rng.uniform() * double(vocab));
  return Tensor::from(v, {rows});
}

bool none(int64_t) { return false; }
bool every_seventh(int64_t t) { return t % 7 == 3; }

// A scalar as a one-element tensor, for expect_close.
Tensor scalar(double x) { return Tensor::from(std::vector<float>{float(x)}, {1}); }

// Runs forward and backward on the CPU in F32 and on the GPU in `dtype` from the same inputs
// (h of shape `h_shape`, w [vocab, D] with logits of unit scale), and compares the loss sum,
// the count, the logits when asked for, dh and the accumulated dw.
void expect_matches_cpu(const Shape& h_shape, int64_t vocab, DType dtype, bool with_logits,
                        const std::function<bool(int64_t)>& ignored, uint64_t seed) {
  const int64_t dim = h_shape.back(), rows = shape_numel(h_shape) / dim;
  const Tensor h = random_cpu(h_shape, seed),
               w = random_cpu({vocab, dim}, seed + 1, 1.0 / std::sqrt(double(dim)));
  const Tensor labels = make_labels(rows, vocab, seed + 2, ignored);

  Tensor logits = with_logits ? Tensor::empty({rows, vocab}, DType::F32) : Tensor();
  const LossSum ref = cpu::lm_head_loss_forward(h, w, labels, logits);
  const double grad_scale = ref.count > 0 ? 1.0 / double(ref.count) : 1.0;
  // A start for dw of about the size of what one backward adds, so both parts are checked.
  const Tensor dw0 = random_cpu({vocab, dim}, seed + 3, 0.01 * grad_scale);
  Tensor dh = Tensor::empty(h_shape, DType::F32), dw = dw0.clone();
  cpu::lm_head_loss_backward(h, w, labels, grad_scale, dh, dw);

  const Tensor gh = to_gpu(h, dtype), gw = to_gpu(w, dtype), glabels = to_gpu(labels);
  Tensor glogits = with_logits ? gpu_empty({rows, vocab}, dtype) : Tensor();
  const LossSum got = cuda::lm_head_loss_forward(gh, gw, glabels, glogits);
  Tensor gdh = gpu_empty(h_shape, dtype), gdw = to_gpu(dw0, dtype);
  cuda::lm_head_loss_backward(gh, gw, glabels, grad_scale, gdh, gdw);

  const double tol = test::tolerance(dtype);
  const std::string tag = std::string(dtype_name(dtype)) + " h" + shape_str(h_shape) + " V" +
                          std::to_string(vocab) + (with_logits ? " logits " : " ");
  EXPECT_EQ(got.count, ref.count) << tag;
  expect_close(tag + "loss sum", to_gpu(scalar(got.sum)), scalar(ref.sum), tol);
  if (with_logits) expect_close(tag + "logits", glogits, logits, tol);
  expect_close(tag + "dh", gdh, dh, tol);
  expect_close(tag + "dw", gdw, dw, tol);

  // The one-pass op (training's) gives the same loss and gradients, in every version.
  test::for_each_kernel_version("lm_head_loss", [&] {
    Tensor fdh = gpu_empty(h_shape, dtype), fdw = to_gpu(dw0, dtype);
    const LossSum both = cuda::lm_head_loss_forward_backward(gh, gw, glabels, grad_scale, fdh, fdw);
    EXPECT_EQ(both.count, ref.count) << tag;
    expect_close(tag + "loss sum, one pass", to_gpu(scalar(both.sum)), scalar(ref.sum), tol);
    expect_close(tag + "dh, one pass", fdh, dh, tol);
    expect_close(tag + "dw, one pass", fdw, dw, tol);
  });
}

// 1500 rows: one full chunk of 1024 and a partial one.
TEST(CudaLmHeadLoss, MatchesCpuWhenRowsAreNotAMultipleOfTheChunk) {
  uint64_t seed = 100;
  for (DType dtype : {DType::F32, DType::BF16})
    for (bool with_logits : {false, true})
      expect_matches_cpu({1500, 64}, 1000, dtype, with_logits, every_seventh, seed += 10);
}

TEST(CudaLmHeadLoss, MatchesCpuForSmallAndLargeVocabularies) {
  uint64_t seed = 200;
  for (DType dtype : {DType::F32, DType::BF16})
    for (int64_t vocab : {50, 1000, 32000})
      for (bool with_logits : {false, true})
        expect_matches_cpu({37, 96}, vocab, dtype, with_logits, every_seventh, seed += 10);
}

TEST(CudaLmHeadLoss, MatchesCpuWithLeadingDimensionsAndOneRow) {
  expect_matches_cpu({3, 5, 16}, 77, DType::F32, true, none, 300);
  expect_matches_cpu({3, 5, 16}, 77, DType::BF16, false, none, 310);
  expect_matches_cpu({1, 128}, 500, DType::F32, false, none, 320);
}

// A whole chunk of ignored rows (rows 0 … 1099 of 1100) contributes nothing and gets dh = 0.
TEST(CudaLmHeadLoss, MatchesCpuWhenAWholeChunkIsIgnored) {
  const auto first_1100 = [](int64_t t) { return t < 1100; };
  expect_matches_cpu({1200, 32}, 300, DType::F32, false, first_1100, 400);
  expect_matches_cpu({1200, 32}, 300, DType::BF16, true, first_1100, 410);
}

// Every row ignored: sum 0, count 0, dh = 0 and dw unchanged.
TEST(CudaLmHeadLoss, MatchesCpuWhenEveryRowIsIgnored) {
  const auto all = [](int64_t) { return true; };
  expect_matches_cpu({40, 32}, 300, DType::F32, true, all, 500);
}

TEST(CudaLmHeadLoss, RejectsALabelOutsideTheVocabularyBeforeTouchingDw) {
  const Tensor h = to_gpu(random_cpu({8, 16}, 61)), w = to_gpu(random_cpu({100, 16}, 62));
  const Tensor labels =
      to_gpu(Tensor::from(std::vector<int64_t>{1, 2, kIgnore, 3, 4, 100, 5, -7}, {8}));
  Tensor logits;
  try {
    cuda::lm_head_loss_forward(h, w, labels, logits);
    ADD_FAILURE() << "no Error for label 100 with V = 100";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("labels[5]"), std::string::npos) << e.what();
  }
  const Tensor dw0 = random_cpu({100, 16}, 63);
  Tensor dh = gpu_empty({8, 16}, DType::F32), dw = to_gpu(dw0);
  EXPECT_THROW(cuda::lm_head_loss_backward(h, w, labels, 1.0, dh, dw), Error);
  expect_close("dw after the rejected backward", dw, dw0, 0.0);
  EXPECT_THROW(cuda::lm_head_loss_forward_backward(h, w, labels, 1.0, dh, dw), Error);
  expect_close("dw after the rejected forward_backward", dw, dw0, 0.0);
}

TEST(CudaLmHeadLoss, RejectsBadShapesDtypesAndCpuTensors) {
  const Tensor h = to_gpu(random_cpu({4, 16}, 71)), w = to_gpu(random_cpu({10, 16}, 72));
  const Tensor labels = to_gpu(Tensor::from(std::vector<int64_t>{1, 2, 3, 4}, {4}));
  const Tensor labels_i32 = to_gpu(Tensor::from(std::vector<int32_t>{1, 2, 3, 4}, {4}));
  const Tensor w_bf16 = to_gpu(random_cpu({10, 16}, 73), DType::BF16);
  Tensor none_logits, logits_bad = gpu_empty({4, 11}, DType::F32);
  EXPECT_THROW(cuda::lm_head_loss_forward(h, w, labels_i32, none_logits), Error);
  EXPECT_THROW(cuda::lm_head_loss_forward(h, w_bf16, labels, none_logits), Error);
  EXPECT_THROW(cuda::lm_head_loss_forward(h, w, labels, logits_bad), Error);
  EXPECT_THROW(cuda::lm_head_loss_forward(h, random_cpu({10, 16}, 74), labels, none_logits), Error);
}

}  // namespace
}  // namespace nh
