// The CUDA MoE ops against the CPU reference (src/ops/moe.h): the router's selection exactly and
// its weights within tolerance, the routed experts forward and backward, the expert load and
// the correction-bias update.
#include "ops/moe.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
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
using test::tolerance;

std::vector<int64_t> ints(const Tensor& t) {
  const Tensor h = t.device() == Device::CPU ? t : to_cpu(t);
  return std::vector<int64_t>(h.data<int64_t>(), h.data<int64_t>() + h.numel());
}

std::string dtype_label(DType dtype) { return std::string(" ") + dtype_name(dtype); }

// ---------------------------------------------------------------------------------------------
// Router

struct RouterInputs {
  Tensor u, gate_w, bias;  // CPU, F32
};

// True when rounding cannot reorder this token's choices or groups. Distinct choices must be
// 1e-5 apart (fp32 sigmoids are within ~1e-7 of the exact value on either side); groups whose
// two largest choices are the same values have bit-equal scores on both sides (then the lower
// index wins on both), any other two groups must differ by 1e-5.
bool well_separated(std::vector<double> choice, int64_t n_group) {
  const int64_t n_experts = int64_t(choice.size()), group_size = n_experts / n_group;
  std::vector<std::pair<double, double>> top2(n_group);
  for (int64_t g = 0; g < n_group; ++g) {
    std::vector<double> members(choice.begin() + g * group_size,
                                choice.begin() + (g + 1) * group_size);
    std::sort(members.rbegin(), members.rend());
    top2[g] = {members[0], members[1]};
  }
  for (int64_t a = 0; a < n_group; ++a)
    for (int64_t b = a + 1; b < n_group; ++b)
      if (top2[a] != top2[b] &&
          std::fabs((top2[a].first + top2[a].second) - (top2[b].first + top2[b].second)) < 1e-5)
        return false;
  std::sort(choice.begin(), choice.end());
  for (size_t i = 1; i < choice.size(); ++i)
    if (choice[i] != choice[i - 1] && choice[i] - choice[i - 1] < 1e-5) return false;
  return true;
}

// Router inputs whose selection is the same however the logits are summed or the sigmoid
// rounded. gate_w is a permutation matrix (plus random columns that meet zeros of u), so each
// logit is one entry of u, exactly, in any summation order and in bf16: entries are multiples of
// 1/8 in [-4, 4], and the bias is a multiple of 1/64 in [-1/4, 1/4] (both exact in bf16).
// Ties are frequent (65 logit values) and go to the lower index on both sides; a token whose
// near-ties could flip (well_separated) is drawn again.
RouterInputs separated_router_inputs(int64_t n_tokens, int64_t n_experts, int64_t n_group,
                                     bool with_bias, uint64_t seed) {
  Rng rng(seed);
  const int64_t extra = 5, dim = n_experts + extra;
  std::vector<int64_t> perm(n_experts);
  for (int64_t e = 0; e < n_experts; ++e) perm[e] = e;
  for (int64_t e = n_experts - 1; e > 0; --e) std::swap(perm[e], perm[rng.next() % (e + 1)]);
  RouterInputs in{Tensor::zeros({n_tokens, dim}, DType::F32),
                  Tensor::zeros({n_experts, dim}, DType::F32),
                  Tensor::zeros({n_experts}, DType::F32)};
  float* gate = in.gate_w.data<float>();
  for (int64_t e = 0; e < n_experts; ++e) {
    gate[e * dim + perm[e]] = 1;
    for (int64_t d = n_experts; d < dim; ++d) gate[e * dim + d] = float(rng.normal());
  }
  float* bias = in.bias.data<float>();
  if (with_bias)
    for (int64_t e = 0; e < n_experts; ++e) bias[e] = float(int64_t(rng.next() % 33) - 16) / 64;
  std::vector<double> logit(n_experts), choice(n_experts);
  for (int64_t t = 0; t < n_tokens; ++t) {
    int tries = 0;
    do {
      EXPECT_LT(++tries, 1000) << "no well separated token found";
      for (int64_t e = 0; e < n_experts; ++e) {
        logit[e] = double(int64_t(rng.next() % 65) - 32) / 8;
        choice[e] = 1 / (1 + std::exp(-logit[e])) + bias[e];
      }
    } while (!well_separated(choice, n_group) && tries < 1000);
    for (int64_t e = 0; e < n_experts; ++e) in.u.data<float>()[t * dim + perm[e]] = float(logit[e]);
  }
  return in;
}

struct RouteOutputs {
  Tensor idx, w, scores;
};

RouteOutputs route_on(Device device, const Tensor& u, const Tensor& gate_w, const Tensor& bias,
                      const MoeRouteConfig& cfg) {
  const int64_t n_tokens = u.size(0), n_experts = gate_w.size(0);
  RouteOutputs out{Tensor::empty({n_tokens, cfg.top_k}, DType::I64, device),
                   Tensor::empty({n_tokens, cfg.top_k}, u.dtype(), device),
                   Tensor::empty({n_tokens, n_experts}, u.dtype(), device)};
  if (device == Device::CPU)
    cpu::moe_route_forward(u, gate_w, bias, cfg, out.idx, out.w, out.scores);
  else
    cuda::moe_route_forward(u, gate_w, bias, cfg, out.idx, out.w, out.scores);
  return out;
}

// The GPU router with u and gate_w in u_dtype / gate_dtype and the bias in bias_dtype, against
// the CPU in fp32 on the same (bf16-exact) values: the same experts in the same order, weights
// and scores within the tolerance of u's dtype.
void expect_route_matches_cpu(int64_t n_tokens, int64_t n_experts, const MoeRouteConfig& cfg,
                              bool with_bias, uint64_t seed, DType u_dtype, DType gate_dtype,
                              DType bias_dtype = DType::F32) {
  const RouterInputs in =
      separated_router_inputs(n_tokens, n_experts, cfg.n_group, with_bias, seed);
  const std::string what = "E " + std::to_string(n_experts) + " groups " +
                           std::to_string(cfg.n_group) + "/" + std::to_string(cfg.topk_group) +
                           " k " + std::to_string(cfg.top_k) + dtype_label(u_dtype) +
                           dtype_label(gate_dtype);
  SCOPED_TRACE(what);
  // bf16 rounds only the random columns of gate_w, which meet zeros of u.
  const RouteOutputs cpu = route_on(Device::CPU, in.u, in.gate_w, in.bias, cfg);
  const RouteOutputs gpu =
      route_on(Device::CUDA, to_gpu(in.u, u_dtype), to_gpu(in.gate_w, gate_dtype),
               to_gpu(in.bias, bias_dtype), cfg);
  EXPECT_EQ(ints(gpu.idx), ints(cpu.idx));
  expect_close(what + " topk_w", gpu.w, cpu.w, tolerance(u_dtype));
  expect_close(what + " scores", gpu.scores, cpu.scores, tolerance(u_dtype));
}

void expect_route_matches_cpu_in_both_dtypes(int64_t n_tokens, int64_t n_experts,
                                             const MoeRouteConfig& cfg, bool with_bias,
                                             uint64_t seed) {
  for (const DType dtype : {DType::F32, DType::BF16})
    expect_route_matches_cpu(n_tokens, n_experts, cfg, with_bias, seed, dtype, dtype);
}

TEST(MoeRouteCuda, SelectionMatchesCpuWithOneGroup) {
  expect_route_matches_cpu_in_both_dtypes(37, 8, {2, 1, 1, true, 1.0}, false, 10);
  expect_route_matches_cpu_in_both_dtypes(130, 64, {6, 1, 1, true, 2.5}, true, 11);
  expect_route_matches_cpu_in_both_dtypes(5, 128, {6, 1, 1, false, 2.5}, true, 12);
  expect_route_matches_cpu_in_both_dtypes(67, 128, {1, 1, 1, true, 1.0}, true, 13);
}

TEST(MoeRouteCuda, SelectionMatchesCpuWithGroupLimitedSelection) {
  expect_route_matches_cpu_in_both_dtypes(37, 8, {3, 4, 2, false, 2.5}, true, 20);
  expect_route_matches_cpu_in_both_dtypes(130, 64, {6, 8, 4, true, 2.5}, true, 21);
  expect_route_matches_cpu_in_both_dtypes(1, 64, {5, 4, 1, false, 1.0}, false, 22);
  expect_route_matches_cpu_in_both_dtypes(130, 128, {4, 4, 2, true, 1.7}, true, 23);
  expect_route_matches_cpu_in_both_dtypes(67, 128, {1, 8, 4, true, 1.0}, true, 24);
}

TEST(MoeRouteCuda, SelectionMatchesCpuWithMoreGroupsThanLanesAndLargeTopK) {
  // Groups of two, 32 and 64 of them: a lane scores several groups.
  expect_route_matches_cpu_in_both_dtypes(33, 64, {4, 32, 5, true, 1.0}, true, 30);
  expect_route_matches_cpu_in_both_dtypes(41, 128, {9, 64, 7, true, 2.5}, true, 31);
  // 512 experts, k = 22: a warp arg-max over 16 experts per lane, 22 rounds.
  expect_route_matches_cpu_in_both_dtypes(45, 512, {22, 8, 4, true, 2.5}, true, 32);
}

TEST(MoeRouteCuda, SelectionMatchesCpuWhenGateWeightAndBiasDtypesDifferFromInput) {
  const MoeRouteConfig cfg{6, 8, 4, true, 2.5};
  expect_route_matches_cpu(70, 64, cfg, true, 40, DType::BF16, DType::F32);
  expect_route_matches_cpu(70, 64, cfg, true, 41, DType::F32, DType::BF16, DType::BF16);
  expect_route_matches_cpu(70, 64, cfg, true, 42, DType::BF16, DType::BF16, DType::BF16);
}

TEST(MoeRouteCuda, ScoresOfDenseInputsMatchCpu) {
  // Random dense inputs: the selection may differ near ties in bf16, the scores may not.
  const MoeRouteConfig cfg{4, 4, 2, true, 1.0};
  for (const auto& [n_tokens, dim, n_experts] :
       {std::tuple<int64_t, int64_t, int64_t>{3, 17, 8}, {130, 200, 64}, {77, 1000, 128}}) {
    const Tensor u = random_cpu({n_tokens, dim}, 50);
    const Tensor gate_w = random_cpu({n_experts, dim}, 51, 1.0 / std::sqrt(double(dim)));
    const Tensor bias = random_cpu({n_experts}, 52, 0.1);
    const RouteOutputs cpu = route_on(Device::CPU, u, gate_w, bias, cfg);
    for (const DType dtype : {DType::F32, DType::BF16}) {
      const RouteOutputs gpu =
          route_on(Device::CUDA, to_gpu(u, dtype), to_gpu(gate_w, dtype), to_gpu(bias), cfg);
      expect_close("dense scores D " + std::to_string(dim) + dtype_label(dtype), gpu.scores,
                   cpu.scores, tolerance(dtype));
    }
  }
}

// The router backward from the CPU's forward (indices and scores), accumulating onto nonzero
// du and dgate_w, in u_dtype and gate_dtype.
void expect_route_backward_matches_cpu(int64_t n_tokens, int64_t dim, int64_t n_experts,
                                       const MoeRouteConfig& cfg, uint64_t seed, DType u_dtype,
                                       DType gate_dtype) {
  const std::string what = "router backward E " + std::to_string(n_experts) + " k " +
                           std::to_string(cfg.top_k) + (cfg.norm_topk_prob ? " norm" : "") +
                           dtype_label(u_dtype) + dtype_label(gate_dtype);
  const Tensor u = random_cpu({n_tokens, dim}, seed);
  const Tensor gate_w = random_cpu({n_experts, dim}, seed + 1, 1.0 / std::sqrt(double(dim)));
  const Tensor bias = random_cpu({n_experts}, seed + 2, 0.1);
  const RouteOutputs fwd = route_on(Device::CPU, u, gate_w, bias, cfg);
  const Tensor dtopk_w = random_cpu({n_tokens, cfg.top_k}, seed + 3);
  // Initial gradients of the size of the increments, so that bf16 rounding of the sum does not
  // hide them.
  const Tensor du0 = random_cpu(u.shape(), seed + 4, 0.3);
  const Tensor dgate0 = random_cpu(gate_w.shape(), seed + 5, 0.3);
  Tensor du = du0.clone(), dgate_w = dgate0.clone();
  cpu::moe_route_backward(u, gate_w, fwd.idx, fwd.scores, cfg, dtopk_w, du, dgate_w);

  Tensor du_gpu = to_gpu(du0, u_dtype), dgate_gpu = to_gpu(dgate0, gate_dtype);
  cuda::moe_route_backward(to_gpu(u, u_dtype), to_gpu(gate_w, gate_dtype), to_gpu(fwd.idx),
                           to_gpu(fwd.scores, u_dtype), cfg, to_gpu(dtopk_w, u_dtype), du_gpu,
                           dgate_gpu);
  // Each gradient meets both operands' rounding: the looser dtype's tolerance.
  const double tol = std::max(tolerance(u_dtype), tolerance(gate_dtype));
  expect_close(what + " du", du_gpu, du, tol);
  expect_close(what + " dgate_w", dgate_gpu, dgate_w, tol);
}

TEST(MoeRouteCuda, BackwardMatchesCpuAndAccumulates) {
  for (const DType dtype : {DType::F32, DType::BF16}) {
    expect_route_backward_matches_cpu(37, 24, 8, {2, 1, 1, true, 1.0}, 60, dtype, dtype);
    expect_route_backward_matches_cpu(130, 72, 64, {6, 8, 4, true, 2.5}, 61, dtype, dtype);
    expect_route_backward_matches_cpu(67, 200, 128, {4, 4, 2, false, 1.7}, 62, dtype, dtype);
    expect_route_backward_matches_cpu(45, 96, 512, {22, 8, 4, true, 2.5}, 63, dtype, dtype);
  }
  expect_route_backward_matches_cpu(130, 72, 64, {6, 8, 4, true, 2.5}, 64, DType::BF16, DType::F32);
  expect_route_backward_matches_cpu(130, 72, 64, {6, 8, 4, true, 2.5}, 65, DType::F32, DType::BF16);
}

TEST(MoeRouteCuda, RejectsCpuTensorsAndBadConfig) {
  const RouterInputs in = separated_router_inputs(3, 8, 1, true, 70);
  const Tensor u = to_gpu(in.u), gate_w = to_gpu(in.gate_w), bias = to_gpu(in.bias);
  EXPECT_THROW(route_on(Device::CUDA, u, in.gate_w, bias, {2, 1, 1, true, 1}), Error);
  EXPECT_THROW(route_on(Device::CUDA, u, gate_w, bias, {2, 3, 1, true, 1}), Error);
  EXPECT_THROW(route_on(Device::CUDA, u, gate_w, bias, {5, 4, 2, true, 1}), Error);
  EXPECT_NO_THROW(route_on(Device::CUDA, u, gate_w, bias, {4, 4, 2, true, 1}));
}

// ---------------------------------------------------------------------------------------------
// Experts

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

struct ExpertsInputs {
  Tensor h, up, down, idx, w, dout;  // CPU, F32 (idx I64)
};

ExpertsInputs random_experts(int64_t n_tokens, int64_t dim, int64_t inter, int64_t n_experts,
                             int64_t k, uint64_t seed) {
  return {random_cpu({n_tokens, dim}, seed),
          random_cpu({n_experts, inter, dim}, seed + 1, 1.0 / std::sqrt(double(dim))),
          random_cpu({n_experts, dim, inter}, seed + 2, 1.0 / std::sqrt(double(inter))),
          random_topk_idx(n_tokens, k, n_experts, n_experts / 2, seed + 3),
          random_cpu({n_tokens, k}, seed + 4, 0.25, 0.5),
          random_cpu({n_tokens, dim}, seed + 5)};
}

// Forward and backward on the GPU in `dtype` against the CPU in fp32: outputs, the cache's
// permutation (exactly) and pre-activations, and the gradients, dup and ddown accumulating onto
// nonzero values, dh and dtopk_w overwriting garbage.
// With `elsewhere`, every third (token, slot) entry is marked -1: an expert on another rank.
void expect_experts_match_cpu(int64_t n_tokens, int64_t dim, int64_t inter, int64_t n_experts,
                              int64_t k, uint64_t seed, DType dtype, bool elsewhere = false) {
  const std::string what = "experts T " + std::to_string(n_tokens) + " Din " + std::to_string(dim) +
                           " I " + std::to_string(inter) + " E " + std::to_string(n_experts) +
                           " k " + std::to_string(k) + dtype_label(dtype) +
                           (elsewhere ? " some elsewhere" : "");
  SCOPED_TRACE(what);
  const double tol = tolerance(dtype);
  ExpertsInputs in = random_experts(n_tokens, dim, inter, n_experts, k, seed);
  if (elsewhere)
    for (int64_t i = 0; i < in.idx.numel(); i += 3) in.idx.data<int64_t>()[i] = -1;
  const Tensor dup0 = random_cpu(in.up.shape(), seed + 6, 0.3);
  const Tensor ddown0 = random_cpu(in.down.shape(), seed + 7, 0.3);

  MoeExpertsCache cpu_cache;
  Tensor out = Tensor::empty(in.h.shape(), DType::F32);
  cpu::moe_experts_forward(in.h, in.up, in.down, in.idx, in.w, out, cpu_cache, {});
  Tensor dh = Tensor::empty(in.h.shape(), DType::F32);
  Tensor dtopk_w = Tensor::empty(in.w.shape(), DType::F32);
  Tensor dup = dup0.clone(), ddown = ddown0.clone();
  cpu::moe_experts_backward(in.h, in.up, in.down, in.idx, in.w, cpu_cache, in.dout, dh, dup, ddown,
                            dtopk_w, {});

  const Tensor h = to_gpu(in.h, dtype), up = to_gpu(in.up, dtype), down = to_gpu(in.down, dtype);
  const Tensor idx = to_gpu(in.idx), w = to_gpu(in.w, dtype);
  MoeExpertsCache cache;
  Tensor out_gpu = to_gpu(random_cpu(in.h.shape(), seed + 8), dtype);  // must be overwritten
  cuda::moe_experts_forward(h, up, down, idx, w, out_gpu, cache, {});
  expect_close(what + " out", out_gpu, out, tol);
  EXPECT_EQ(cache.expert_offsets.device(), Device::CUDA);
  EXPECT_EQ(ints(cache.expert_offsets), ints(cpu_cache.expert_offsets));
  EXPECT_EQ(ints(cache.row_source), ints(cpu_cache.row_source));
  EXPECT_EQ(ints(cache.row_of), ints(cpu_cache.row_of));
  // The rows of pairs computed here (other ranks' pairs leave theirs unwritten).
  const int64_t here = ints(cpu_cache.expert_offsets).back();
  expect_close(what + " cache.pre", cache.pre.slice0(0, here), cpu_cache.pre.slice0(0, here), tol);

  Tensor dh_gpu = to_gpu(random_cpu(in.h.shape(), seed + 9), dtype);
  Tensor dtopk_gpu = to_gpu(random_cpu(in.w.shape(), seed + 10), dtype);
  Tensor dup_gpu = to_gpu(dup0, dtype), ddown_gpu = to_gpu(ddown0, dtype);
  cuda::moe_experts_backward(h, up, down, idx, w, cache, to_gpu(in.dout, dtype), dh_gpu, dup_gpu,
                             ddown_gpu, dtopk_gpu, {});
  expect_close(what + " dh", dh_gpu, dh, tol);
  expect_close(what + " dup", dup_gpu, dup, tol);
  expect_close(what + " ddown", ddown_gpu, ddown, tol);
  expect_close(what + " dtopk_w", dtopk_gpu, dtopk_w, tol);
}

TEST(MoeExpertsCuda, ForwardAndBackwardMatchCpuWithUnusedExperts) {
  for (const DType dtype : {DType::F32, DType::BF16}) {
    // One token, one slot: three of four experts get no rows. F32 only: its dtopk_w is a
    // single 8-term dot product, whose relative error in bf16 is unbounded when the terms
    // cancel (it measured 5.8e-2 on an H200); the larger shapes cover bf16.
    if (dtype == DType::F32) expect_experts_match_cpu(1, 8, 16, 4, 1, 100, dtype);
    expect_experts_match_cpu(37, 64, 96, 8, 2, 110, dtype);
    // Sizes off every tile multiple.
    expect_experts_match_cpu(130, 72, 40, 16, 6, 120, dtype);
    expect_experts_match_cpu(67, 33, 17, 64, 6, 130, dtype);
    expect_experts_match_cpu(200, 128, 192, 128, 4, 140, dtype);
  }
}

TEST(MoeExpertsCuda, EntriesOfAnotherRanksExpertsAreSkippedAsOnTheCpu) {
  for (const DType dtype : {DType::F32, DType::BF16}) {
    expect_experts_match_cpu(37, 64, 96, 8, 2, 180, dtype, true);
    expect_experts_match_cpu(130, 72, 40, 16, 6, 190, dtype, true);
    // 16 experts: the sort's bit count must keep -1 apart from expert 15.
    expect_experts_match_cpu(64, 32, 48, 16, 4, 195, dtype, true);
  }
}

// LoRA on both expert weights over a frozen base: the GPU's output, input and routing-weight
// gradients and the four factor gradients against the CPU in fp32.
void expect_experts_lora_match_cpu(int64_t n_tokens, int64_t dim, int64_t inter, int64_t n_experts,
                                   int64_t k, int64_t rank, uint64_t seed, DType dtype) {
  const std::string what = "experts lora T " + std::to_string(n_tokens) + " E " +
                           std::to_string(n_experts) + " r " + std::to_string(rank) +
                           dtype_label(dtype);
  SCOPED_TRACE(what);
  const double tol = tolerance(dtype);
  const ExpertsInputs in = random_experts(n_tokens, dim, inter, n_experts, k, seed);
  MoeExpertsLora cpu_lora;
  cpu_lora.scale = 2.0;
  cpu_lora.up_a = random_cpu({n_experts, rank, dim}, seed + 20, 1.0 / std::sqrt(double(dim)));
  cpu_lora.up_b = random_cpu({n_experts, inter, rank}, seed + 21, 0.3);
  cpu_lora.down_a = random_cpu({n_experts, rank, inter}, seed + 22, 1.0 / std::sqrt(double(inter)));
  cpu_lora.down_b = random_cpu({n_experts, dim, rank}, seed + 23, 0.3);
  MoeExpertsLora gpu_lora = cpu_lora;
  for (auto [c, g, d] : {std::tuple{&cpu_lora.up_a, &gpu_lora.up_a, &cpu_lora.dup_a},
                         std::tuple{&cpu_lora.up_b, &gpu_lora.up_b, &cpu_lora.dup_b},
                         std::tuple{&cpu_lora.down_a, &gpu_lora.down_a, &cpu_lora.ddown_a},
                         std::tuple{&cpu_lora.down_b, &gpu_lora.down_b, &cpu_lora.ddown_b}}) {
    *g = to_gpu(*c, dtype);
    *d = random_cpu(c->shape(), seed + 30, 0.1);  // accumulated onto
  }
  gpu_lora.dup_a = to_gpu(cpu_lora.dup_a, dtype);
  gpu_lora.dup_b = to_gpu(cpu_lora.dup_b, dtype);
  gpu_lora.ddown_a = to_gpu(cpu_lora.ddown_a, dtype);
  gpu_lora.ddown_b = to_gpu(cpu_lora.ddown_b, dtype);

  MoeExpertsCache cpu_cache;
  Tensor out = Tensor::empty(in.h.shape(), DType::F32), none;
  cpu::moe_experts_forward(in.h, in.up, in.down, in.idx, in.w, out, cpu_cache, cpu_lora);
  Tensor dh = Tensor::empty(in.h.shape(), DType::F32), dtopk_w = Tensor::empty(in.w.shape(), DType::F32);
  cpu::moe_experts_backward(in.h, in.up, in.down, in.idx, in.w, cpu_cache, in.dout, dh, none, none,
                            dtopk_w, cpu_lora);

  const Tensor h = to_gpu(in.h, dtype), up = to_gpu(in.up, dtype), down = to_gpu(in.down, dtype);
  const Tensor idx = to_gpu(in.idx), w = to_gpu(in.w, dtype);
  MoeExpertsCache cache;
  Tensor out_gpu = gpu_empty(in.h.shape(), dtype);
  cuda::moe_experts_forward(h, up, down, idx, w, out_gpu, cache, gpu_lora);
  expect_close(what + " out", out_gpu, out, tol);
  Tensor dh_gpu = gpu_empty(in.h.shape(), dtype), dtopk_gpu = gpu_empty(in.w.shape(), dtype);
  cuda::moe_experts_backward(h, up, down, idx, w, cache, to_gpu(in.dout, dtype), dh_gpu, none, none,
                             dtopk_gpu, gpu_lora);
  expect_close(what + " dh", dh_gpu, dh, tol);
  expect_close(what + " dtopk_w", dtopk_gpu, dtopk_w, tol);
  expect_close(what + " dup_a", gpu_lora.dup_a, cpu_lora.dup_a, tol);
  expect_close(what + " dup_b", gpu_lora.dup_b, cpu_lora.dup_b, tol);
  expect_close(what + " ddown_a", gpu_lora.ddown_a, cpu_lora.ddown_a, tol);
  expect_close(what + " ddown_b", gpu_lora.ddown_b, cpu_lora.ddown_b, tol);
}

TEST(MoeExpertsCuda, LoraOnAFrozenBaseMatchesCpu) {
  for (const DType dtype : {DType::F32, DType::BF16}) {
    expect_experts_lora_match_cpu(37, 64, 96, 8, 2, 4, 160, dtype);
    expect_experts_lora_match_cpu(130, 72, 40, 16, 6, 8, 170, dtype);
  }
}

TEST(MoeExpertsCuda, ForwardRejectsExpertIdOutOfRange) {
  const ExpertsInputs in = random_experts(4, 3, 5, 4, 2, 150);
  const Tensor h = to_gpu(in.h), up = to_gpu(in.up), down = to_gpu(in.down), w = to_gpu(in.w);
  Tensor out = gpu_empty(in.h.shape(), DType::F32);
  MoeExpertsCache cache;
  for (const int64_t bad : {int64_t(4), int64_t(-2)}) {
    Tensor idx = in.idx.clone();
    idx.data<int64_t>()[5] = bad;
    EXPECT_THROW(cuda::moe_experts_forward(h, up, down, to_gpu(idx), w, out, cache, {}), Error)
        << bad;
  }
}

// ---------------------------------------------------------------------------------------------
// Expert load and correction bias

TEST(MoeLoadCuda, CountsMatchCpuExactly) {
  for (const auto& [n_tokens, k, n_experts] :
       {std::tuple<int64_t, int64_t, int64_t>{23, 3, 7}, {1, 1, 8}, {300, 6, 128}, {45, 22, 512}}) {
    const Tensor idx = random_topk_idx(n_tokens, k, n_experts, n_experts / 3, 200 + n_experts);
    Tensor load = Tensor::empty({n_experts}, DType::I64);
    cpu::moe_expert_load(idx, load);
    Tensor load_gpu = to_gpu(Tensor::from(std::vector<int64_t>(n_experts, 7), {n_experts}));
    cuda::moe_expert_load(to_gpu(idx), load_gpu);
    EXPECT_EQ(ints(load_gpu), ints(load)) << n_experts;
    EXPECT_EQ(ints(load_gpu)[n_experts / 3], 0);
  }
}

TEST(MoeLoadCuda, CorrectionBiasUpdateMatchesCpuBitForBit) {
  // Mean load 3: experts 1 and 4 are under it, 0 and 5 over it, 2 and 3 at it (no change).
  const Tensor small = Tensor::from(std::vector<int64_t>{5, 1, 3, 3, 0, 6}, {6});
  // 300 experts (more than one per thread of the kernel) in pairs summing to 40: mean 20, with
  // loads above, below and at it.
  std::vector<int64_t> many(300);
  for (int64_t e = 0; e < 300; e += 2) {
    many[e] = 20 + (e * 37) % 21 - 10;
    many[e + 1] = 40 - many[e];
  }
  for (const Tensor& load : {small, Tensor::from(many, {300})}) {
    const int64_t n_experts = load.size(0);
    const Tensor bias0 = random_cpu({n_experts}, 210, 0.1);
    Tensor bias = bias0.clone();
    cpu::moe_update_correction_bias(bias, load, 1e-3);
    Tensor bias_gpu = to_gpu(bias0);
    cuda::moe_update_correction_bias(bias_gpu, to_gpu(load), 1e-3);
    const Tensor got = to_cpu(bias_gpu);
    for (int64_t e = 0; e < n_experts; ++e)
      EXPECT_EQ(got.data<float>()[e], bias.data<float>()[e]) << e;
    // bf16 bias: the fp32 update of the bf16 value, rounded once.
    const Tensor bias0_bf16 = bias0.to(DType::BF16).to(DType::F32);
    Tensor expected = bias0_bf16.clone();
    cpu::moe_update_correction_bias(expected, load, 1e-3);
    expected = expected.to(DType::BF16).to(DType::F32);
    Tensor bf16_gpu = to_gpu(bias0, DType::BF16);
    cuda::moe_update_correction_bias(bf16_gpu, to_gpu(load), 1e-3);
    const Tensor got_bf16 = to_cpu(bf16_gpu);
    for (int64_t e = 0; e < n_experts; ++e)
      EXPECT_EQ(got_bf16.data<float>()[e], expected.data<float>()[e]) << e;
  }
}

}  // namespace
}  // namespace nh
