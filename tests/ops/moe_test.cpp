#include "ops/moe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "support/expect.h"
#include "support/gradcheck.h"

namespace nh {
namespace {

using test::dot;
using test::expect_grad_close;
using test::random_tensor;

// The router written out plainly in double, one token at a time, following transformers'
// NemotronHTopkRouter step by step; strict comparisons pick the lower index on ties.
struct RouteReference {
  std::vector<std::vector<int64_t>> idx;  // [T][k], best first
  std::vector<std::vector<double>> w;     // [T][k]
  // Smallest gap, over tokens, between the last kept and the first dropped group score and
  // between the last chosen and the first unchosen expert of the kept groups: a perturbation
  // smaller than this cannot change the selection.
  double margin = std::numeric_limits<double>::infinity();
};

RouteReference reference_route(const Tensor& u, const Tensor& gate_w, const Tensor& bias,
                               const MoeRouteConfig& cfg) {
  const int64_t n_tokens = u.size(0), dim = u.size(1), n_experts = gate_w.size(0);
  const int64_t group_size = n_experts / cfg.n_group;
  const double inf = std::numeric_limits<double>::infinity();
  // Picks n indices by repeated arg-max over values not yet picked; returns the value of the
  // best index left over (or -inf) so the caller can measure the margin.
  const auto pick = [&](std::vector<double> values, int64_t n, std::vector<int64_t>& picked) {
    for (int64_t p = 0; p < n; ++p) {
      int64_t best = -1;
      for (int64_t i = 0; i < int64_t(values.size()); ++i)
        if (values[i] != -inf && (best < 0 || values[i] > values[best])) best = i;
      picked.push_back(best);
      values[best] = -inf;
    }
    return *std::max_element(values.begin(), values.end());
  };
  RouteReference ref;
  for (int64_t t = 0; t < n_tokens; ++t) {
    std::vector<double> s(n_experts), choice(n_experts);
    for (int64_t e = 0; e < n_experts; ++e) {
      double logit = 0;
      for (int64_t d = 0; d < dim; ++d)
        logit += read_float(u, t * dim + d) * read_float(gate_w, e * dim + d);
      s[e] = 1 / (1 + std::exp(-logit));
      choice[e] = s[e] + read_float(bias, e);
    }
    std::vector<double> group_score(cfg.n_group);
    for (int64_t g = 0; g < cfg.n_group; ++g) {
      std::vector<double> members(choice.begin() + g * group_size,
                                  choice.begin() + (g + 1) * group_size);
      std::sort(members.rbegin(), members.rend());
      group_score[g] = members[0] + members[1];
    }
    std::vector<int64_t> groups;
    const double next_group = pick(group_score, cfg.topk_group, groups);
    ref.margin = std::min(ref.margin, group_score[groups.back()] - next_group);
    std::vector<double> masked(n_experts, -inf);
    for (int64_t g : groups)
      for (int64_t e = g * group_size; e < (g + 1) * group_size; ++e) masked[e] = choice[e];
    std::vector<int64_t> idx;
    const double next_expert = pick(masked, cfg.top_k, idx);
    ref.margin = std::min(ref.margin, masked[idx.back()] - next_expert);
    std::vector<double> w(cfg.top_k);
    double sum = 0;
    for (int64_t j = 0; j < cfg.top_k; ++j) sum += s[idx[j]];
    for (int64_t j = 0; j < cfg.top_k; ++j) {
      w[j] = s[idx[j]];
      if (cfg.norm_topk_prob) w[j] /= sum + 1e-20;
      w[j] *= cfg.routed_scaling_factor;
    }
    ref.idx.push_back(idx);
    ref.w.push_back(w);
  }
  return ref;
}

struct RouteOutputs {
  Tensor idx, w, scores;
};

RouteOutputs run_route(const Tensor& u, const Tensor& gate_w, const Tensor& bias,
                       const MoeRouteConfig& cfg) {
  const int64_t n_tokens = u.size(0), n_experts = gate_w.size(0);
  RouteOutputs out{Tensor::empty({n_tokens, cfg.top_k}, DType::I64),
                   Tensor::empty({n_tokens, cfg.top_k}, u.dtype()),
                   Tensor::empty({n_tokens, n_experts}, u.dtype())};
  moe_route_forward(u, gate_w, bias, cfg, out.idx, out.w, out.scores);
  return out;
}

// Runs the router on random inputs and compares it with the reference; returns the reference.
RouteReference expect_route_matches_reference(int64_t n_tokens, int64_t dim, int64_t n_experts,
                                              const MoeRouteConfig& cfg, uint64_t seed) {
  Tensor u = random_tensor({n_tokens, dim}, seed);
  Tensor gate_w = random_tensor({n_experts, dim}, seed + 1, 0.7);
  Tensor bias = random_tensor({n_experts}, seed + 2, 0.1);
  const RouteOutputs got = run_route(u, gate_w, bias, cfg);
  const RouteReference ref = reference_route(u, gate_w, bias, cfg);
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t j = 0; j < cfg.top_k; ++j) {
      EXPECT_EQ(got.idx.data<int64_t>()[t * cfg.top_k + j], ref.idx[t][j]) << t << "," << j;
      // Both sides in double; only the summation order of the logits differs.
      EXPECT_NEAR(got.w.data<double>()[t * cfg.top_k + j], ref.w[t][j], 1e-13) << t << "," << j;
    }
  return ref;
}

TEST(MoeRoute, MatchesPlainReimplementationWithOneGroup) {
  expect_route_matches_reference(9, 5, 7, {3, 1, 1, true, 2.5}, 10);
  expect_route_matches_reference(6, 3, 2, {2, 1, 1, true, 1.0}, 20);
}

TEST(MoeRoute, MatchesPlainReimplementationWithGroupLimitedSelection) {
  expect_route_matches_reference(11, 6, 12, {3, 4, 2, true, 2.5}, 30);
  expect_route_matches_reference(13, 7, 15, {4, 5, 3, true, 1.3}, 40);
  expect_route_matches_reference(5, 4, 10, {4, 5, 5, true, 1.0}, 50);
}

TEST(MoeRoute, GroupLimitChangesTheChoiceOfSomeTokens) {
  // Same inputs with and without the group limit: the test of the limit means something only
  // if it rules out experts the plain top-k would have taken.
  const RouteReference limited = expect_route_matches_reference(20, 6, 12, {3, 4, 1, true, 1}, 60);
  const RouteReference plain = expect_route_matches_reference(20, 6, 12, {3, 1, 1, true, 1}, 60);
  EXPECT_NE(limited.idx, plain.idx);
}

TEST(MoeRoute, WithoutNormalisationWeightsAreScaledSigmoidScores) {
  expect_route_matches_reference(8, 5, 9, {2, 3, 2, false, 2.5}, 70);
  MoeRouteConfig cfg{3, 1, 1, false, 1.7};
  Tensor u = random_tensor({6, 4}, 71);
  Tensor gate_w = random_tensor({8, 4}, 72, 0.7);
  Tensor bias = random_tensor({8}, 73, 0.1, DType::F32);
  const RouteOutputs got = run_route(u, gate_w, bias, cfg);
  for (int64_t t = 0; t < 6; ++t)
    for (int64_t j = 0; j < 3; ++j) {
      const int64_t e = got.idx.data<int64_t>()[t * 3 + j];
      EXPECT_DOUBLE_EQ(got.w.data<double>()[t * 3 + j], 1.7 * got.scores.data<double>()[t * 8 + e]);
    }
}

TEST(MoeRoute, CorrectionBiasSteersTheChoiceButNotTheWeights) {
  const MoeRouteConfig cfg{2, 2, 2, true, 2.0};
  Tensor u = random_tensor({10, 5}, 80);
  Tensor gate_w = random_tensor({8, 5}, 81, 0.7);
  Tensor no_bias = Tensor::zeros({8}, DType::F32);
  // Experts 2 and 5 get a bias far above any sigmoid gap: every token picks them.
  Tensor bias = Tensor::zeros({8}, DType::F32);
  bias.data<float>()[2] = 3;
  bias.data<float>()[5] = 2;
  const RouteOutputs free = run_route(u, gate_w, no_bias, cfg);
  const RouteOutputs steered = run_route(u, gate_w, bias, cfg);
  int changed = 0;
  for (int64_t t = 0; t < 10; ++t) {
    const int64_t* idx = steered.idx.data<int64_t>() + t * 2;
    EXPECT_EQ(idx[0], 2);
    EXPECT_EQ(idx[1], 5);
    const double* s = steered.scores.data<double>() + t * 8;
    const double sum = s[2] + s[5] + 1e-20;
    EXPECT_NEAR(steered.w.data<double>()[t * 2 + 0], 2.0 * s[2] / sum, 1e-15);
    EXPECT_NEAR(steered.w.data<double>()[t * 2 + 1], 2.0 * s[5] / sum, 1e-15);
    changed += free.idx.data<int64_t>()[t * 2] != 2 || free.idx.data<int64_t>()[t * 2 + 1] != 5;
  }
  EXPECT_GT(changed, 0);
  const RouteReference ref = reference_route(u, gate_w, bias, cfg);
  for (int64_t t = 0; t < 10; ++t)
    for (int64_t j = 0; j < 2; ++j)
      EXPECT_NEAR(steered.w.data<double>()[t * 2 + j], ref.w[t][j], 1e-13);
}

TEST(MoeRoute, FloatMatchesDoubleReference) {
  const MoeRouteConfig cfg{3, 4, 2, true, 2.5};
  Tensor u = random_tensor({17, 9}, 90);
  Tensor gate_w = random_tensor({12, 9}, 91, 0.5);
  Tensor bias = random_tensor({12}, 92, 0.1, DType::F32);
  const RouteReference ref = reference_route(u, gate_w, bias, cfg);
  // fp32 logits are off by ~1e-6; the choice can only flip across a smaller margin.
  ASSERT_GT(ref.margin, 1e-4);
  const RouteOutputs got = run_route(u.to(DType::F32), gate_w.to(DType::F32), bias, cfg);
  for (int64_t t = 0; t < 17; ++t)
    for (int64_t j = 0; j < 3; ++j) {
      EXPECT_EQ(got.idx.data<int64_t>()[t * 3 + j], ref.idx[t][j]);
      // fp32 rounding of a dot product of 9 terms and a few divisions: relative error ~1e-6.
      EXPECT_NEAR(got.w.data<float>()[t * 3 + j], ref.w[t][j], 1e-5 * std::fabs(ref.w[t][j]));
    }
}

TEST(MoeRoute, TiesGoToTheLowerIndex) {
  // Dyadic inputs so every logit is exact whatever the summation order: equal rows give
  // bit-equal scores.
  Tensor u = Tensor::from(std::vector<double>{0.5, 0.25}, {1, 2});
  Tensor no_bias = Tensor::zeros({6}, DType::F32);
  // Experts 1 and 3 tie for first place, expert 4 is next.
  Tensor tied = Tensor::from(std::vector<double>{0, 1, 1, 2, -1, 1, 1, 2, 0.5, 1, -2, 0}, {6, 2});
  RouteOutputs one = run_route(u, tied, no_bias, {1, 1, 1, false, 1});
  EXPECT_EQ(one.idx.data<int64_t>()[0], 1);
  RouteOutputs two = run_route(u, tied, no_bias, {2, 1, 1, false, 1});
  EXPECT_EQ(two.idx.data<int64_t>()[0], 1);
  EXPECT_EQ(two.idx.data<int64_t>()[1], 3);
  // Groups {0, 1}, {2, 3}, {4, 5}: groups 0 and 2 tie, group 1 is worse; group 0 is kept.
  Tensor groups = Tensor::from(std::vector<double>{1, 2, 0, 1, -1, 0, 0, -1, 1, 2, 0, 1}, {6, 2});
  RouteOutputs g = run_route(u, groups, no_bias, {2, 3, 1, false, 1});
  EXPECT_EQ(g.idx.data<int64_t>()[0], 0);
  EXPECT_EQ(g.idx.data<int64_t>()[1], 1);
}

Tensor minus(const Tensor& a, const Tensor& b) {
  Tensor d = a.clone();
  for (int64_t i = 0; i < d.numel(); ++i) d.data<double>()[i] -= b.data<double>()[i];
  return d;
}

TEST(MoeRoute, GradientsOfInputAndGateWeightMatchFiniteDifferences) {
  for (const MoeRouteConfig cfg :
       {MoeRouteConfig{3, 3, 2, true, 2.5}, MoeRouteConfig{2, 1, 1, false, 1.5}}) {
    const int64_t n_tokens = 5, dim = 7, n_experts = 9;
    Tensor u = random_tensor({n_tokens, dim}, 100);
    Tensor gate_w = random_tensor({n_experts, dim}, 101, 0.7);
    Tensor bias = random_tensor({n_experts}, 102, 0.1);
    // A ±1e-5 step moves a choice by less than 1e-5·|u|·max σ' < 1e-4: the selection holds.
    ASSERT_GT(reference_route(u, gate_w, bias, cfg).margin, 1e-3);
    Tensor weights = random_tensor({n_tokens, cfg.top_k}, 103);
    const auto loss = [&] { return dot(run_route(u, gate_w, bias, cfg).w, weights); };
    const RouteOutputs fwd = run_route(u, gate_w, bias, cfg);
    // Start from nonzero gradients: both outputs accumulate.
    const Tensor du0 = random_tensor(u.shape(), 104), dgate0 = random_tensor(gate_w.shape(), 105);
    Tensor du = du0.clone(), dgate_w = dgate0.clone();
    moe_route_backward(u, gate_w, fwd.idx, fwd.scores, cfg, weights, du, dgate_w);
    expect_grad_close("u", u, minus(du, du0), loss);
    expect_grad_close("gate_w", gate_w, minus(dgate_w, dgate0), loss);
  }
}

TEST(MoeRoute, RejectsBadConfig) {
  Tensor u = random_tensor({3, 4}, 110);
  Tensor gate_w = random_tensor({12, 4}, 111);
  Tensor bias = Tensor::zeros({12}, DType::F32);
  const auto route = [&](const MoeRouteConfig& cfg) { run_route(u, gate_w, bias, cfg); };
  EXPECT_NO_THROW(route({3, 4, 2, true, 1}));
  EXPECT_THROW(route({3, 5, 2, true, 1}), Error);   // n_group does not divide E
  EXPECT_THROW(route({13, 1, 1, true, 1}), Error);  // top_k > E
  EXPECT_THROW(route({3, 4, 5, true, 1}), Error);   // topk_group > n_group
  EXPECT_THROW(route({7, 4, 2, true, 1}), Error);   // top_k > experts in the kept groups
  EXPECT_THROW(route({1, 12, 1, true, 1}), Error);  // one expert per group: no top-2
  EXPECT_THROW(route({0, 1, 1, true, 1}), Error);
  EXPECT_THROW(route({1, 4, 0, true, 1}), Error);
  EXPECT_THROW(moe_check_route_config({1, 0, 1, true, 1}, 12), Error);
}

// Random distinct experts per token, never expert `unused`.
Tensor random_topk_idx(int64_t n_tokens, int64_t k, int64_t n_experts, int64_t unused,
                       uint64_t seed) {
  Rng rng(seed);
  Tensor idx = Tensor::empty({n_tokens, k}, DType::I64);
  for (int64_t t = 0; t < n_tokens; ++t) {
    std::vector<int64_t> experts;
    for (int64_t e = 0; e < n_experts; ++e)
      if (e != unused) experts.push_back(e);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t pick = j + int64_t(rng.next() % uint64_t(experts.size() - j));
      std::swap(experts[j], experts[pick]);
      idx.data<int64_t>()[t * k + j] = experts[j];
    }
  }
  return idx;
}

// out[t] = Σ_j w[t, j] · down[e] · relu(up[e] · h[t])², one token and one slot at a time.
std::vector<double> naive_experts(const Tensor& h, const Tensor& up, const Tensor& down,
                                  const Tensor& idx, const Tensor& w) {
  const int64_t n_tokens = h.size(0), dim = h.size(1), inter = up.size(1), k = idx.size(1);
  std::vector<double> out(n_tokens * dim, 0.0);
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = idx.data<int64_t>()[t * k + j];
      std::vector<double> act(inter);
      for (int64_t i = 0; i < inter; ++i) {
        double pre = 0;
        for (int64_t d = 0; d < dim; ++d)
          pre += read_float(up, (e * inter + i) * dim + d) * read_float(h, t * dim + d);
        act[i] = pre > 0 ? pre * pre : 0;
      }
      for (int64_t d = 0; d < dim; ++d) {
        double y = 0;
        for (int64_t i = 0; i < inter; ++i)
          y += read_float(down, (e * dim + d) * inter + i) * act[i];
        out[t * dim + d] += read_float(w, t * k + j) * y;
      }
    }
  return out;
}

struct ExpertsInputs {
  Tensor h, up, down, idx, w;
};

ExpertsInputs random_experts(int64_t n_tokens, int64_t dim, int64_t inter, int64_t n_experts,
                             int64_t k, uint64_t seed) {
  return {random_tensor({n_tokens, dim}, seed), random_tensor({n_experts, inter, dim}, seed + 1),
          random_tensor({n_experts, dim, inter}, seed + 2),
          random_topk_idx(n_tokens, k, n_experts, n_experts - 2, seed + 3),
          random_tensor({n_tokens, k}, seed + 4, 0.5, DType::F64, 0.5)};
}

Tensor run_experts(const ExpertsInputs& in, MoeExpertsCache& cache) {
  Tensor out = random_tensor(in.h.shape(), 999, 1.0, in.h.dtype());  // must be overwritten
  moe_experts_forward(in.h, in.up, in.down, in.idx, in.w, out, cache);
  return out;
}

TEST(MoeExperts, MatchesPerTokenLoop) {
  const ExpertsInputs in = random_experts(7, 5, 6, 5, 2, 200);
  MoeExpertsCache cache;
  const Tensor out = run_experts(in, cache);
  const std::vector<double> ref = naive_experts(in.h, in.up, in.down, in.idx, in.w);
  for (int64_t i = 0; i < out.numel(); ++i) EXPECT_NEAR(out.data<double>()[i], ref[i], 1e-12);
}

TEST(MoeExperts, FloatMatchesDoubleLoop) {
  const ExpertsInputs in = random_experts(13, 11, 9, 6, 3, 210);
  const ExpertsInputs f{in.h.to(DType::F32), in.up.to(DType::F32), in.down.to(DType::F32), in.idx,
                        in.w.to(DType::F32)};
  MoeExpertsCache cache;
  const Tensor out = run_experts(f, cache);
  const std::vector<double> ref = naive_experts(in.h, in.up, in.down, in.idx, in.w);
  // Outputs are O(10-100); fp32 dot products of ~10 terms keep ~1e-6 relative error.
  for (int64_t i = 0; i < out.numel(); ++i)
    EXPECT_NEAR(out.data<float>()[i], ref[i], 1e-5 * (1 + std::fabs(ref[i])));
}

TEST(MoeExperts, CacheGroupsRowsByExpertInTokenOrder) {
  const ExpertsInputs in = random_experts(9, 4, 3, 5, 2, 220);
  MoeExpertsCache cache;
  run_experts(in, cache);
  Tensor load = Tensor::empty({5}, DType::I64);
  moe_expert_load(in.idx, load);
  const int64_t* offsets = cache.expert_offsets.data<int64_t>();
  const int64_t* source = cache.row_source.data<int64_t>();
  const int64_t* row_of = cache.row_of.data<int64_t>();
  EXPECT_EQ(offsets[0], 0);
  for (int64_t e = 0; e < 5; ++e) {
    EXPECT_EQ(offsets[e + 1] - offsets[e], load.data<int64_t>()[e]);
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      EXPECT_EQ(in.idx.data<int64_t>()[source[r]], e);
      EXPECT_EQ(row_of[source[r]], r);
      if (r > offsets[e]) {
        EXPECT_LT(source[r - 1], source[r]);
      }
    }
  }
}

TEST(MoeExperts, GradientsMatchFiniteDifferences) {
  ExpertsInputs in = random_experts(6, 5, 7, 5, 3, 230);
  Tensor weights = random_tensor(in.h.shape(), 231);
  const auto loss = [&] {
    MoeExpertsCache c;
    return dot(run_experts(in, c), weights);
  };
  MoeExpertsCache cache;
  run_experts(in, cache);
  // dh and dtopk_w start as garbage (overwritten), dup and ddown nonzero (accumulated).
  Tensor dh = random_tensor(in.h.shape(), 232), dtopk_w = random_tensor(in.w.shape(), 233);
  const Tensor dup0 = random_tensor(in.up.shape(), 234),
               ddown0 = random_tensor(in.down.shape(), 235);
  Tensor dup = dup0.clone(), ddown = ddown0.clone();
  moe_experts_backward(in.h, in.up, in.down, in.idx, in.w, cache, weights, dh, dup, ddown, dtopk_w);
  expect_grad_close("h", in.h, dh, loss);
  expect_grad_close("up", in.up, minus(dup, dup0), loss);
  expect_grad_close("down", in.down, minus(ddown, ddown0), loss);
  expect_grad_close("topk_w", in.w, dtopk_w, loss);
}

// Expert parallelism marks the entries of experts on other ranks -1: they must act exactly as if
// their routing weight were 0, and get a routing-weight gradient of 0.
TEST(MoeExperts, EntriesOfAnotherRanksExpertsAreSkipped) {
  const ExpertsInputs in = random_experts(9, 5, 6, 5, 3, 250);
  ExpertsInputs elsewhere = in, zero_weight = in;
  elsewhere.idx = in.idx.clone();
  zero_weight.w = in.w.clone();
  for (int64_t i : {0, 4, 5, 11, 26}) {
    elsewhere.idx.data<int64_t>()[i] = -1;
    zero_weight.w.data<double>()[i] = 0;
  }
  MoeExpertsCache c1, c2;
  const Tensor out1 = run_experts(elsewhere, c1), out2 = run_experts(zero_weight, c2);
  test::expect_near_all(out1, out2, 1e-12, "out");
  EXPECT_EQ(c1.expert_offsets.data<int64_t>()[5], 27 - 5);  // computed rows
  const Tensor dout = random_tensor(in.h.shape(), 251);
  Tensor dh1 = random_tensor(in.h.shape(), 252), dh2 = dh1.clone();
  Tensor dw1 = random_tensor(in.w.shape(), 253), dw2 = dw1.clone();
  Tensor dup1 = random_tensor(in.up.shape(), 254), dup2 = dup1.clone();
  Tensor ddown1 = random_tensor(in.down.shape(), 255), ddown2 = ddown1.clone();
  moe_experts_backward(elsewhere.h, elsewhere.up, elsewhere.down, elsewhere.idx, elsewhere.w, c1,
                       dout, dh1, dup1, ddown1, dw1);
  moe_experts_backward(zero_weight.h, zero_weight.up, zero_weight.down, zero_weight.idx,
                       zero_weight.w, c2, dout, dh2, dup2, ddown2, dw2);
  test::expect_near_all(dh1, dh2, 1e-12, "dh");
  test::expect_near_all(dup1, dup2, 1e-12, "dup");
  test::expect_near_all(ddown1, ddown2, 1e-12, "ddown");
  for (int64_t i = 0; i < dw1.numel(); ++i)
    EXPECT_NEAR(dw1.data<double>()[i],
                elsewhere.idx.data<int64_t>()[i] < 0 ? 0.0 : dw2.data<double>()[i], 1e-12)
        << i;
}

TEST(MoeExperts, RejectsExpertIdOutOfRange) {
  ExpertsInputs in = random_experts(4, 3, 5, 4, 2, 240);
  MoeExpertsCache cache;
  in.idx.data<int64_t>()[5] = 4;
  EXPECT_THROW(run_experts(in, cache), Error);
  in.idx.data<int64_t>()[5] = -2;
  EXPECT_THROW(run_experts(in, cache), Error);
  in.idx.data<int64_t>()[5] = -1;
  Tensor load = Tensor::empty({4}, DType::I64);
  EXPECT_THROW(moe_expert_load(in.idx, load), Error);
}

// w[e] + s · b[e] · a[e] for every expert: w [E, out, in], a [E, r, in], b [E, out, r].
Tensor merged(const Tensor& w, const Tensor& a, const Tensor& b, double s) {
  Tensor m = w.clone();
  const int64_t e_n = w.size(0), out = w.size(1), in = w.size(2), r = a.size(1);
  for (int64_t e = 0; e < e_n; ++e)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) {
        double sum = 0;
        for (int64_t j = 0; j < r; ++j)
          sum += read_float(b, (e * out + o) * r + j) * read_float(a, (e * r + j) * in + i);
        m.data<double>()[(e * out + o) * in + i] += s * sum;
      }
  return m;
}

struct ExpertsLoraInputs {
  ExpertsInputs base;
  MoeExpertsLora lora;
};

// Random LoRA pairs (B non-zero) on up, down or both, with zeroed gradients.
ExpertsLoraInputs random_experts_lora(bool up, bool down, uint64_t seed) {
  const int64_t e = 5, dim = 6, inter = 7, r = 2;
  ExpertsLoraInputs in{random_experts(8, dim, inter, e, 2, seed), {}};
  in.lora.scale = 1.5;
  if (up) {
    in.lora.up_a = random_tensor({e, r, dim}, seed + 10);
    in.lora.up_b = random_tensor({e, inter, r}, seed + 11);
    in.lora.dup_a = Tensor::zeros(in.lora.up_a.shape(), DType::F64);
    in.lora.dup_b = Tensor::zeros(in.lora.up_b.shape(), DType::F64);
  }
  if (down) {
    in.lora.down_a = random_tensor({e, r, inter}, seed + 12);
    in.lora.down_b = random_tensor({e, dim, r}, seed + 13);
    in.lora.ddown_a = Tensor::zeros(in.lora.down_a.shape(), DType::F64);
    in.lora.ddown_b = Tensor::zeros(in.lora.down_b.shape(), DType::F64);
  }
  return in;
}

class MoeExpertsLoraPairs : public ::testing::TestWithParam<std::pair<bool, bool>> {};

TEST_P(MoeExpertsLoraPairs, ForwardEqualsTheMergedWeights) {
  const auto [up, down] = GetParam();
  const ExpertsLoraInputs in = random_experts_lora(up, down, 300);
  const MoeExpertsLora& l = in.lora;
  const Tensor up_w = up ? merged(in.base.up, l.up_a, l.up_b, l.scale) : in.base.up;
  const Tensor down_w = down ? merged(in.base.down, l.down_a, l.down_b, l.scale) : in.base.down;
  Tensor out = Tensor::empty(in.base.h.shape(), DType::F64);
  MoeExpertsCache cache;
  moe_experts_forward(in.base.h, in.base.up, in.base.down, in.base.idx, in.base.w, out, cache, l);
  const std::vector<double> ref = naive_experts(in.base.h, up_w, down_w, in.base.idx, in.base.w);
  for (int64_t i = 0; i < out.numel(); ++i)
    EXPECT_NEAR(out.data<double>()[i], ref[i], 1e-10 * (1 + std::fabs(ref[i])));
}

TEST_P(MoeExpertsLoraPairs, GradientsOfAFrozenBaseMatchFiniteDifferences) {
  const auto [up, down] = GetParam();
  ExpertsLoraInputs in = random_experts_lora(up, down, 310);
  ExpertsInputs& b = in.base;
  Tensor weights = random_tensor(b.h.shape(), 311);
  const auto loss = [&] {
    Tensor out = Tensor::empty(b.h.shape(), DType::F64);
    MoeExpertsCache c;
    moe_experts_forward(b.h, b.up, b.down, b.idx, b.w, out, c, in.lora);
    return dot(out, weights);
  };
  Tensor out = Tensor::empty(b.h.shape(), DType::F64);
  MoeExpertsCache cache;
  moe_experts_forward(b.h, b.up, b.down, b.idx, b.w, out, cache, in.lora);
  Tensor dh = Tensor::empty(b.h.shape(), DType::F64),
         dtopk_w = Tensor::empty(b.w.shape(), DType::F64);
  Tensor frozen;  // no gradient for the base experts
  moe_experts_backward(b.h, b.up, b.down, b.idx, b.w, cache, weights, dh, frozen, frozen, dtopk_w,
                       in.lora);
  expect_grad_close("h", b.h, dh, loss);
  expect_grad_close("topk_w", b.w, dtopk_w, loss);
  if (up) {
    expect_grad_close("up_a", in.lora.up_a, in.lora.dup_a, loss);
    expect_grad_close("up_b", in.lora.up_b, in.lora.dup_b, loss);
  }
  if (down) {
    expect_grad_close("down_a", in.lora.down_a, in.lora.ddown_a, loss);
    expect_grad_close("down_b", in.lora.down_b, in.lora.ddown_b, loss);
  }
  // With the base's gradients requested too, they are those of the merged weights.
  Tensor dup = Tensor::zeros(b.up.shape(), DType::F64),
         ddown = Tensor::zeros(b.down.shape(), DType::F64);
  moe_experts_backward(b.h, b.up, b.down, b.idx, b.w, cache, weights, dh, dup, ddown, dtopk_w,
                       in.lora);
  expect_grad_close("up", b.up, dup, loss);
  expect_grad_close("down", b.down, ddown, loss);
}

INSTANTIATE_TEST_SUITE_P(UpDownBoth, MoeExpertsLoraPairs,
                         ::testing::Values(std::pair{true, false}, std::pair{false, true},
                                           std::pair{true, true}));

TEST(MoeExpertsLora, RejectsMisshapenPairsAndMissingGradients) {
  ExpertsLoraInputs in = random_experts_lora(true, true, 320);
  ExpertsInputs& b = in.base;
  Tensor out = Tensor::empty(b.h.shape(), DType::F64);
  MoeExpertsCache cache;
  MoeExpertsLora bad = in.lora;
  bad.up_b = random_tensor({5, 6, 2}, 321);  // [E, Din, r] where [E, I, r] belongs
  EXPECT_THROW(moe_experts_forward(b.h, b.up, b.down, b.idx, b.w, out, cache, bad), Error);
  bad = in.lora;
  bad.down_b = Tensor();
  EXPECT_THROW(moe_experts_forward(b.h, b.up, b.down, b.idx, b.w, out, cache, bad), Error);
  moe_experts_forward(b.h, b.up, b.down, b.idx, b.w, out, cache, in.lora);
  bad = in.lora;
  bad.dup_a = Tensor();
  Tensor dh = Tensor::empty(b.h.shape(), DType::F64), dtw = Tensor::empty(b.w.shape(), DType::F64),
         none;
  EXPECT_THROW(
      moe_experts_backward(b.h, b.up, b.down, b.idx, b.w, cache, out, dh, none, none, dtw, bad),
      Error);
}

TEST(MoeLoad, CountsRoutedPairsPerExpert) {
  const Tensor idx = random_topk_idx(23, 3, 7, 4, 300);
  Tensor load = Tensor::empty({7}, DType::I64);
  moe_expert_load(idx, load);
  std::vector<int64_t> expected(7, 0);
  for (int64_t i = 0; i < idx.numel(); ++i) ++expected[idx.data<int64_t>()[i]];
  EXPECT_EQ(std::vector<int64_t>(load.data<int64_t>(), load.data<int64_t>() + 7), expected);
  EXPECT_EQ(load.data<int64_t>()[4], 0);
}

TEST(MoeLoad, CorrectionBiasRisesForUnderloadedAndFallsForOverloadedExperts) {
  // Mean load 3: experts 1 and 4 are under it, 0 and 5 over it, 2 and 3 at it.
  const Tensor load = Tensor::from(std::vector<int64_t>{5, 1, 3, 3, 0, 6}, {6});
  const Tensor bias0 = random_tensor({6}, 310, 0.1, DType::F32);
  Tensor bias = bias0.clone();
  moe_update_correction_bias(bias, load, 1e-3);
  const std::vector<double> sign{-1, 1, 0, 0, 1, -1};
  for (int64_t e = 0; e < 6; ++e)
    EXPECT_EQ(bias.data<float>()[e], bias0.data<float>()[e] + float(1e-3 * sign[e])) << e;
  Tensor short_load = Tensor::from(std::vector<int64_t>{1, 2}, {2});
  EXPECT_THROW(moe_update_correction_bias(bias, short_load, 1e-3), Error);
}

}  // namespace
}  // namespace nh
