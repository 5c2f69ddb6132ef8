#include "ops/ssd.h"

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

struct SsdShape {
  int64_t batch, seqlen, heads, head_dim, groups, state;
};

// Inputs in the ranges the model produces: dt = softplus(N(0, 1)) (about 0.1..2) and
// A = -exp(0.5·N(0, 1)), so decays exp(dt·A) stay well inside (0, 1).
struct SsdInputs {
  SsdShape s;
  Tensor x, dt, A, Bm, Cm, D, seq_idx, initial_state;
};

SsdInputs make_inputs(const SsdShape& s, uint64_t seed, bool with_D, bool with_initial_state,
                      const std::vector<int32_t>& seq_idx = {}) {
  SsdInputs in{s, {}, {}, {}, {}, {}, {}, {}, {}};
  in.x = random_tensor({s.batch, s.seqlen, s.heads, s.head_dim}, seed);
  in.dt = random_tensor({s.batch, s.seqlen, s.heads}, seed + 1);
  for (int64_t i = 0; i < in.dt.numel(); ++i) {
    double& v = in.dt.data<double>()[i];
    v = std::log1p(std::exp(v));
  }
  in.A = random_tensor({s.heads}, seed + 2, 0.5);
  for (int64_t i = 0; i < in.A.numel(); ++i)
    in.A.data<double>()[i] = -std::exp(in.A.data<double>()[i]);
  in.Bm = random_tensor({s.batch, s.seqlen, s.groups, s.state}, seed + 3);
  in.Cm = random_tensor({s.batch, s.seqlen, s.groups, s.state}, seed + 4);
  if (with_D) in.D = random_tensor({s.heads}, seed + 5);
  if (with_initial_state)
    in.initial_state = random_tensor({s.batch, s.heads, s.head_dim, s.state}, seed + 6);
  if (!seq_idx.empty()) in.seq_idx = Tensor::from(seq_idx, {s.batch, s.seqlen});
  return in;
}

Tensor state_like(const SsdInputs& in) {
  return Tensor::zeros({in.s.batch, in.s.heads, in.s.head_dim, in.s.state}, in.x.dtype());
}

Tensor run_chunked(const SsdInputs& in, int64_t chunk_size, Tensor final_state = Tensor()) {
  Tensor y = Tensor::zeros(in.x.shape(), in.x.dtype());
  cpu::ssd_forward(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, chunk_size, in.seq_idx, in.initial_state,
                   y, final_state);
  return y;
}

Tensor run_recurrence(const SsdInputs& in, Tensor final_state = Tensor()) {
  Tensor y = Tensor::zeros(in.x.shape(), in.x.dtype());
  cpu::ssd_recurrence_forward(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, in.seq_idx, in.initial_state,
                              y, final_state);
  return y;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(read_float(t, i)));
  return m;
}

// max |a - b| relative to max |b| (the errors are those of sums whose terms have |b|'s scale).
double rel_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    m = std::max(m, std::fabs(read_float(a, i) - read_float(b, i)));
  return m / std::max(max_abs(b), 1e-300);
}

// The chunked form sums the same products as the recurrence in another order; in double the
// difference is rounding, a few 1e-16 per term.
constexpr double kDoubleTol = 1e-12;

TEST(SsdChunked, MatchesRecurrenceForAllChunkSizesLengthsAndGroupings) {
  const std::pair<int64_t, int64_t> heads_groups[] = {{3, 1}, {4, 2}, {6, 3}};
  uint64_t seed = 100;
  for (int64_t seqlen : {1, 5, 13, 33})
    for (auto [heads, groups] : heads_groups)
      for (bool with_D : {false, true}) {
        const SsdInputs in =
            make_inputs({2, seqlen, heads, 3, groups, 5}, seed += 10, with_D, false);
        const Tensor ref = run_recurrence(in);
        for (int64_t chunk : {1, 3, 4, 7, 16})
          EXPECT_LT(rel_diff(run_chunked(in, chunk), ref), kDoubleTol)
              << "S " << seqlen << " H " << heads << " G " << groups << " D " << with_D << " chunk "
              << chunk;
      }
}

TEST(SsdChunked, MatchesRecurrenceWithInitialAndFinalState) {
  uint64_t seed = 300;
  for (int64_t seqlen : {1, 5, 13, 33}) {
    const SsdInputs in = make_inputs({2, seqlen, 4, 3, 2, 5}, seed += 10, true, true);
    Tensor final_ref = state_like(in);
    const Tensor ref = run_recurrence(in, final_ref);
    for (int64_t chunk : {1, 3, 4, 7, 16}) {
      Tensor final_state = state_like(in);
      EXPECT_LT(rel_diff(run_chunked(in, chunk, final_state), ref), kDoubleTol)
          << "S " << seqlen << " chunk " << chunk;
      EXPECT_LT(rel_diff(final_state, final_ref), kDoubleTol)
          << "S " << seqlen << " chunk " << chunk;
    }
  }
}

TEST(SsdChunked, FinalStateContinuesTheSequenceAsInitialState) {
  const SsdShape whole{1, 13, 4, 3, 2, 5};
  const SsdInputs in = make_inputs(whole, 400, true, true);
  const Tensor y_whole = run_chunked(in, 4);
  // First 6 tokens, then the remaining 7 starting from the first part's final state.
  auto part = [&](int64_t begin, int64_t end) {
    SsdInputs p = in;
    p.s.seqlen = end - begin;
    auto cut = [&](const Tensor& t) {
      Shape shape = t.shape();
      const int64_t inner = t.numel() / shape[1];
      shape[1] = end - begin;
      Tensor r = Tensor::empty(shape, t.dtype());
      std::copy(t.data<double>() + begin * inner, t.data<double>() + end * inner, r.data<double>());
      return r;
    };
    p.x = cut(in.x);
    p.dt = cut(in.dt);
    p.Bm = cut(in.Bm);
    p.Cm = cut(in.Cm);
    return p;
  };
  const SsdInputs first = part(0, 6);
  SsdInputs second = part(6, 13);
  Tensor mid = state_like(in);
  const Tensor y1 = run_chunked(first, 4, mid);
  second.initial_state = mid;
  const Tensor y2 = run_chunked(second, 4);
  const int64_t inner = 4 * 3;
  for (int64_t i = 0; i < y_whole.numel(); ++i) {
    const double got = i < 6 * inner ? y1.data<double>()[i] : y2.data<double>()[i - 6 * inner];
    EXPECT_NEAR(got, y_whole.data<double>()[i], kDoubleTol * max_abs(y_whole)) << i;
  }
}

// Documents of lengths 2|3|6|2 (boundaries at 2, 5, 11) and 4|1|8 (at 4, 5), with chunk sizes
// that put the boundaries inside chunks and on chunk edges (chunk 4: edge at 4; chunk 5: at 5).
const std::vector<int32_t> kDocs = {0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3,
                                    7, 7, 7, 7, 8, 9, 9, 9, 9, 9, 9, 9, 9};

TEST(SsdChunked, MatchesRecurrenceWithDocumentBoundaries) {
  const SsdInputs in = make_inputs({2, 13, 4, 3, 2, 5}, 500, true, true, kDocs);
  Tensor final_ref = state_like(in);
  const Tensor ref = run_recurrence(in, final_ref);
  for (int64_t chunk : {1, 3, 4, 5, 7, 16}) {
    Tensor final_state = state_like(in);
    EXPECT_LT(rel_diff(run_chunked(in, chunk, final_state), ref), kDoubleTol) << chunk;
    EXPECT_LT(rel_diff(final_state, final_ref), kDoubleTol) << chunk;
  }
}

TEST(SsdChunked, DocumentsInARowEqualRunningEachDocumentSeparately) {
  const SsdShape s{2, 13, 4, 3, 2, 5};
  const SsdInputs in = make_inputs(s, 600, true, true, kDocs);
  for (int64_t chunk : {3, 4, 16}) {
    Tensor final_state = state_like(in);
    const Tensor y = run_chunked(in, chunk, final_state);
    const double tol = kDoubleTol * max_abs(y);
    const int64_t x_row = s.heads * s.head_dim, bc_row = s.groups * s.state;
    const int64_t pn = s.head_dim * s.state;
    for (int64_t b = 0; b < s.batch; ++b) {
      int64_t begin = 0;
      while (begin < s.seqlen) {
        int64_t end = begin + 1;
        while (end < s.seqlen && kDocs[b * s.seqlen + end] == kDocs[b * s.seqlen + begin]) ++end;
        const int64_t len = end - begin;
        // One row holding only this document; the row's initial state goes to its first one.
        SsdInputs doc =
            make_inputs({1, len, s.heads, s.head_dim, s.groups, s.state}, 1, true, begin == 0);
        doc.A = in.A;
        doc.D = in.D;
        auto copy_rows = [&](const Tensor& src, Tensor& dst, int64_t row) {
          const double* from = src.data<double>() + (b * s.seqlen + begin) * row;
          std::copy(from, from + len * row, dst.data<double>());
        };
        copy_rows(in.x, doc.x, x_row);
        copy_rows(in.dt, doc.dt, s.heads);
        copy_rows(in.Bm, doc.Bm, bc_row);
        copy_rows(in.Cm, doc.Cm, bc_row);
        if (begin == 0) {
          const double* from = in.initial_state.data<double>() + b * s.heads * pn;
          std::copy(from, from + s.heads * pn, doc.initial_state.data<double>());
        }
        Tensor doc_final = state_like(doc);
        const Tensor y_doc = run_chunked(doc, chunk, doc_final);
        for (int64_t i = 0; i < len * x_row; ++i)
          EXPECT_NEAR(y.data<double>()[(b * s.seqlen + begin) * x_row + i], y_doc.data<double>()[i],
                      tol)
              << "row " << b << " document at " << begin << " chunk " << chunk;
        if (end == s.seqlen) {
          for (int64_t i = 0; i < s.heads * pn; ++i)
            EXPECT_NEAR(final_state.data<double>()[b * s.heads * pn + i],
                        doc_final.data<double>()[i], kDoubleTol * max_abs(doc_final));
        }
        begin = end;
      }
    }
  }
}

// Gradient check of every input (loss = dot(y, w)) with a chunk size that does not divide S.
void check_gradients(SsdInputs in, int64_t chunk) {
  const Tensor w = random_tensor(in.x.shape(), 77);
  auto loss = [&] { return dot(run_chunked(in, chunk), w); };
  Tensor dx = Tensor::zeros(in.x.shape(), DType::F64);
  Tensor ddt = Tensor::zeros(in.dt.shape(), DType::F64);
  Tensor dBm = Tensor::zeros(in.Bm.shape(), DType::F64);
  Tensor dCm = Tensor::zeros(in.Cm.shape(), DType::F64);
  Tensor dA = Tensor::zeros(in.A.shape(), DType::F64);
  Tensor dD = Tensor::zeros(in.D.shape(), DType::F64);
  Tensor dinit = state_like(in);
  cpu::ssd_backward(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, chunk, in.seq_idx, in.initial_state, w,
                    dx, ddt, dA, dBm, dCm, dD, dinit);
  expect_grad_close("x", in.x, dx, loss);
  expect_grad_close("dt", in.dt, ddt, loss);
  expect_grad_close("A", in.A, dA, loss);
  expect_grad_close("Bm", in.Bm, dBm, loss);
  expect_grad_close("Cm", in.Cm, dCm, loss);
  expect_grad_close("D", in.D, dD, loss);
  expect_grad_close("initial_state", in.initial_state, dinit, loss);
}

TEST(SsdBackward, GradientsOfAllInputsMatchFiniteDifferences) {
  check_gradients(make_inputs({2, 13, 4, 3, 2, 5}, 700, true, true), 4);
}

TEST(SsdBackward, GradientsMatchFiniteDifferencesWithDocuments) {
  for (int64_t chunk : {3, 4, 5})
    check_gradients(make_inputs({2, 13, 4, 3, 2, 5}, 800, true, true, kDocs), chunk);
}

TEST(SsdBackward, GradientsMatchFiniteDifferencesWithOneGroupAndChunkOfOne) {
  check_gradients(make_inputs({1, 7, 3, 2, 1, 4}, 900, true, true), 1);
}

TEST(SsdBackward, AccumulatesDaAndDdAndSkipsUndefinedOutputs) {
  const SsdInputs in = make_inputs({2, 9, 4, 3, 2, 5}, 1000, false, false);
  const Tensor dy = random_tensor(in.x.shape(), 1001);
  Tensor dx = Tensor::zeros(in.x.shape(), DType::F64);
  Tensor ddt = Tensor::zeros(in.dt.shape(), DType::F64);
  Tensor dBm = Tensor::zeros(in.Bm.shape(), DType::F64);
  Tensor dCm = Tensor::zeros(in.Cm.shape(), DType::F64);
  Tensor dA0 = Tensor::zeros(in.A.shape(), DType::F64);
  Tensor dD, dinit;
  cpu::ssd_backward(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, 4, in.seq_idx, in.initial_state, dy, dx,
                    ddt, dA0, dBm, dCm, dD, dinit);
  Tensor dA = random_tensor(in.A.shape(), 1002);
  const Tensor before = dA.clone();
  cpu::ssd_backward(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, 4, in.seq_idx, in.initial_state, dy, dx,
                    ddt, dA, dBm, dCm, dD, dinit);
  for (int64_t h = 0; h < dA.numel(); ++h)
    EXPECT_NEAR(dA.data<double>()[h], before.data<double>()[h] + dA0.data<double>()[h], 1e-12);
}

TEST(SsdFloat, MatchesTheDoublePath) {
  const SsdInputs in = make_inputs({2, 33, 4, 8, 2, 16}, 1100, true, true, {});
  SsdInputs inf = in;
  for (Tensor* t : {&inf.x, &inf.dt, &inf.A, &inf.Bm, &inf.Cm, &inf.D, &inf.initial_state})
    *t = t->to(DType::F32);
  Tensor fin = state_like(in), fin_f = state_like(inf);
  const Tensor y = run_chunked(in, 7, fin), y_f = run_chunked(inf, 7, fin_f);
  // fp32 rounding (6e-8) over sums of a few hundred terms of the output's scale.
  EXPECT_LT(rel_diff(y_f, y), 1e-5);
  EXPECT_LT(rel_diff(fin_f, fin), 1e-5);
  const Tensor dy = random_tensor(in.x.shape(), 1101);
  const Tensor dy_f = dy.to(DType::F32);
  auto grads = [&](const SsdInputs& v, const Tensor& g) {
    std::vector<Tensor> out = {Tensor::zeros(v.x.shape(), v.x.dtype()),
                               Tensor::zeros(v.dt.shape(), v.x.dtype()),
                               Tensor::zeros(v.A.shape(), v.x.dtype()),
                               Tensor::zeros(v.Bm.shape(), v.x.dtype()),
                               Tensor::zeros(v.Cm.shape(), v.x.dtype()),
                               Tensor::zeros(v.D.shape(), v.x.dtype()),
                               state_like(v)};
    cpu::ssd_backward(v.x, v.dt, v.A, v.Bm, v.Cm, v.D, 7, v.seq_idx, v.initial_state, g, out[0],
                      out[1], out[2], out[3], out[4], out[5], out[6]);
    return out;
  };
  const std::vector<Tensor> g = grads(in, dy), g_f = grads(inf, dy_f);
  const char* names[] = {"dx", "ddt", "dA", "dBm", "dCm", "dD", "dinitial_state"};
  // dA and dD sum over every token of every row: their relative error is the largest.
  for (size_t i = 0; i < g.size(); ++i) EXPECT_LT(rel_diff(g_f[i], g[i]), 1e-4) << names[i];
}

TEST(SsdShapes, RejectsBadShapesAndChunkSizes) {
  const SsdInputs in = make_inputs({1, 5, 4, 3, 2, 5}, 1200, true, false);
  Tensor y = Tensor::zeros(in.x.shape(), DType::F64), none;
  auto forward = [&](const SsdInputs& v, int64_t chunk) {
    cpu::ssd_forward(v.x, v.dt, v.A, v.Bm, v.Cm, v.D, chunk, v.seq_idx, v.initial_state, y, none);
  };
  EXPECT_NO_THROW(forward(in, 4));
  EXPECT_THROW(forward(in, 0), Error);
  EXPECT_THROW(forward(in, -3), Error);
  Tensor y_f32 = Tensor::zeros(in.x.shape(), DType::F32);
  EXPECT_THROW(cpu::ssd_forward(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, 4, none, none, y_f32, none),
               Error);

  SsdInputs bad_groups = in;  // H = 4 heads in 3 groups
  bad_groups.Bm = random_tensor({1, 5, 3, 5}, 1);
  bad_groups.Cm = random_tensor({1, 5, 3, 5}, 2);
  EXPECT_THROW(forward(bad_groups, 4), Error);

  SsdInputs bad_len = in;  // B, C one token short
  bad_len.Bm = random_tensor({1, 4, 2, 5}, 3);
  bad_len.Cm = random_tensor({1, 4, 2, 5}, 4);
  EXPECT_THROW(forward(bad_len, 4), Error);

  SsdInputs bad_dt = in;
  bad_dt.dt = random_tensor({1, 6, 4}, 5);
  EXPECT_THROW(forward(bad_dt, 4), Error);

  SsdInputs bad_seq = in;
  bad_seq.seq_idx = Tensor::from(std::vector<int32_t>{0, 0, 1, 1}, {1, 4});
  EXPECT_THROW(forward(bad_seq, 4), Error);

  SsdInputs bad_init = in;
  bad_init.initial_state = random_tensor({1, 4, 5, 3}, 6);
  EXPECT_THROW(forward(bad_init, 4), Error);
  EXPECT_THROW(cpu::ssd_recurrence_forward(bad_groups.x, bad_groups.dt, bad_groups.A, bad_groups.Bm,
                                           bad_groups.Cm, bad_groups.D, none, none, y, none),
               Error);

  Tensor dx = Tensor::zeros(in.x.shape(), DType::F64),
         ddt = Tensor::zeros(in.dt.shape(), DType::F64);
  Tensor dA = Tensor::zeros({4}, DType::F64), dB = Tensor::zeros(in.Bm.shape(), DType::F64);
  Tensor dC = Tensor::zeros(in.Cm.shape(), DType::F64), dD = Tensor::zeros({4}, DType::F64);
  EXPECT_THROW(cpu::ssd_backward(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, 0, none, none, y, dx, ddt,
                                 dA, dB, dC, dD, none),
               Error);
  EXPECT_THROW(cpu::ssd_backward(bad_len.x, bad_len.dt, bad_len.A, bad_len.Bm, bad_len.Cm,
                                 bad_len.D, 4, none, none, y, dx, ddt, dA, dB, dC, dD, none),
               Error);
}

}  // namespace
}  // namespace nh
