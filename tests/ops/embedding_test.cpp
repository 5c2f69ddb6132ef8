#include "ops/embedding.h"

#include <gtest/gtest.h>

#include <string>

#include "support/gradcheck.h"

namespace nh {
namespace {

using test::dot;
using test::expect_grad_close;
using test::random_tensor;

TEST(Embedding, ForwardCopiesTheRowOfEachId) {
  const int64_t vocab = 7, dim = 5;
  Tensor weight = random_tensor({vocab, dim}, 1);
  Tensor ids = Tensor::from(std::vector<int64_t>{3, 0, 6, 3, 2, 3}, {2, 3});
  Tensor out = random_tensor({2, 3, dim}, 2);
  embedding_forward(ids, weight, out);
  for (int64_t t = 0; t < 6; ++t)
    for (int64_t d = 0; d < dim; ++d)
      EXPECT_EQ(out.data<double>()[t * dim + d],
                weight.data<double>()[ids.data<int64_t>()[t] * dim + d]);
}

TEST(Embedding, FloatForwardCopiesRowsExactly) {
  Tensor weight = random_tensor({4, 3}, 3, 1.0, DType::F32);
  Tensor ids = Tensor::from(std::vector<int64_t>{1, 3, 1}, {3});
  Tensor out = Tensor::empty({3, 3}, DType::F32);
  embedding_forward(ids, weight, out);
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t d = 0; d < 3; ++d)
      EXPECT_EQ(out.data<float>()[t * 3 + d], weight.data<float>()[ids.data<int64_t>()[t] * 3 + d]);
}

// Repeated ids (3 appears three times, ids 1, 4 never) must sum into their row; rows of unused
// ids keep their old gradient.
TEST(Embedding, BackwardMatchesNumericGradientWithRepeatedIds) {
  const int64_t vocab = 7, dim = 70;  // dim > 64 crosses a column block of the backward
  Tensor weight = random_tensor({vocab, dim}, 4);
  Tensor ids = Tensor::from(std::vector<int64_t>{3, 0, 6, 3, 2, 3, 5}, {7});
  Tensor r = random_tensor({7, dim}, 5);
  Tensor out = Tensor::empty({7, dim}, DType::F64);
  auto loss = [&] {
    embedding_forward(ids, weight, out);
    return dot(out, r);
  };
  Tensor dw0 = random_tensor({vocab, dim}, 6);
  Tensor dw = dw0.clone();
  embedding_backward(ids, r, dw);
  for (int64_t i = 0; i < dw.numel(); ++i) dw.data<double>()[i] -= dw0.data<double>()[i];
  expect_grad_close("dweight", weight, dw, loss);
}

TEST(Embedding, IdOutOfRangeThrowsNamingIdAndVocab) {
  Tensor weight = random_tensor({7, 3}, 7);
  Tensor out = Tensor::empty({2, 3}, DType::F64);
  Tensor dw = Tensor::zeros({7, 3}, DType::F64);
  for (int64_t bad : {int64_t(7), int64_t(-1)}) {
    Tensor ids = Tensor::from(std::vector<int64_t>{2, bad}, {2});
    try {
      embedding_forward(ids, weight, out);
      ADD_FAILURE() << "id " << bad << " was accepted";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find("[0, 7)"), std::string::npos) << msg;
    }
    EXPECT_THROW(embedding_backward(ids, out, dw), Error);
  }
}

TEST(Embedding, MismatchedShapesAndDtypesThrow) {
  Tensor weight = random_tensor({7, 3}, 8);
  Tensor ids = Tensor::from(std::vector<int64_t>{1, 2}, {2});
  Tensor out_bad = Tensor::empty({2, 4}, DType::F64), out_f32 = Tensor::empty({2, 3}, DType::F32);
  Tensor ids_i32 = Tensor::from(std::vector<int32_t>{1, 2}, {2});
  Tensor out = Tensor::empty({2, 3}, DType::F64);
  EXPECT_THROW(embedding_forward(ids, weight, out_bad), Error);
  EXPECT_THROW(embedding_forward(ids, weight, out_f32), Error);
  EXPECT_THROW(embedding_forward(ids_i32, weight, out), Error);
  EXPECT_THROW(embedding_forward(ids, random_tensor({21}, 9), out), Error);
  Tensor dw = Tensor::zeros({7, 3}, DType::F64);
  EXPECT_THROW(embedding_backward(ids, out_bad, dw), Error);
}

}  // namespace
}  // namespace nh
