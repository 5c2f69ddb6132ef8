#include "ops/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "support/gradcheck.h"

namespace nh {
namespace {

using test::dot;
using test::expect_grad_close;
using test::random_tensor;

struct AttnShape {
  int64_t batch, seqlen, q_heads, kv_heads, head_dim;
};

struct AttnInputs {
  AttnShape s;
  Tensor q, k, v, seq_idx;
  double scale;
};

AttnInputs make_inputs(const AttnShape& s, uint64_t seed, const std::vector<int32_t>& docs = {}) {
  AttnInputs in{s,
                random_tensor({s.batch, s.seqlen, s.q_heads, s.head_dim}, seed),
                random_tensor({s.batch, s.seqlen, s.kv_heads, s.head_dim}, seed + 1),
                random_tensor({s.batch, s.seqlen, s.kv_heads, s.head_dim}, seed + 2),
                {},
                1.0 / std::sqrt(double(s.head_dim))};
  if (!docs.empty()) in.seq_idx = Tensor::from(docs, {s.batch, s.seqlen});
  return in;
}

struct AttnResult {
  Tensor out, lse;
};

AttnResult run(const AttnInputs& in) {
  AttnResult r{Tensor::zeros(in.q.shape(), in.q.dtype()),
               Tensor::zeros({in.s.batch, in.s.q_heads, in.s.seqlen}, in.q.dtype())};
  cpu::attention_forward(in.q, in.k, in.v, in.seq_idx, in.scale, r.out, r.lse);
  return r;
}

// The definition: for each query, the full row of scaled scores over the allowed keys, an
// explicit softmax, then the weighted sum of v.
AttnResult reference(const AttnInputs& in) {
  const AttnShape& s = in.s;
  AttnResult r{Tensor::zeros(in.q.shape(), DType::F64),
               Tensor::zeros({s.batch, s.q_heads, s.seqlen}, DType::F64)};
  const double *q = in.q.data<double>(), *k = in.k.data<double>(), *v = in.v.data<double>();
  auto doc = [&](int64_t b, int64_t t) {
    return in.seq_idx.defined() ? in.seq_idx.data<int32_t>()[b * s.seqlen + t] : 0;
  };
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.q_heads; ++h)
      for (int64_t i = 0; i < s.seqlen; ++i) {
        const int64_t kh = h / (s.q_heads / s.kv_heads);
        std::vector<double> score(s.seqlen, -INFINITY);
        for (int64_t j = 0; j <= i; ++j) {
          if (doc(b, j) != doc(b, i)) continue;
          double d = 0;
          for (int64_t e = 0; e < s.head_dim; ++e)
            d += q[((b * s.seqlen + i) * s.q_heads + h) * s.head_dim + e] *
                 k[((b * s.seqlen + j) * s.kv_heads + kh) * s.head_dim + e];
          score[j] = in.scale * d;
        }
        double sum = 0;
        for (double sc : score) sum += std::exp(sc);
        for (int64_t j = 0; j < s.seqlen; ++j)
          for (int64_t e = 0; e < s.head_dim; ++e)
            r.out.data<double>()[((b * s.seqlen + i) * s.q_heads + h) * s.head_dim + e] +=
                std::exp(score[j]) / sum *
                v[((b * s.seqlen + j) * s.kv_heads + kh) * s.head_dim + e];
        r.lse.data<double>()[(b * s.q_heads + h) * s.seqlen + i] = std::log(sum);
      }
  return r;
}

double max_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    m = std::max(m, std::fabs(read_float(a, i) - read_float(b, i)));
  return m;
}

// Both sides are double sums of O(S) terms of size O(1): rounding stays near 1e-15.
constexpr double kDoubleTol = 1e-12;

const AttnShape kShapes[] = {{2, 7, 3, 3, 5}, {2, 11, 4, 2, 5}, {1, 9, 6, 1, 3}};

TEST(AttentionForward, MatchesExplicitSoftmaxForMhaAndGqa) {
  uint64_t seed = 10;
  for (const AttnShape& s : kShapes) {
    const AttnInputs in = make_inputs(s, seed += 10);
    const AttnResult got = run(in), want = reference(in);
    EXPECT_LT(max_diff(got.out, want.out), kDoubleTol) << "Hq " << s.q_heads;
    EXPECT_LT(max_diff(got.lse, want.lse), kDoubleTol) << "Hq " << s.q_heads;
  }
}

// Row 0: documents of lengths 3|5|3; row 1: 1|10.
const std::vector<int32_t> kDocs = {0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2,  //
                                    4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5};

TEST(AttentionForward, MatchesExplicitSoftmaxWithDocuments) {
  const AttnInputs in = make_inputs({2, 11, 4, 2, 5}, 100, kDocs);
  const AttnResult got = run(in), want = reference(in);
  EXPECT_LT(max_diff(got.out, want.out), kDoubleTol);
  EXPECT_LT(max_diff(got.lse, want.lse), kDoubleTol);
}

TEST(AttentionForward, DocumentsInARowEqualRunningThemSeparately) {
  const AttnShape s{2, 11, 6, 2, 4};
  const AttnInputs in = make_inputs(s, 200, kDocs);
  const AttnResult whole = run(in);
  for (int64_t b = 0; b < s.batch; ++b) {
    int64_t begin = 0;
    while (begin < s.seqlen) {
      int64_t end = begin + 1;
      while (end < s.seqlen && kDocs[b * s.seqlen + end] == kDocs[b * s.seqlen + begin]) ++end;
      const int64_t len = end - begin;
      AttnInputs doc = make_inputs({1, len, s.q_heads, s.kv_heads, s.head_dim}, 1);
      auto copy_rows = [&](const Tensor& src, Tensor& dst, int64_t heads) {
        const int64_t row = heads * s.head_dim;
        const double* from = src.data<double>() + (b * s.seqlen + begin) * row;
        std::copy(from, from + len * row, dst.data<double>());
      };
      copy_rows(in.q, doc.q, s.q_heads);
      copy_rows(in.k, doc.k, s.kv_heads);
      copy_rows(in.v, doc.v, s.kv_heads);
      const AttnResult part = run(doc);
      const int64_t row = s.q_heads * s.head_dim;
      for (int64_t i = 0; i < len * row; ++i)
        EXPECT_NEAR(whole.out.data<double>()[(b * s.seqlen + begin) * row + i],
                    part.out.data<double>()[i], kDoubleTol)
            << "row " << b << " document at " << begin;
      for (int64_t h = 0; h < s.q_heads; ++h)
        for (int64_t t = 0; t < len; ++t)
          EXPECT_NEAR(whole.lse.data<double>()[(b * s.q_heads + h) * s.seqlen + begin + t],
                      part.lse.data<double>()[h * len + t], kDoubleTol);
      begin = end;
    }
  }
}

// loss = dot(out, w); the backward gets out and lse of the same forward, as in training.
void check_gradients(AttnInputs in) {
  const Tensor w = random_tensor(in.q.shape(), 99);
  auto loss = [&] { return dot(run(in).out, w); };
  const AttnResult fwd = run(in);
  Tensor dq = Tensor::zeros(in.q.shape(), DType::F64);
  Tensor dk = Tensor::zeros(in.k.shape(), DType::F64);
  Tensor dv = Tensor::zeros(in.v.shape(), DType::F64);
  cpu::attention_backward(in.q, in.k, in.v, in.seq_idx, in.scale, fwd.out, fwd.lse, w, dq, dk, dv);
  expect_grad_close("q", in.q, dq, loss);
  expect_grad_close("k", in.k, dk, loss);
  expect_grad_close("v", in.v, dv, loss);
}

TEST(AttentionBackward, GradientsMatchFiniteDifferencesForMhaAndGqa) {
  uint64_t seed = 300;
  for (const AttnShape& s : kShapes) check_gradients(make_inputs(s, seed += 10));
}

TEST(AttentionBackward, GradientsMatchFiniteDifferencesWithDocuments) {
  check_gradients(make_inputs({2, 11, 4, 2, 5}, 400, kDocs));
  check_gradients(make_inputs({2, 11, 6, 1, 3}, 410, kDocs));
}

TEST(AttentionFloat, MatchesTheDoublePath) {
  const AttnInputs in = make_inputs({2, 37, 4, 2, 16}, 500, {});
  AttnInputs inf = in;
  for (Tensor* t : {&inf.q, &inf.k, &inf.v}) *t = t->to(DType::F32);
  const AttnResult r = run(in), rf = run(inf);
  // fp32 dot products of 16 terms and softmax weights rounded to fp32: errors of a few 1e-7.
  EXPECT_LT(max_diff(rf.out, r.out), 1e-5);
  EXPECT_LT(max_diff(rf.lse, r.lse), 1e-5);
  const Tensor dout = random_tensor(in.q.shape(), 501);
  auto grads = [&](const AttnInputs& x, const AttnResult& f, const Tensor& g) {
    std::vector<Tensor> d = {Tensor::zeros(x.q.shape(), x.q.dtype()),
                             Tensor::zeros(x.k.shape(), x.q.dtype()),
                             Tensor::zeros(x.v.shape(), x.q.dtype())};
    cpu::attention_backward(x.q, x.k, x.v, x.seq_idx, x.scale, f.out, f.lse, g, d[0], d[1], d[2]);
    return d;
  };
  const std::vector<Tensor> g = grads(in, r, dout), gf = grads(inf, rf, dout.to(DType::F32));
  // dk and dv sum over up to 2·37 query rows.
  for (size_t i = 0; i < g.size(); ++i) EXPECT_LT(max_diff(gf[i], g[i]), 1e-4) << i;
}

TEST(AttentionShapes, RejectsBadShapes) {
  const AttnInputs in = make_inputs({1, 5, 4, 2, 3}, 600);
  Tensor out = Tensor::zeros(in.q.shape(), DType::F64), lse = Tensor::zeros({1, 4, 5}, DType::F64);
  auto forward = [&](const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx) {
    cpu::attention_forward(q, k, v, seq_idx, in.scale, out, lse);
  };
  EXPECT_NO_THROW(forward(in.q, in.k, in.v, Tensor()));
  const Tensor k3 = random_tensor({1, 5, 3, 3}, 1), v3 = random_tensor({1, 5, 3, 3}, 2);
  EXPECT_THROW(forward(in.q, k3, v3, Tensor()), Error);  // Hq = 4 not divisible by Hkv = 3
  const Tensor k_dh = random_tensor({1, 5, 2, 4}, 3), v_dh = random_tensor({1, 5, 2, 4}, 4);
  EXPECT_THROW(forward(in.q, k_dh, v_dh, Tensor()), Error);  // dh 3 vs 4
  EXPECT_THROW(forward(in.q, in.k, v_dh, Tensor()), Error);
  const Tensor k_len = random_tensor({1, 6, 2, 3}, 5);
  EXPECT_THROW(forward(in.q, k_len, k_len, Tensor()), Error);
  EXPECT_THROW(forward(in.q, in.k, in.v, Tensor::from(std::vector<int32_t>{0, 0, 1}, {1, 3})),
               Error);
  Tensor bad_lse = Tensor::zeros({1, 5, 4}, DType::F64);
  EXPECT_THROW(cpu::attention_forward(in.q, in.k, in.v, Tensor(), in.scale, out, bad_lse), Error);
  Tensor dq = Tensor::zeros(in.q.shape(), DType::F64), dk = Tensor::zeros(k3.shape(), DType::F64);
  Tensor dv = Tensor::zeros(k3.shape(), DType::F64);
  EXPECT_THROW(cpu::attention_backward(in.q, k3, v3, Tensor(), in.scale, out, lse, out, dq, dk, dv),
               Error);
}

}  // namespace
}  // namespace nh
