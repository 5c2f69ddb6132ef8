// GPU SSD against the CPU reference: y and the final state, then every gradient, for shapes from
// one token to several 128- and 256-token chunks with 128-wide states, with and without D,
// documents (boundaries on chunk edges and inside chunks, index values reused) and states.
#include "ops/ssd.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda/harness.h"

namespace nh {
namespace {

using test::expect_close;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;

struct SsdCase {
  int64_t batch, seqlen, heads, head_dim, groups, state, chunk;
};

struct SsdOptions {
  bool with_D, with_docs, with_states;
};

// Every combination the op treats differently: D or not, documents or not, states or not.
constexpr SsdOptions kOptions[] = {
    {false, false, false}, {true, true, true}, {true, false, true}, {false, true, false}};

std::string label(const SsdCase& c, const SsdOptions& o, DType dtype) {
  return "(" + std::to_string(c.batch) + "," + std::to_string(c.seqlen) + "," +
         std::to_string(c.heads) + "," + std::to_string(c.head_dim) + "," +
         std::to_string(c.groups) + "," + std::to_string(c.state) + "," + std::to_string(c.chunk) +
         ")" + (o.with_D ? " D" : "") + (o.with_docs ? " docs" : "") +
         (o.with_states ? " states" : "") + " " + dtype_name(dtype);
}

// Document indices per row: a document starts at the first chunk edge, in the middle of the
// second chunk, at token 1 (a one-token document) and at random tokens (about two a chunk), so
// documents both cross chunk edges and end inside chunks. Index values cycle 0, 1, 2, so a row
// reuses them: only a change of index starts a document.
Tensor make_seq_idx(const SsdCase& c, uint64_t seed) {
  std::vector<int32_t> idx(c.batch * c.seqlen);
  Rng rng(seed);
  for (int64_t b = 0; b < c.batch; ++b) {
    int32_t doc = 0;
    for (int64_t t = 0; t < c.seqlen; ++t) {
      const bool starts = t == 1 || t == c.chunk || t == c.chunk + c.chunk / 2 + 1 + b ||
                          rng.uniform() < 2.0 / double(c.chunk + 1);
      if (t > 0 && starts) doc = (doc + 1) % 3;
      idx[b * c.seqlen + t] = doc;
    }
  }
  return Tensor::from(idx, {c.batch, c.seqlen});
}

// CPU fp32 inputs in the model's ranges (as tests/ops/ssd_test.cpp): dt = softplus(N(0, 1)),
// A = −exp(0.5·N(0, 1)), so the decays exp(dt·A) stay inside (0, 1).
struct SsdInputs {
  Tensor x, dt, A, Bm, Cm, D, seq_idx, initial_state, dy;
};

SsdInputs make_inputs(const SsdCase& c, const SsdOptions& o, uint64_t seed) {
  SsdInputs in;
  in.x = random_cpu({c.batch, c.seqlen, c.heads, c.head_dim}, seed);
  in.dt = random_cpu({c.batch, c.seqlen, c.heads}, seed + 1);
  for (int64_t i = 0; i < in.dt.numel(); ++i) {
    float& v = in.dt.data<float>()[i];
    v = std::log1p(std::exp(v));
  }
  in.A = random_cpu({c.heads}, seed + 2, 0.5);
  for (int64_t i = 0; i < in.A.numel(); ++i)
    in.A.data<float>()[i] = -std::exp(in.A.data<float>()[i]);
  in.Bm = random_cpu({c.batch, c.seqlen, c.groups, c.state}, seed + 3);
  in.Cm = random_cpu({c.batch, c.seqlen, c.groups, c.state}, seed + 4);
  if (o.with_D) in.D = random_cpu({c.heads}, seed + 5);
  if (o.with_docs) in.seq_idx = make_seq_idx(c, seed + 6);
  if (o.with_states)
    in.initial_state = random_cpu({c.batch, c.heads, c.head_dim, c.state}, seed + 7);
  in.dy = random_cpu(in.x.shape(), seed + 8);
  return in;
}

Tensor gpu_or_none(const Tensor& t, DType dtype) {
  return t.defined() ? to_gpu(t, dtype) : Tensor();
}

// Relative tolerances. fp32: the harness's (summation order only), except for dA: dA sums
// dt_t·Σ_{k ≥ t} dcs_k over every token, i.e. each dcs_k (a difference of terms ~100 times
// larger) weighted by Σ_{t ≤ k} dt_t, up to ~180 in a chunk of 256 with these dt ≈ 0.7; measured
// against fp64, the fp32 CPU itself is off by up to 4e-5 there and the GPU's order by as much,
// so 5e-4. bf16: every input and output is rounded to 8 significant bits (2^-9 relative), and a
// rounded dt·A shifts every later cumulative sum of its chunk, so each decay exp(cs_i − cs_j)
// moves by up to |cs_i − cs_j|·2^-9 relative; y, the states and the sums over every token (dA,
// dD) add those up: up to 1.3e-2 here (dD), too close to the harness's 2e-2, so 3e-2.
double tolerance(DType dtype) { return dtype == DType::BF16 ? 3e-2 : test::tolerance(dtype); }
double tolerance_dA(DType dtype) { return dtype == DType::BF16 ? 3e-2 : 5e-4; }

// A nonzero starting value for an accumulated gradient g: g·(0.5 + U[0, 1)), of g's sign and
// scale, so that the accumulated sum never cancels to a tiny value whose relative error would
// mean nothing, and a kernel that overwrote instead of adding would be off by a third or more.
Tensor prefill_for(const Tensor& g, uint64_t seed) {
  Rng rng(seed);
  Tensor t = g.clone();
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] *= float(0.5 + rng.uniform());
  return t;
}

void add_into(Tensor& acc, const Tensor& v) {
  for (int64_t i = 0; i < acc.numel(); ++i) acc.data<float>()[i] += v.data<float>()[i];
}

// Runs forward and backward on the CPU (fp32) and on the GPU in `dtype` and compares every
// output. The GPU's overwritten outputs start as random values (so anything left unwritten
// shows), dA and dD start from nonzero values (they accumulate).
void check_against_cpu(const SsdCase& c, const SsdOptions& o, DType dtype, uint64_t seed) {
  const std::string name = label(c, o, dtype);
  SCOPED_TRACE(name);
  std::printf("%s\n", name.c_str());
  const SsdInputs in = make_inputs(c, o, seed);
  const double tol = tolerance(dtype);
  const Shape state_shape = {c.batch, c.heads, c.head_dim, c.state};

  Tensor y_ref = Tensor::zeros(in.x.shape(), DType::F32);
  Tensor final_ref = o.with_states ? Tensor::zeros(state_shape, DType::F32) : Tensor();
  cpu::ssd_forward(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, c.chunk, in.seq_idx, in.initial_state,
                   y_ref, final_ref);

  const Tensor x = to_gpu(in.x, dtype), dt = to_gpu(in.dt, dtype), A = to_gpu(in.A, dtype);
  const Tensor Bm = to_gpu(in.Bm, dtype), Cm = to_gpu(in.Cm, dtype), D = gpu_or_none(in.D, dtype);
  const Tensor seq_idx = gpu_or_none(in.seq_idx, dtype);
  const Tensor initial_state = gpu_or_none(in.initial_state, dtype);
  Tensor y = to_gpu(random_cpu(in.x.shape(), seed + 20), dtype);
  Tensor final_state = o.with_states ? to_gpu(random_cpu(state_shape, seed + 21), dtype) : Tensor();
  cuda::ssd_forward(x, dt, A, Bm, Cm, D, c.chunk, seq_idx, initial_state, y, final_state);
  expect_close("y", y, y_ref, tol);
  if (o.with_states) expect_close("final_state", final_state, final_ref, tol);

  // CPU gradients from zero dA, dD; the accumulated reference is prefill + gradient.
  Tensor dx_ref = Tensor::zeros(in.x.shape(), DType::F32);
  Tensor ddt_ref = Tensor::zeros(in.dt.shape(), DType::F32);
  Tensor dBm_ref = Tensor::zeros(in.Bm.shape(), DType::F32);
  Tensor dCm_ref = Tensor::zeros(in.Cm.shape(), DType::F32);
  Tensor dA_ref = Tensor::zeros({c.heads}, DType::F32);
  Tensor dD_ref = o.with_D ? Tensor::zeros({c.heads}, DType::F32) : Tensor();
  Tensor dinit_ref = o.with_states ? Tensor::zeros(state_shape, DType::F32) : Tensor();
  cpu::ssd_backward(in.x, in.dt, in.A, in.Bm, in.Cm, in.D, c.chunk, in.seq_idx, in.initial_state,
                    in.dy, dx_ref, ddt_ref, dA_ref, dBm_ref, dCm_ref, dD_ref, dinit_ref);
  const Tensor dA0 = prefill_for(dA_ref, seed + 30);
  add_into(dA_ref, dA0);
  Tensor dD0;
  if (o.with_D) {
    dD0 = prefill_for(dD_ref, seed + 31);
    add_into(dD_ref, dD0);
  }

  const Tensor dy = to_gpu(in.dy, dtype);
  Tensor dx = to_gpu(random_cpu(in.x.shape(), seed + 40), dtype);
  Tensor ddt = to_gpu(random_cpu(in.dt.shape(), seed + 41), dtype);
  Tensor dBm = to_gpu(random_cpu(in.Bm.shape(), seed + 42), dtype);
  Tensor dCm = to_gpu(random_cpu(in.Cm.shape(), seed + 43), dtype);
  Tensor dA = to_gpu(dA0, dtype);
  Tensor dD = o.with_D ? to_gpu(dD0, dtype) : Tensor();
  Tensor dinit = o.with_states ? to_gpu(random_cpu(state_shape, seed + 44), dtype) : Tensor();
  cuda::ssd_backward(x, dt, A, Bm, Cm, D, c.chunk, seq_idx, initial_state, dy, dx, ddt, dA, dBm,
                     dCm, dD, dinit);
  expect_close("dx", dx, dx_ref, tol);
  expect_close("ddt", ddt, ddt_ref, tol);
  expect_close("dBm", dBm, dBm_ref, tol);
  expect_close("dCm", dCm, dCm_ref, tol);
  expect_close("dA (accumulated)", dA, dA_ref, tolerance_dA(dtype));
  if (o.with_D) expect_close("dD (accumulated)", dD, dD_ref, tol);
  if (o.with_states) expect_close("dinitial_state", dinit, dinit_ref, tol);
}

// Every version of the kernels (the fused bf16 ones apply only to bf16 and their shapes; the
// others fall back to the tile kernels).
void check_all_options(const SsdCase& c, uint64_t seed) {
  for (DType dtype : {DType::F32, DType::BF16})
    for (const SsdOptions& o : kOptions) {
      seed += 100;
      test::for_each_kernel_version("ssd", [&] { check_against_cpu(c, o, dtype, seed); });
    }
}

TEST(SsdCuda, MatchesCpuOnASingleToken) { check_all_options({1, 1, 1, 1, 1, 1, 1}, 1000); }

TEST(SsdCuda, MatchesCpuWhenTheChunkDoesNotDivideTheLength) {
  check_all_options({1, 13, 3, 4, 1, 5, 4}, 2000);
}

TEST(SsdCuda, MatchesCpuWithGroupedHeadsAndSeveralRows) {
  check_all_options({2, 33, 4, 8, 2, 16, 8}, 3000);
}

TEST(SsdCuda, MatchesCpuOverSeveralChunksOf64) {
  check_all_options({1, 200, 8, 16, 2, 32, 64}, 4000);
}

TEST(SsdCuda, MatchesCpuOnModelSizedHeadsAndStates) {
  check_all_options({2, 300, 6, 64, 3, 128, 128}, 5000);
}

// The shapes the fused bf16 kernels take (ops/cuda/ssd_fused.cuh): a whole group of 16 heads as
// in the models, a last chunk of a few tokens, and head_dim 80 with a 256-wide state.
TEST(SsdCuda, MatchesCpuWithSixteenHeadsAGroup) {
  check_all_options({1, 390, 16, 64, 1, 128, 128}, 5500);
}

TEST(SsdCuda, MatchesCpuWithHeadDim80AndState256) {
  check_all_options({1, 260, 4, 80, 2, 256, 128}, 5700);
}

// P and N above one 64-wide tile and not multiples of it, and chunks of 256 (four row tiles).
TEST(SsdCuda, MatchesCpuWhenHeadDimAndStateSpanPartialTiles) {
  check_all_options({1, 300, 2, 80, 1, 100, 256}, 6000);
}

// The tile kernels in fp32, and the fused ones in bf16.
void check_deterministic(const SsdCase& c, DType f) {
  const SsdInputs in = make_inputs(c, {true, true, true}, 7000);
  const Tensor x = to_gpu(in.x, f), dt = to_gpu(in.dt, f), A = to_gpu(in.A, f);
  const Tensor Bm = to_gpu(in.Bm, f), Cm = to_gpu(in.Cm, f), D = to_gpu(in.D, f);
  const Tensor seq_idx = to_gpu(in.seq_idx);
  const Tensor initial_state = to_gpu(in.initial_state, f), dy = to_gpu(in.dy, f);
  auto grads = [&] {
    std::vector<Tensor> g = {test::gpu_empty(in.x.shape(), f),
                             test::gpu_empty(in.dt.shape(), f),
                             test::gpu_zeros({c.heads}, f),
                             test::gpu_empty(in.Bm.shape(), f),
                             test::gpu_empty(in.Cm.shape(), f),
                             test::gpu_zeros({c.heads}, f),
                             test::gpu_empty(in.initial_state.shape(), f)};
    cuda::ssd_backward(x, dt, A, Bm, Cm, D, c.chunk, seq_idx, initial_state, dy, g[0], g[1], g[2],
                       g[3], g[4], g[5], g[6]);
    return g;
  };
  const std::vector<Tensor> first = grads(), second = grads();
  for (size_t k = 0; k < first.size(); ++k) {
    const Tensor a = to_cpu(first[k]), b = to_cpu(second[k]);
    for (int64_t i = 0; i < a.numel(); ++i)
      ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]) << "gradient " << k << " element " << i;
  }
}

TEST(SsdCuda, BackwardIsBitwiseDeterministic) {
  check_deterministic({2, 150, 4, 32, 2, 48, 64}, DType::F32);
  check_deterministic({2, 300, 4, 64, 2, 128, 128}, DType::BF16);
}

TEST(SsdCuda, RejectsBadChunkSizesShapesAndCpuTensors) {
  const SsdCase c{1, 5, 4, 3, 2, 5, 4};
  const SsdInputs in = make_inputs(c, {true, false, false}, 8000);
  const Tensor x = to_gpu(in.x), dt = to_gpu(in.dt), A = to_gpu(in.A), Bm = to_gpu(in.Bm);
  const Tensor Cm = to_gpu(in.Cm), D = to_gpu(in.D), none;
  Tensor y = test::gpu_empty(in.x.shape(), DType::F32), no_state;
  EXPECT_NO_THROW(cuda::ssd_forward(x, dt, A, Bm, Cm, D, 4, none, none, y, no_state));
  EXPECT_THROW(cuda::ssd_forward(x, dt, A, Bm, Cm, D, 0, none, none, y, no_state), Error);
  const Tensor short_B = to_gpu(random_cpu({1, 4, 2, 5}, 1));
  EXPECT_THROW(cuda::ssd_forward(x, dt, A, short_B, Cm, D, 4, none, none, y, no_state), Error);
  EXPECT_THROW(cuda::ssd_forward(x, in.dt, A, Bm, Cm, D, 4, none, none, y, no_state), Error);
  Tensor y_bf16 = test::gpu_empty(in.x.shape(), DType::BF16);
  EXPECT_THROW(cuda::ssd_forward(x, dt, A, Bm, Cm, D, 4, none, none, y_bf16, no_state), Error);
}

}  // namespace
}  // namespace nh
