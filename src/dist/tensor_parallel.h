// Tensor parallelism, Megatron style, over the ranks of a tensor-parallel group: the Mamba,
// attention and MLP layers are split across the ranks by heads, groups and columns, and each
// rank computes its part of the layer from the whole (replicated) input.
//   - Mamba: in_proj's z, x, B, C and dt rows by heads and groups, conv1d's channels, A_log, D,
//     dt_bias, the gated norm (per group, so groups stay whole) by heads and groups; out_proj by
//     its input columns.
//   - Attention: q_proj by query heads, k_proj and v_proj by key/value heads; o_proj by columns.
//   - MLP: up_proj by rows, down_proj by columns.
// The layer's output on each rank is a partial sum, summed over the group before the residual
// add; the layer's input gradient likewise (Model does both). MoE layers, the norms, the
// embedding and the LM head are whole on every rank and compute the same values there.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace nh {

// How one parameter splits: whole on every rank, by rows (dimension 0) in blocks that each
// split evenly (in_proj: z, x, B, C, dt), or by columns (dimension 1).
struct TpSplit {
  enum Kind { Whole, Rows, Columns } kind = Whole;
  std::vector<int64_t> row_blocks;  // Rows: the full tensor's row blocks, in order
};

// The split of parameter `name` of a model of `config` (the whole model's config).
TpSplit tp_split(const ModelConfig& config, const std::string& name);

// The config each rank computes with: heads, groups and the MLP width divided by `ranks`. A
// model that does not divide is an Error naming tensor_model_parallel_size and the field.
ModelConfig tp_local_config(const ModelConfig& config, int ranks);

// The shape of each rank's shard of a tensor of shape `full`.
Shape tp_shard_shape(const Shape& full, const TpSplit& split, int ranks);
// Rank `rank`'s shard of the whole tensor `full`, and the whole tensor from every rank's shards
// (shards[r] of rank r), both on the CPU.
Tensor tp_shard(const Tensor& full, const TpSplit& split, int rank, int ranks);
Tensor tp_unshard(const std::vector<Tensor>& shards, const TpSplit& split);

}  // namespace nh
