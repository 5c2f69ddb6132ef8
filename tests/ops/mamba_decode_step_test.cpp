#include "ops/mamba_decode_step.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "ops/causal_conv1d.h"
#include "ops/mamba_dt.h"
#include "ops/cpu/mamba_step.h"
#include "ops/ssd.h"
#include "support/expect.h"
#include "support/gradcheck.h"

namespace nh {
namespace {

using test::expect_near_all;
using test::expect_error;

using test::random_tensor;

constexpr double kInf = std::numeric_limits<double>::infinity();

struct StepCase {
  int64_t state_rows, heads, head_dim, groups, state, kernel;
  bool bias, with_D;
  double dt_min, dt_max;
  int64_t d_inner() const { return heads * head_dim; }
  int64_t conv_dim() const { return d_inner() + 2 * groups * state; }
  int64_t width() const { return d_inner() + conv_dim() + heads; }
};

std::string describe(const StepCase& c) {
  return "R" + std::to_string(c.state_rows) + " H" + std::to_string(c.heads) + " P" +
         std::to_string(c.head_dim) + " G" + std::to_string(c.groups) + " N" +
         std::to_string(c.state) + " K" + std::to_string(c.kernel) + (c.bias ? " bias" : "") +
         (c.with_D ? " D" : "");
}

// The layer's parameters in the model's ranges: A = -exp(A_log) of order 1, dt around softplus(-1).
struct Weights {
  Tensor conv_w, conv_b, dt_bias, A_log, D;
};

Weights make_weights(const StepCase& c, uint64_t seed) {
  Weights w;
  w.conv_w = random_tensor({c.conv_dim(), c.kernel}, seed, 0.5);
  if (c.bias) w.conv_b = random_tensor({c.conv_dim()}, seed + 1, 0.5);
  w.dt_bias = random_tensor({c.heads}, seed + 2, 0.5, DType::F64, -1.0);
  w.A_log = random_tensor({c.heads}, seed + 3, 0.5);
  if (c.with_D) w.D = random_tensor({c.heads}, seed + 4);
  return w;
}

// Columns [begin, end) of a [..., W] tensor, copied.
Tensor cols(const Tensor& t, int64_t begin, int64_t end) {
  const int64_t width = t.size(-1), lead = t.numel() / width;
  Shape shape = t.shape();
  shape.back() = end - begin;
  Tensor r = Tensor::empty(shape, DType::F64);
  for (int64_t i = 0; i < lead; ++i)
    std::copy_n(t.data<double>() + i * width + begin, end - begin,
                r.data<double>() + i * (end - begin));
  return r;
}

// Row `from` of src to row `to` of dst, both F64 with rows along dimension 0.
void copy_row(const Tensor& src, int64_t from, Tensor& dst, int64_t to) {
  const int64_t n = src.numel() / src.size(0);
  std::copy_n(src.data<double>() + from * n, n, dst.data<double>() + to * n);
}

// One step as the existing ops compose it over the batch's real entries, gathered.
void composed_step(const StepCase& c, const Weights& w, const Tensor& zxbcdt,
                   const std::vector<int32_t>& rows, Tensor& conv_state, Tensor& ssm_state,
                   Tensor& y) {
  std::vector<int64_t> entries;
  for (size_t b = 0; b < rows.size(); ++b)
    if (rows[b] >= 0) entries.push_back(int64_t(b));
  const int64_t n = int64_t(entries.size()), di = c.d_inner(), gn = c.groups * c.state;
  Tensor in = Tensor::empty({n, c.width()}, DType::F64);
  Tensor cs = Tensor::empty({n, c.conv_dim(), c.kernel - 1}, DType::F64);
  Tensor ss = Tensor::empty({n, c.heads, c.head_dim, c.state}, DType::F64);
  for (int64_t i = 0; i < n; ++i) {
    copy_row(zxbcdt, entries[i], in, i);
    copy_row(conv_state, rows[entries[i]], cs, i);
    copy_row(ssm_state, rows[entries[i]], ss, i);
  }
  Tensor xbc = Tensor::empty({n, c.conv_dim()}, DType::F64);
  cpu::conv1d_step(cols(in, di, di + c.conv_dim()), cs, w.conv_w, w.conv_b, xbc);
  Tensor dt = Tensor::empty({n, c.heads}, DType::F64), A = Tensor::empty({c.heads}, DType::F64);
  mamba_dt_forward(cols(in, di + c.conv_dim(), c.width()), w.dt_bias, c.dt_min, c.dt_max, dt);
  mamba_a_forward(w.A_log, A);
  Tensor yn = Tensor::empty({n, c.heads, c.head_dim}, DType::F64);
  cpu::ssd_step(cols(xbc, 0, di).reshape({n, c.heads, c.head_dim}), dt, A,
           cols(xbc, di, di + gn).reshape({n, c.groups, c.state}),
           cols(xbc, di + gn, di + 2 * gn).reshape({n, c.groups, c.state}), w.D, ss, yn);
  y.fill(0.0);
  for (int64_t i = 0; i < n; ++i) {
    copy_row(cs, i, conv_state, rows[entries[i]]);
    copy_row(ss, i, ssm_state, rows[entries[i]]);
    copy_row(yn, i, y, entries[i]);
  }
}

TEST(MambaDecodeStep, EqualsTheStepOpsComposedOverSeveralStepsWithPermutedAndPaddingRows) {
  const StepCase cases[] = {
      {4, 6, 3, 2, 5, 4, true, true, 0.0, kInf},
      {3, 5, 2, 1, 4, 2, false, false, 0.0, kInf},  // H = 5, G = 1, K = 2
      {5, 3, 4, 3, 2, 4, true, false, 0.3, 1.5},    // the clamp active at both ends
      {2, 4, 1, 4, 3, 2, false, true, 0.05, 2.0},
  };
  // Per step the entries' rows: permuted, with padding entries (-1); the third step drops one.
  const std::vector<std::vector<int32_t>> steps_rows[] = {
      {{2, -1, 0}, {2, -1, 0}, {-1, -1, 0}, {2, 3, 0}},
      {{1, 2, -1, 0}, {1, 2, -1, 0}, {0, 2, -1, 1}},
      {{4, 0, -1, 2, 3}, {4, 0, -1, 2, 3}, {3, 0, 4, -1, -1}},
      {{1}, {-1}, {1}, {0}},
  };
  uint64_t seed = 10;
  for (size_t k = 0; k < std::size(cases); ++k) {
    const StepCase& c = cases[k];
    const Weights w = make_weights(c, seed += 10);
    Tensor conv_state = random_tensor({c.state_rows, c.conv_dim(), c.kernel - 1}, seed + 5);
    Tensor ssm_state = random_tensor({c.state_rows, c.heads, c.head_dim, c.state}, seed + 6);
    Tensor conv_want = conv_state.clone(), ssm_want = ssm_state.clone();
    for (size_t t = 0; t < steps_rows[k].size(); ++t) {
      const std::vector<int32_t>& rows = steps_rows[k][t];
      const int64_t batch = int64_t(rows.size());
      const Tensor zxbcdt = random_tensor({batch, c.width()}, seed + 7 + t);
      Tensor y = Tensor::empty({batch, c.heads, c.head_dim}, DType::F64), y_want = y.clone();
      mamba_decode_step(zxbcdt, Tensor::from(rows, {batch}), w.conv_w, w.conv_b, w.dt_bias, w.A_log,
                        w.D, c.dt_min, c.dt_max, c.groups, c.state, conv_state, ssm_state, y);
      composed_step(c, w, zxbcdt, rows, conv_want, ssm_want, y_want);
      // The same ops on the same values: equal but for the order of a few double sums.
      const std::string tag = describe(c) + " step " + std::to_string(t);
      expect_near_all(y, y_want, 1e-14, tag + " y");
      expect_near_all(conv_state, conv_want, 1e-14, tag + " conv_state");
      expect_near_all(ssm_state, ssm_want, 1e-14, tag + " ssm_state");
    }
  }
}

TEST(MambaDecodeStep, StepsOverSequencesMatchCausalConv1dAndTheChunkedScan) {
  const StepCase c{3, 4, 3, 2, 5, 4, true, true, 0.01, 3.0};
  const std::vector<int32_t> rows = {2, 0};  // row 1 is not stepped
  const int64_t batch = 2, seq = 7, di = c.d_inner(), gn = c.groups * c.state;
  const Weights w = make_weights(c, 100);
  const Tensor zx = random_tensor({batch, seq, c.width()}, 101);
  const Tensor ssm_start = random_tensor({c.state_rows, c.heads, c.head_dim, c.state}, 102);
  Tensor conv_state = random_tensor({c.state_rows, c.conv_dim(), c.kernel - 1}, 103);
  for (int32_t r : rows)  // a sequence starts from an empty convolution window
    std::fill_n(conv_state.data<double>() + r * conv_state.numel() / c.state_rows,
                conv_state.numel() / c.state_rows, 0.0);
  const Tensor conv_start = conv_state.clone();
  Tensor ssm_state = ssm_start.clone();
  Tensor y = Tensor::empty({batch, seq, c.heads, c.head_dim}, DType::F64);
  for (int64_t t = 0; t < seq; ++t) {
    Tensor in = Tensor::empty({batch, c.width()}, DType::F64);
    Tensor yt = Tensor::empty({batch, c.heads, c.head_dim}, DType::F64);
    for (int64_t b = 0; b < batch; ++b)
      std::copy_n(zx.data<double>() + (b * seq + t) * c.width(), c.width(),
                  in.data<double>() + b * c.width());
    mamba_decode_step(in, Tensor::from(rows, {batch}), w.conv_w, w.conv_b, w.dt_bias, w.A_log, w.D,
                      c.dt_min, c.dt_max, c.groups, c.state, conv_state, ssm_state, yt);
    const int64_t n = c.heads * c.head_dim;
    for (int64_t b = 0; b < batch; ++b)
      std::copy_n(yt.data<double>() + b * n, n, y.data<double>() + (b * seq + t) * n);
  }

  const Tensor xbc_raw = cols(zx, di, di + c.conv_dim());
  Tensor xbc = Tensor::empty(xbc_raw.shape(), DType::F64);
  causal_conv1d_forward(xbc_raw, w.conv_w, w.conv_b, Tensor(), xbc);
  Tensor dt = Tensor::empty({batch, seq, c.heads}, DType::F64);
  Tensor A = Tensor::empty({c.heads}, DType::F64);
  mamba_dt_forward(cols(zx, di + c.conv_dim(), c.width()), w.dt_bias, c.dt_min, c.dt_max, dt);
  mamba_a_forward(w.A_log, A);
  Tensor initial = Tensor::empty({batch, c.heads, c.head_dim, c.state}, DType::F64);
  for (int64_t b = 0; b < batch; ++b) copy_row(ssm_start, rows[b], initial, b);
  Tensor y_want = Tensor::empty(y.shape(), DType::F64), final_state = initial.clone();
  ssd_forward(cols(xbc, 0, di).reshape({batch, seq, c.heads, c.head_dim}), dt, A,
              cols(xbc, di, di + gn).reshape({batch, seq, c.groups, c.state}),
              cols(xbc, di + gn, di + 2 * gn).reshape({batch, seq, c.groups, c.state}), w.D, 3,
              Tensor(), initial, y_want, final_state);
  // The chunked scan sums in another order: rounding of a few 1e-16 per term.
  expect_near_all(y, y_want, 1e-12, "y");
  for (int64_t b = 0; b < batch; ++b) {
    Tensor got = ssm_state.slice0(rows[b], rows[b] + 1), want = final_state.slice0(b, b + 1);
    expect_near_all(got, want, 1e-12, "ssm_state row " + std::to_string(rows[b]));
    // The convolution window holds the last K - 1 inputs.
    for (int64_t ch = 0; ch < c.conv_dim(); ++ch)
      for (int64_t j = 0; j < c.kernel - 1; ++j) {
        const int64_t tok = seq - (c.kernel - 1) + j;
        EXPECT_EQ(read_float(conv_state, (rows[b] * c.conv_dim() + ch) * (c.kernel - 1) + j),
                  read_float(xbc_raw, (b * seq + tok) * c.conv_dim() + ch));
      }
  }
  expect_near_all(ssm_state.slice0(1, 2), ssm_start.slice0(1, 2), 0, "untouched ssm_state row");
  expect_near_all(conv_state.slice0(1, 2), conv_start.slice0(1, 2), 0, "untouched conv_state row");
}

TEST(MambaDecodeStep, FloatMatchesDoubleWithinFp32Precision) {
  const StepCase c{3, 4, 8, 2, 16, 4, true, true, 0.0, kInf};
  const Weights w = make_weights(c, 200);
  const std::vector<int32_t> rows = {1, -1, 2};
  auto f32 = [](const Tensor& t) { return t.defined() ? t.to(DType::F32) : Tensor(); };
  Tensor conv = random_tensor({3, c.conv_dim(), 3}, 201), ssm = random_tensor({3, 4, 8, 16}, 202);
  Tensor conv_f = f32(conv), ssm_f = f32(ssm);
  for (int t = 0; t < 3; ++t) {
    const Tensor zxbcdt = random_tensor({3, c.width()}, 203 + t);
    Tensor y = Tensor::empty({3, 4, 8}, DType::F64), y_f = Tensor::empty({3, 4, 8}, DType::F32);
    mamba_decode_step(zxbcdt, Tensor::from(rows, {3}), w.conv_w, w.conv_b, w.dt_bias, w.A_log, w.D,
                      c.dt_min, c.dt_max, c.groups, c.state, conv, ssm, y);
    mamba_decode_step(f32(zxbcdt), Tensor::from(rows, {3}), f32(w.conv_w), f32(w.conv_b),
                      f32(w.dt_bias), f32(w.A_log), f32(w.D), c.dt_min, c.dt_max, c.groups, c.state,
                      conv_f, ssm_f, y_f);
    // Values of order 1 through sums of 16 terms in fp32.
    expect_near_all(y_f, y, 1e-4, "y step " + std::to_string(t));
  }
  expect_near_all(ssm_f, ssm, 1e-4, "ssm_state");
}

void expect_step_error(const std::function<void()>& call, const std::string& arg) {
  expect_error(call, "mamba_decode_step", arg);
}

TEST(MambaDecodeStep, BadShapesDtypesAndRowsThrowNamingTheArgument) {
  const StepCase c{3, 4, 3, 2, 5, 4, true, true, 0.0, kInf};  // C = 32, width 48
  const Weights w = make_weights(c, 300);
  const Tensor zxbcdt = random_tensor({2, c.width()}, 301),
               rows = Tensor::from<int32_t>({2, 0}, {2});
  const Tensor conv_state = random_tensor({3, c.conv_dim(), 3}, 302);
  const Tensor ssm_state = random_tensor({3, 4, 3, 5}, 303),
               y = Tensor::empty({2, 4, 3}, DType::F64);
  struct Args {
    Tensor zxbcdt, rows, conv_w, conv_b, dt_bias, A_log, D;
    int64_t groups = 2, state = 5;
    Tensor conv_state, ssm_state, y;
  };
  const Args good{zxbcdt, rows, w.conv_w, w.conv_b,   w.dt_bias, w.A_log,
                  w.D,    2,    5,        conv_state, ssm_state, y};
  auto run = [](Args a) {
    return [a]() mutable {
      mamba_decode_step(a.zxbcdt, a.rows, a.conv_w, a.conv_b, a.dt_bias, a.A_log, a.D, 0.0, kInf,
                        a.groups, a.state, a.conv_state, a.ssm_state, a.y);
    };
  };
  auto with = [&](const std::function<void(Args&)>& change) {
    Args a = good;
    a.conv_state = good.conv_state.clone();
    a.ssm_state = good.ssm_state.clone();
    change(a);
    return run(a);
  };
  EXPECT_NO_THROW(with([](Args&) {})());
  expect_step_error(with([](Args& a) { a.zxbcdt = random_tensor({2, 1, 48}, 304); }), "zxbcdt shape");
  expect_step_error(with([](Args& a) { a.zxbcdt = random_tensor({2, 47}, 305); }), "zxbcdt shape");
  expect_step_error(with([](Args& a) { a.rows = Tensor::from<int64_t>({2, 0}, {2}); }), "rows dtype");
  expect_step_error(with([](Args& a) { a.rows = Tensor::from<int32_t>({2, 0, 1}, {3}); }), "rows shape");
  expect_step_error(with([](Args& a) { a.conv_w = random_tensor({33, 4}, 306); }), "conv_w shape");
  expect_step_error(with([](Args& a) { a.conv_b = random_tensor({31}, 307); }), "conv_b shape");
  expect_step_error(with([](Args& a) { a.dt_bias = random_tensor({5}, 308); }), "dt_bias shape");
  expect_step_error(with([](Args& a) { a.A_log = a.A_log.to(DType::F32); }), "A_log dtype");
  expect_step_error(with([](Args& a) { a.D = random_tensor({3}, 309); }), "D shape");
  expect_step_error(with([](Args& a) {
                 a.conv_state = random_tensor({3, 32, 4}, 310);
               }),
               "conv_state shape");
  expect_step_error(with([](Args& a) { a.ssm_state = a.ssm_state.to(DType::F32); }), "ssm_state dtype");
  expect_step_error(with([](Args& a) {
                 a.ssm_state = random_tensor({3, 4, 15}, 311);
               }),
               "ssm_state shape");
  expect_step_error(with([](Args& a) { a.state = 4; }), "ssm_state shape");
  expect_step_error(with([](Args& a) { a.groups = 3; }), "groups");
  expect_step_error(with([](Args& a) { a.y = Tensor::empty({2, 4, 4}, DType::F64); }), "y shape");
  expect_step_error(with([](Args& a) { a.rows = Tensor::from<int32_t>({3, 0}, {2}); }), "rows[0]");
  expect_step_error(with([](Args& a) { a.rows = Tensor::from<int32_t>({1, 1}, {2}); }), "rows[1]");
  EXPECT_NO_THROW(with([](Args& a) { a.rows = Tensor::from<int32_t>({-1, -1}, {2}); })());
}

}  // namespace
}  // namespace nh
