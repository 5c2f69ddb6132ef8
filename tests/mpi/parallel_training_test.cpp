// Data and tensor parallelism against one process: every rank also trains the same model alone
// on the whole global batch, then the parallel run (tensor-parallel shards of the layers, its
// data-parallel share of the micro-batches, gradients reduced, with and without the distributed
// optimizer) must see the same losses, gradient norms, gradients and weights.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "dist/data_parallel.h"
#include "dist/tensor_parallel.h"
#include "model/presets.h"
#include "support/expect.h"
#include "world.h"

namespace nh {
namespace {

using test::world;

constexpr int64_t kMicroBatches = 4, kRows = 2, kSeq = 24;

struct Batch {
  Tensor ids, targets;
};

// Micro-batch `micro` of step `step`: random tokens, the next token as target.
Batch micro_batch(const ModelConfig& c, int step, int micro) {
  Rng rng(1000 * uint64_t(step) + uint64_t(micro));
  Tensor ids = Tensor::empty({kRows, kSeq}, DType::I64);
  for (int64_t i = 0; i < ids.numel(); ++i)
    ids.data<int64_t>()[i] = int64_t(rng.uniform() * double(c.vocab_size - 1));
  return {ids, shift_labels(ids)};
}

struct StepLog {
  double loss = 0, grad_norm = 0;
};

// One optimizer step over the global batch; `dp` null: this process (or tensor-parallel group)
// alone on every micro-batch. Returns the mean loss and the gradient norm.
StepLog train_step(Model& model, Optimizer& opt, DataParallel* dp, int step) {
  model.zero_grads();
  const int ranks = dp ? dp->group().size() : 1, rank = dp ? dp->group().rank() : 0;
  double sum = 0, count = 0;
  Tensor none;
  for (int micro = 0; micro < kMicroBatches; ++micro) {
    if (micro % ranks != rank) continue;
    if (dp) dp->set_last_micro_batch(micro + ranks >= kMicroBatches);
    model.set_final_backward(micro + ranks >= kMicroBatches);
    const Batch b = micro_batch(model.config(), step, micro);
    const LossSum l = model.forward(b.ids, b.targets, Tensor(), none);
    model.backward(1.0);
    sum += l.sum;
    count += double(l.count);
  }
  if (dp) {
    dp->finish_gradient_reduction();
    sum = dp->group().all_reduce(sum);
    count = dp->group().all_reduce(count);
  }
  const StepResult r = opt.step(1.0 / count, 2e-3, step);
  if (dp) dp->gather_parameters();
  return {sum / count, r.grad_norm};
}

struct Case {
  const char* preset;
  DType dtype;
  int tp;  // tensor-parallel size; the data-parallel size is the rest of the world
  int ep;  // expert-parallel size, out of the data-parallel ranks
  bool distributed_optimizer;
  int64_t bucket_elements;
  // fp32: the ranks add the same gradients in another order, so sums differ by rounding
  // (~1e-7 relative); Adam divides by √v, which turns a tiny difference in a near-zero gradient
  // into up to lr = 2e-3 per step in its weight, so weights are compared at 1e-2·lr·steps and
  // the losses and norms at 1e-5. fp64: the same argument at 1e-12.
  double loss_tol, weight_tol;
  bool sequence_parallel = false;
};

class ParallelTrainingMatchesOneProcess : public testing::TestWithParam<Case> {};

TEST_P(ParallelTrainingMatchesOneProcess, LossesGradientsAndWeights) {
  const Case c = GetParam();
  ASSERT_EQ(kMicroBatches % world().size(), 0) << "run with 2 or 4 ranks";
  // Tensor-parallel ranks are neighbours, as in the trainer.
  if ((world().size() / c.tp) % c.ep != 0) GTEST_SKIP() << "the world does not fit this layout";
  const auto tp = world().split(world().rank() / c.tp, world().rank());
  const auto dp_group = world().split(world().rank() % c.tp, world().rank());
  const auto ep = dp_group->split(dp_group->rank() / c.ep, 0);
  const auto expert_dp = dp_group->split(dp_group->rank() % c.ep, 0);
  const ModelConfig config = preset_config(c.preset);
  Model alone = Model::init(config, 5), parallel = Model::init(config, 5);
  if (c.tp > 1) parallel.shard_tensor_parallel(*tp);
  if (c.sequence_parallel) parallel.set_sequence_parallel(true);
  if (c.ep > 1) parallel.shard_experts(*ep);
  // This rank's part of a tensor of the single process: its experts, or its tensor-parallel
  // shard.
  const auto mine = [&](const std::string& name, const Tensor& whole) {
    if (c.ep > 1 && norm_kind(parallel, name) == NormKind::Expert) {
      const int64_t local = whole.size(0) / ep->size();
      return whole.slice0(local * ep->rank(), local * (ep->rank() + 1));
    }
    return tp_shard(whole, tp_split(config, name), tp->rank(), tp->size());
  };
  alone.to(Device::CPU, c.dtype);
  parallel.to(Device::CPU, c.dtype);
  Optimizer alone_opt(alone, {});
  DataParallel dp(parallel, *dp_group, c.distributed_optimizer, c.bucket_elements,
                  c.ep > 1 ? expert_dp.get() : nullptr);
  if (c.bucket_elements < DataParallel::kDefaultBucketElements) {
    EXPECT_GT(dp.buckets(), 3u);
  }
  Optimizer parallel_opt(dp.optimizer_ranges(), {}, nullptr, dp.norm_groups());

  for (int step = 1; step <= 3; ++step) {
    const StepLog a = train_step(alone, alone_opt, nullptr, step);
    const StepLog p = train_step(parallel, parallel_opt, &dp, step);
    EXPECT_NEAR(p.loss, a.loss, c.loss_tol * a.loss) << "step " << step;
    EXPECT_NEAR(p.grad_norm, a.grad_norm, c.loss_tol * a.grad_norm) << "step " << step;
    // The reduced gradients this rank's optimizer read: its ranges of the summed gradients.
    double worst = 0, scale = 0;
    for (const OptimizerRange& r : dp.optimizer_ranges()) {
      const Tensor g = mine(r.name, alone.grads().at(r.name));
      const Tensor want = g.reshape({g.numel()}).slice0(r.begin, r.begin + r.grad.numel());
      for (int64_t i = 0; i < want.numel(); ++i) {
        worst = std::max(worst, std::fabs(read_float(r.grad, i) - read_float(want, i)));
        scale = std::max(scale, std::fabs(read_float(want, i)));
      }
    }
    EXPECT_LE(worst, c.loss_tol * scale) << "gradients, step " << step;
  }
  for (const auto& name : alone.params().names())
    test::expect_near_all(parallel.params().at(name), mine(name, alone.params().at(name)),
                          c.weight_tol, name);
}

// With 2 ranks a tensor-parallel size of 2 leaves one data-parallel rank; with 4, two; the
// layouts that do not fit a world are skipped there. The MoE model runs tensor and expert
// parallel in fp64 only: in fp32 the partial sums (of the split layers, of the experts' outputs)
// round differently, and by the second step that can route a token near a tie to another
// expert, which changes that expert's gradient by far more than rounding (the loss agrees).
INSTANTIATE_TEST_SUITE_P(
    Layouts, ParallelTrainingMatchesOneProcess,
    testing::Values(Case{"tiny-hybrid", DType::F32, 1, 1, false, 3000, 1e-5, 6e-5},
                    Case{"tiny-hybrid", DType::F32, 1, 1, true, 3000, 1e-5, 6e-5},
                    Case{"tiny-hybrid", DType::F32, 1, 1, true,
                         DataParallel::kDefaultBucketElements, 1e-5, 6e-5},
                    Case{"tiny-moe", DType::F32, 1, 1, true, 5000, 1e-5, 6e-5},
                    Case{"tiny-hybrid", DType::F64, 1, 1, true, 3000, 1e-12, 1e-12},
                    Case{"tiny-hybrid", DType::F32, 2, 1, false, 3000, 1e-5, 6e-5},
                    Case{"tiny-moe", DType::F64, 2, 1, true, 3000, 1e-12, 1e-12},
                    Case{"tiny-hybrid", DType::F64, 2, 1, true, 3000, 1e-12, 1e-12},
                    Case{"tiny-moe", DType::F64, 1, 2, false, 3000, 1e-12, 1e-12},
                    Case{"tiny-moe", DType::F64, 1, 2, true, 3000, 1e-12, 1e-12},
                    Case{"tiny-moe", DType::F64, 2, 2, true, 3000, 1e-12, 1e-12},
                    // Sequence parallel.
                    Case{"tiny-hybrid", DType::F32, 2, 1, false, 3000, 1e-5, 6e-5, true},
                    Case{"tiny-hybrid", DType::F64, 2, 1, true, 3000, 1e-12, 1e-12, true},
                    Case{"tiny-moe", DType::F64, 2, 2, true, 3000, 1e-12, 1e-12, true}));

TEST(DataParallel, BucketsDivideEvenlyAndCoverEveryParameterOnce) {
  const ModelConfig config = preset_config("tiny-hybrid");
  Model m = Model::init(config, 5);
  DataParallel dp(m, world(), true, 1000);
  int64_t owned = 0, total = 0;
  for (const OptimizerRange& r : dp.optimizer_ranges()) owned += r.param.numel();
  for (const auto& t : m.trainable()) total += t.param.numel();
  EXPECT_EQ(world().all_reduce(double(owned)), double(total));
}

}  // namespace
}  // namespace nh
