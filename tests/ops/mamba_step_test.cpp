#include "ops/cpu/mamba_step.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>

#include "ops/causal_conv1d.h"
#include "ops/ssd.h"
#include "support/expect.h"
#include "support/gradcheck.h"

namespace nh {
namespace {

using test::expect_near_all;
using test::expect_error;

using cpu::conv1d_step;
using cpu::ssd_step;

using test::random_tensor;

// Token t of a [B, S, ...] tensor, as a [B, ...] tensor of the same dtype.
Tensor token(const Tensor& seq, int64_t t) {
  Shape shape = seq.shape();
  shape.erase(shape.begin() + 1);
  const int64_t batch = seq.size(0), seq_len = seq.size(1), inner = seq.numel() / (batch * seq_len);
  Tensor tok = Tensor::empty(shape, DType::F64);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < inner; ++i)
      tok.data<double>()[b * inner + i] = read_float(seq, (b * seq_len + t) * inner + i);
  return tok.to(seq.dtype());
}

// Writes a [B, ...] tensor into token t of a [B, S, ...] F64 tensor.
void put_token(Tensor& seq, int64_t t, const Tensor& tok) {
  const int64_t batch = seq.size(0), seq_len = seq.size(1), inner = seq.numel() / (batch * seq_len);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < inner; ++i)
      seq.data<double>()[(b * seq_len + t) * inner + i] = read_float(tok, b * inner + i);
}

// ---- conv1d_step ------------------------------------------------------------------------

struct ConvCase {
  int64_t batch, seq_len, channels, kernel;
  bool bias;
};

// Runs conv1d_step over the tokens of x [B, S, C] (in x's dtype) from a zero state: y [B, S, C]
// in F64, the final state left in conv_state.
Tensor conv_steps(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& conv_state) {
  const int64_t batch = x.size(0), channels = x.size(2);
  conv_state = Tensor::zeros({batch, channels, w.size(1) - 1}, x.dtype());
  Tensor y = Tensor::empty(x.shape(), DType::F64);
  for (int64_t t = 0; t < x.size(1); ++t) {
    Tensor yt = Tensor::empty({batch, channels}, x.dtype());
    conv1d_step(token(x, t), conv_state, w, bias, yt);
    put_token(y, t, yt);
  }
  return y;
}

TEST(Conv1dStep, TokenByTokenMatchesCausalConv1dForwardAndKeepsTheLastInputs) {
  const ConvCase cases[] = {
      {2, 9, 7, 4, true}, {2, 9, 7, 4, false}, {3, 2, 5, 4, true},  // S < K - 1
      {1, 6, 4, 2, true}, {2, 5, 3, 1, true},                       // K = 1: an empty state
  };
  uint64_t seed = 10;
  for (const ConvCase& c : cases) {
    const std::string tag = "B" + std::to_string(c.batch) + " S" + std::to_string(c.seq_len) +
                            " C" + std::to_string(c.channels) + " K" + std::to_string(c.kernel);
    const Tensor x = random_tensor({c.batch, c.seq_len, c.channels}, seed++);
    const Tensor w = random_tensor({c.channels, c.kernel}, seed++, 0.7);
    const Tensor bias = c.bias ? random_tensor({c.channels}, seed++) : Tensor();
    Tensor want = Tensor::empty(x.shape(), DType::F64);
    causal_conv1d_forward(x, w, bias, Tensor(), want);
    Tensor state;
    expect_near_all(conv_steps(x, w, bias, state), want, 1e-14, tag + " y");
    // state[b, c, j] = x[b, S - (K-1) + j, c], or 0 before the sequence.
    const int64_t hist = c.kernel - 1;
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t ch = 0; ch < c.channels; ++ch)
        for (int64_t j = 0; j < hist; ++j) {
          const int64_t t = c.seq_len - hist + j;
          const double expect = t < 0 ? 0.0 : read_float(x, (b * c.seq_len + t) * c.channels + ch);
          EXPECT_EQ(read_float(state, (b * c.channels + ch) * hist + j), expect)
              << tag << " state " << b << "," << ch << "," << j;
        }
  }
}

TEST(Conv1dStep, FloatStepsMatchDoubleWithinFp32Precision) {
  const Tensor x = random_tensor({2, 8, 7}, 40), w = random_tensor({7, 4}, 41, 0.7),
               bias = random_tensor({7}, 42);
  Tensor want = Tensor::empty(x.shape(), DType::F64), state;
  causal_conv1d_forward(x, w, bias, Tensor(), want);
  const Tensor got = conv_steps(x.to(DType::F32), w.to(DType::F32), bias.to(DType::F32), state);
  EXPECT_EQ(state.dtype(), DType::F32);
  expect_near_all(got, want, 1e-5, "y");
}

TEST(Conv1dStep, BadShapesAndDtypesThrowNamingTheArgument) {
  const Tensor x = random_tensor({2, 7}, 50), w = random_tensor({7, 4}, 51);
  Tensor state = Tensor::zeros({2, 7, 3}, DType::F64), y = Tensor::empty({2, 7}, DType::F64);
  EXPECT_NO_THROW(conv1d_step(x, state, w, Tensor(), y));
  Tensor x3 = random_tensor({2, 1, 7}, 52), y3 = Tensor::empty({2, 1, 7}, DType::F64);
  expect_error([&] { conv1d_step(x3, state, w, Tensor(), y3); }, "conv1d_step", "x shape");
  expect_error(
      [&] {
        conv1d_step(x, state, random_tensor({6, 4}, 53), Tensor(), y);
      },
      "conv1d_step", "w shape");
  expect_error([&] { conv1d_step(x, state, w.to(DType::F32), Tensor(), y); }, "conv1d_step",
               "w dtype");
  Tensor state_k = Tensor::zeros({2, 7, 4}, DType::F64),
         state_b = Tensor::zeros({1, 7, 3}, DType::F64);
  Tensor state_f32 = Tensor::zeros({2, 7, 3}, DType::F32);
  expect_error([&] { conv1d_step(x, state_k, w, Tensor(), y); }, "conv1d_step", "conv_state shape");
  expect_error([&] { conv1d_step(x, state_b, w, Tensor(), y); }, "conv1d_step", "conv_state shape");
  expect_error([&] { conv1d_step(x, state_f32, w, Tensor(), y); }, "conv1d_step",
               "conv_state dtype");
  expect_error([&] { conv1d_step(x, state, w, random_tensor({6}, 54), y); }, "conv1d_step",
               "bias shape");
  Tensor y_bad = Tensor::empty({2, 6}, DType::F64), y_f32 = Tensor::empty({2, 7}, DType::F32);
  expect_error([&] { conv1d_step(x, state, w, Tensor(), y_bad); }, "conv1d_step", "y shape");
  expect_error([&] { conv1d_step(x, state, w, Tensor(), y_f32); }, "conv1d_step", "y dtype");
}

// ---- ssd_step ---------------------------------------------------------------------------

struct SsdCase {
  int64_t batch, seq_len, heads, groups, head_dim, state;
  bool with_D;
};

// Inputs in the model's ranges (as tests/ops/ssd_test.cpp): dt = softplus(N(0, 1)),
// A = -exp(0.5·N(0, 1)), and a random initial state.
struct SsdInputs {
  Tensor x, dt, A, Bm, Cm, D, initial_state;
};

SsdInputs make_inputs(const SsdCase& c, uint64_t seed) {
  SsdInputs in;
  in.x = random_tensor({c.batch, c.seq_len, c.heads, c.head_dim}, seed);
  in.dt = random_tensor({c.batch, c.seq_len, c.heads}, seed + 1);
  for (int64_t i = 0; i < in.dt.numel(); ++i) {
    double& v = in.dt.data<double>()[i];
    v = std::log1p(std::exp(v));
  }
  in.A = random_tensor({c.heads}, seed + 2, 0.5);
  for (int64_t i = 0; i < in.A.numel(); ++i)
    in.A.data<double>()[i] = -std::exp(in.A.data<double>()[i]);
  in.Bm = random_tensor({c.batch, c.seq_len, c.groups, c.state}, seed + 3);
  in.Cm = random_tensor({c.batch, c.seq_len, c.groups, c.state}, seed + 4);
  if (c.with_D) in.D = random_tensor({c.heads}, seed + 5);
  in.initial_state = random_tensor({c.batch, c.heads, c.head_dim, c.state}, seed + 6);
  return in;
}

// Runs ssd_step over every token from the initial state: y [B, S, H, P] in F64; the final state
// is left in `state`.
Tensor ssd_steps(const SsdInputs& in, Tensor& state) {
  state = in.initial_state.clone();
  Tensor y = Tensor::empty(in.x.shape(), DType::F64);
  for (int64_t t = 0; t < in.x.size(1); ++t) {
    const Tensor xt = token(in.x, t);
    Tensor yt = Tensor::empty(xt.shape(), in.x.dtype());
    ssd_step(xt, token(in.dt, t), in.A, token(in.Bm, t), token(in.Cm, t), in.D, state, yt);
    put_token(y, t, yt);
  }
  return y;
}

TEST(SsdStep, TokenByTokenMatchesTheRecurrenceAndTheChunkedScanWithInitialState) {
  const SsdCase cases[] = {
      {2, 9, 6, 2, 5, 3, true}, {2, 9, 6, 2, 5, 3, false}, {1, 7, 4, 4, 2, 6, true},
      {3, 5, 3, 1, 1, 1, true}, {2, 1, 6, 3, 4, 2, true},
  };
  uint64_t seed = 100;
  for (const SsdCase& c : cases) {
    const std::string tag = "B" + std::to_string(c.batch) + " S" + std::to_string(c.seq_len) +
                            " H" + std::to_string(c.heads) + " G" + std::to_string(c.groups) +
                            " P" + std::to_string(c.head_dim) + " N" + std::to_string(c.state) +
                            (c.with_D ? " D" : "");
    const SsdInputs in = make_inputs(c, seed += 10);
    Tensor state;
    const Tensor y = ssd_steps(in, state);

    const Shape state_shape = in.initial_state.shape();
    Tensor y_rec = Tensor::empty(in.x.shape(), DType::F64);
    Tensor final_rec = Tensor::empty(state_shape, DType::F64);
    cpu::ssd_recurrence_forward(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, Tensor(), in.initial_state,
                                y_rec, final_rec);
    expect_near_all(y, y_rec, 1e-13, tag + " y vs recurrence");
    expect_near_all(state, final_rec, 1e-13, tag + " state vs recurrence");

    // The chunked scan sums in another order: rounding of a few 1e-16 per term.
    Tensor y_chunk = Tensor::empty(in.x.shape(), DType::F64);
    Tensor final_chunk = Tensor::empty(state_shape, DType::F64);
    ssd_forward(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, 4, Tensor(), in.initial_state, y_chunk,
                final_chunk);
    expect_near_all(y, y_chunk, 1e-12, tag + " y vs chunked");
    expect_near_all(state, final_chunk, 1e-12, tag + " state vs chunked");
  }
}

TEST(SsdStep, FloatStepsMatchDoubleWithinFp32Precision) {
  const SsdInputs in = make_inputs({2, 6, 6, 2, 5, 3, true}, 200);
  auto f32 = [](const Tensor& t) { return t.to(DType::F32); };
  const SsdInputs f{f32(in.x), f32(in.dt),           f32(in.A), f32(in.Bm), f32(in.Cm),
                    f32(in.D), f32(in.initial_state)};
  Tensor state, state_f;
  const Tensor y = ssd_steps(in, state), y_f = ssd_steps(f, state_f);
  EXPECT_EQ(state_f.dtype(), DType::F32);
  expect_near_all(y_f, y, 1e-4, "y");
  expect_near_all(state_f, state, 1e-4, "state");
}

TEST(SsdStep, BadShapesAndDtypesThrowNamingTheArgument) {
  const SsdInputs in = make_inputs({2, 1, 6, 2, 5, 3, true}, 300);
  const Tensor x = token(in.x, 0), dt = token(in.dt, 0), Bm = token(in.Bm, 0), Cm = token(in.Cm, 0);
  Tensor state = in.initial_state.clone(), y = Tensor::empty(x.shape(), DType::F64);
  EXPECT_NO_THROW(ssd_step(x, dt, in.A, Bm, Cm, in.D, state, y));
  auto step = [&](const Tensor& x_, const Tensor& dt_, const Tensor& A_, const Tensor& Bm_,
                  const Tensor& Cm_, const Tensor& D_, Tensor state_, Tensor y_) {
    return [=]() mutable { ssd_step(x_, dt_, A_, Bm_, Cm_, D_, state_, y_); };
  };
  const Tensor bad_groups = random_tensor({2, 4, 3}, 301);  // G = 4 does not divide H = 6
  expect_error(step(in.x, dt, in.A, Bm, Cm, in.D, state, in.x), "ssd_step", "x shape");
  expect_error(step(x, dt, in.A, bad_groups, bad_groups, in.D, state, y), "ssd_step", "n_groups");
  expect_error(step(x, dt, in.A, Bm, random_tensor({2, 2, 4}, 302), in.D, state, y), "ssd_step",
               "Cm shape");
  expect_error(step(x, random_tensor({2, 5}, 303), in.A, Bm, Cm, in.D, state, y), "ssd_step",
               "dt shape");
  expect_error(step(x, dt, random_tensor({5}, 304), Bm, Cm, in.D, state, y), "ssd_step", "A shape");
  expect_error(step(x, dt, in.A, Bm, Cm, random_tensor({5}, 305), state, y), "ssd_step", "D shape");
  expect_error(step(x, dt, in.A, Bm, Cm, in.D, random_tensor({2, 6, 5, 4}, 306), y), "ssd_step",
               "state shape");
  expect_error(step(x, dt, in.A, Bm, Cm, in.D, state.to(DType::F32), y), "ssd_step", "state dtype");
  expect_error(step(x, dt.to(DType::F32), in.A, Bm, Cm, in.D, state, y), "ssd_step", "dt dtype");
  expect_error(step(x, dt, in.A, Bm, Cm, in.D, state, Tensor::empty({2, 6, 4}, DType::F64)),
               "ssd_step", "y shape");
}

}  // namespace
}  // namespace nh
