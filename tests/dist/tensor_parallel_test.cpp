// Tensor-parallel splits: shards put back together give the whole tensor, each rank's rows come
// from every block of in_proj, and a model that does not divide is an error naming the field.
#include "dist/tensor_parallel.h"

#include <gtest/gtest.h>

#include "model/params.h"
#include "model/presets.h"
#include "support/expect.h"
#include "support/gradcheck.h"

namespace nh {
namespace {

TEST(TensorParallel, ShardsOfEverySplitReassembleTheWholeTensor) {
  const ModelConfig c = preset_config("tiny-hybrid");  // layers: M, MLP, M, attention, MLP, M
  for (const char* name : {"layers.0.mixer.in_proj.weight", "layers.0.mixer.conv1d.weight",
                           "layers.0.mixer.A_log", "layers.0.mixer.out_proj.weight",
                           "layers.3.mixer.k_proj.weight", "layers.3.mixer.o_proj.weight",
                           "layers.1.mixer.up_proj.weight", "layers.1.mixer.down_proj.weight"}) {
    const TpSplit split = tp_split(c, name);
    ASSERT_NE(split.kind, TpSplit::Whole) << name;
    Shape shape;
    for (const auto& spec : param_specs(c, false))
      if (spec.name == name) shape = spec.shape;
    const Tensor full = test::random_tensor(shape, 3, 1.0, DType::F32);
    std::vector<Tensor> shards;
    for (int r = 0; r < 2; ++r) shards.push_back(tp_shard(full, split, r, 2));
    EXPECT_EQ(shards[0].numel() * 2, full.numel()) << name;
    test::expect_near_all(tp_unshard(shards, split), full, 0.0, name);
  }
  EXPECT_EQ(tp_split(c, "layers.0.norm.weight").kind, TpSplit::Whole);
  EXPECT_EQ(tp_split(c, "embeddings.weight").kind, TpSplit::Whole);
}

TEST(TensorParallel, InProjRowsComeFromEachOfItsFiveBlocks) {
  const ModelConfig c = preset_config("tiny-hybrid");
  const int64_t din = c.d_inner(), gn = c.n_groups * c.ssm_state_size, h = c.mamba_num_heads;
  const int64_t rows = 2 * din + 2 * gn + h;
  // Row i of the whole in_proj holds the value i in every column.
  Tensor full = Tensor::empty({rows, c.hidden_size}, DType::F32);
  for (int64_t i = 0; i < full.numel(); ++i) full.data<float>()[i] = float(i / c.hidden_size);
  const Tensor shard = tp_shard(full, tp_split(c, "layers.0.mixer.in_proj.weight"), 1, 2);
  std::vector<int64_t> want;
  int64_t start = 0;
  for (int64_t block : {din, din, gn, gn, h}) {
    for (int64_t i = block / 2; i < block; ++i) want.push_back(start + i);
    start += block;
  }
  ASSERT_EQ(shard.size(0), int64_t(want.size()));
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_EQ(shard.data<float>()[i * size_t(c.hidden_size)], float(want[i])) << i;
}

TEST(TensorParallel, LocalConfigDividesHeadsGroupsAndWidth) {
  const ModelConfig c = preset_config("tiny-hybrid");
  const ModelConfig local = tp_local_config(c, 2);
  EXPECT_EQ(local.mamba_num_heads * 2, c.mamba_num_heads);
  EXPECT_EQ(local.n_groups * 2, c.n_groups);
  EXPECT_EQ(local.num_attention_heads * 2, c.num_attention_heads);
  EXPECT_EQ(local.num_key_value_heads * 2, c.num_key_value_heads);
  EXPECT_EQ(local.intermediate_size * 2, c.intermediate_size);
  // tiny-hybrid has 2 groups and 2 key/value heads: 4 ranks cannot split them.
  test::expect_error([&] { tp_local_config(c, 4); }, "tensor_model_parallel_size", "n_groups");
  ModelConfig mamba2 = preset_config("mamba2-130m");  // one group
  test::expect_error([&] { tp_local_config(mamba2, 2); }, "tensor_model_parallel_size", "n_groups");
}

}  // namespace
}  // namespace nh
