// The acceptance test: a packed row computes what its documents compute run one by
// one, so packing with seq_idx changes nothing but the speed.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "io/data_stream.h"
#include "model/model.h"

namespace nh {

namespace {

struct LossAndGrads {
  double loss = 0;
  int64_t count = 0;
  std::vector<Tensor> grads;
};

std::vector<Tensor> clone_grads(Model& m) {
  std::vector<Tensor> out;
  for (const auto& n : m.grads().names()) out.push_back(m.grads().at(n).clone());
  return out;
}

// Loss sum, target count and gradients of the whole micro-batch in one forward/backward.
LossAndGrads run_packed(Model& m, const MicroBatch& b, bool with_seq_idx) {
  m.grads().fill_zero();
  Tensor no_logits;
  const LossSum l = m.forward(b.ids, b.targets, with_seq_idx ? b.seq_idx : Tensor(), no_logits);
  m.backward(1.0);
  return {l.sum, l.count, clone_grads(m)};
}

// The same, summed over each document segment of each row run as its own row.
LossAndGrads run_documents_one_by_one(Model& m, const MicroBatch& b) {
  m.grads().fill_zero();
  LossAndGrads total;
  const int64_t rows = b.ids.size(0), len = b.ids.size(1);
  const int32_t* seq = b.seq_idx.data<int32_t>();
  int64_t segments = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t begin = 0, end = 0; begin < len; begin = end) {
      while (end < len && seq[r * len + end] == seq[r * len + begin]) ++end;
      const int64_t n = end - begin;
      Tensor ids = Tensor::empty({1, n}, DType::I64), tg = Tensor::empty({1, n}, DType::I64);
      std::copy_n(b.ids.data<int64_t>() + r * len + begin, n, ids.data<int64_t>());
      std::copy_n(b.targets.data<int64_t>() + r * len + begin, n, tg.data<int64_t>());
      Tensor no_logits;
      const LossSum l = m.forward(ids, tg, Tensor(), no_logits);
      m.backward(1.0);
      total.loss += l.sum;
      total.count += l.count;
      ++segments;
    }
  }
  EXPECT_GE(segments, 5) << "the batch should hold several documents";
  total.grads = clone_grads(m);
  return total;
}

double max_abs_diff(const Tensor& a, const Tensor& b, double* scale) {
  double d = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    d = std::max(d, std::fabs(read_float(a, i) - read_float(b, i)));
    *scale = std::max(*scale, std::fabs(read_float(b, i)));
  }
  return d;
}

}  // namespace

TEST(DataStreamModel, PackedRowsEqualTheirDocumentsRunSeparately) {
  Model m =
      Model::load(std::string(NH_SOURCE_DIR) + "/tests/data/reference/dense_hybrid", DType::F64);
  const int64_t vocab = m.config().vocab_size;
  Rng rng(41);
  std::vector<Document> docs(8);
  for (auto& d : docs) {
    const int len = 3 + int(rng.next() % 8);
    for (int t = 0; t < len; ++t) d.tokens.push_back(int32_t(3 + rng.next() % uint64_t(vocab - 3)));
  }
  DataStreamConfig c;
  c.sources.push_back({std::make_shared<InMemorySource>("mem", docs), 1.0, true});
  c.seq_length = 23;  // not a multiple of the chunk size (5): documents straddle chunks
  c.vocab_size = vocab;
  c.eod_id = 2;
  DataStream stream(c);
  const MicroBatch b = stream.next_batch(2);  // the second row starts inside a document

  const LossAndGrads packed = run_packed(m, b, true);
  const LossAndGrads separate = run_documents_one_by_one(m, b);
  // fp64 throughout: only summation order differs.
  EXPECT_EQ(packed.count, separate.count);
  EXPECT_NEAR(packed.loss, separate.loss, 1e-10 * std::fabs(separate.loss));
  const auto& names = m.grads().names();
  for (size_t i = 0; i < names.size(); ++i) {
    double scale = 0;
    const double d = max_abs_diff(packed.grads[i], separate.grads[i], &scale);
    EXPECT_LE(d, 1e-10 * std::max(scale, 1.0)) << names[i];
  }
  // Without seq_idx the documents see each other, and the loss differs: the check has teeth.
  const LossAndGrads leaky = run_packed(m, b, false);
  EXPECT_GT(std::fabs(leaky.loss - separate.loss), 1e-6 * std::fabs(separate.loss));
}

}  // namespace nh
