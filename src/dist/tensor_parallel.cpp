#include "dist/tensor_parallel.h"

#include <cstring>

#include "model/params.h"

namespace nh {

namespace {

// The mixer's own name of a layer parameter ("in_proj.weight"), "" for others.
std::string mixer_param(const std::string& name) {
  const std::string prefix = "layers." + std::to_string(layer_of(name)) + ".mixer.";
  return name.starts_with(prefix) ? name.substr(prefix.size()) : "";
}

void need_divisible(int64_t value, int ranks, const std::string& field) {
  if (value % ranks != 0)
    throw Error("recipe", "tensor_model_parallel_size",
                "a divisor of the model's " + field + " (" + std::to_string(value) + ")",
                std::to_string(ranks));
}

// Copies rows [src_row, src_row + rows) × columns [src_col, src_col + cols) of `src` (row
// length src_cols) to `dst` at (dst_row, dst_col) (row length dst_cols); raw bytes.
void copy_block(const Tensor& src, int64_t src_cols, int64_t src_row, int64_t src_col, Tensor& dst,
                int64_t dst_cols, int64_t dst_row, int64_t dst_col, int64_t rows, int64_t cols) {
  const size_t e = dtype_size(src.dtype());
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(static_cast<char*>(dst.raw()) + ((dst_row + r) * dst_cols + dst_col) * e,
                static_cast<const char*>(src.raw()) + ((src_row + r) * src_cols + src_col) * e,
                size_t(cols) * e);
}

// Row length of a tensor seen as [rows, ·].
int64_t row_length(const Tensor& t) { return t.ndim() == 0 ? 1 : t.numel() / t.size(0); }

Shape with_dim(Shape s, int dim, int64_t n) {
  s[size_t(dim)] = n;
  return s;
}

}  // namespace

TpSplit tp_split(const ModelConfig& c, const std::string& name) {
  const std::string p = mixer_param(name);
  if (p.empty()) return {};
  const int layer = layer_of(name);
  const int64_t din = c.d_inner(), gn = c.n_groups * c.ssm_state_size, h = c.mamba_num_heads;
  switch (c.layers.at(size_t(layer))) {
    case LayerKind::Mamba:
      if (p == "in_proj.weight") return {TpSplit::Rows, {din, din, gn, gn, h}};
      if (p == "conv1d.weight" || p == "conv1d.bias") return {TpSplit::Rows, {din, gn, gn}};
      if (p == "dt_bias" || p == "A_log" || p == "D") return {TpSplit::Rows, {h}};
      if (p == "norm.weight") return {TpSplit::Rows, {din}};
      if (p == "out_proj.weight") return {TpSplit::Columns, {}};
      break;
    case LayerKind::Attention:
      if (p == "q_proj.weight") return {TpSplit::Rows, {c.num_attention_heads * c.head_dim}};
      if (p == "k_proj.weight" || p == "v_proj.weight")
        return {TpSplit::Rows, {c.num_key_value_heads * c.head_dim}};
      if (p == "o_proj.weight") return {TpSplit::Columns, {}};
      break;
    case LayerKind::Mlp:
      if (p == "up_proj.weight") return {TpSplit::Rows, {c.intermediate_size}};
      if (p == "down_proj.weight") return {TpSplit::Columns, {}};
      break;
    case LayerKind::Moe:
      return {};
  }
  throw Error("model", name, "a parameter tensor parallelism knows how to split",
              "a bias or an unknown parameter (biases are not split yet)");
}

ModelConfig tp_local_config(const ModelConfig& c, int ranks) {
  ModelConfig local = c;
  if (ranks == 1) return local;
  bool mamba = false, attention = false, mlp = false;
  for (LayerKind k : c.layers) {
    mamba |= k == LayerKind::Mamba;
    attention |= k == LayerKind::Attention;
    mlp |= k == LayerKind::Mlp;
  }
  if (mamba) {
    need_divisible(c.mamba_num_heads, ranks, "mamba_num_heads");
    need_divisible(c.n_groups, ranks, "n_groups");
    local.mamba_num_heads /= ranks;
    local.n_groups /= ranks;
  }
  if (attention) {
    need_divisible(c.num_attention_heads, ranks, "num_attention_heads");
    need_divisible(c.num_key_value_heads, ranks, "num_key_value_heads");
    local.num_attention_heads /= ranks;
    local.num_key_value_heads /= ranks;
  }
  if (mlp) {
    need_divisible(c.intermediate_size, ranks, "intermediate_size");
    local.intermediate_size /= ranks;
  }
  return local;
}

Shape tp_shard_shape(const Shape& full, const TpSplit& split, int ranks) {
  if (split.kind == TpSplit::Whole) return full;
  if (split.kind == TpSplit::Columns) return with_dim(full, 1, full.at(1) / ranks);
  int64_t local_rows = 0;
  for (int64_t b : split.row_blocks) local_rows += b / ranks;
  return with_dim(full, 0, local_rows);
}

Tensor tp_shard(const Tensor& full, const TpSplit& split, int rank, int ranks) {
  if (split.kind == TpSplit::Whole) return full;
  Tensor out = Tensor::empty(tp_shard_shape(full.shape(), split, ranks), full.dtype());
  if (split.kind == TpSplit::Columns) {
    const int64_t cols = out.size(1);
    copy_block(full, full.size(1), 0, cols * rank, out, cols, 0, 0, full.size(0), cols);
    return out;
  }
  const int64_t width = row_length(full);
  int64_t src = 0, dst = 0;
  for (int64_t b : split.row_blocks) {
    copy_block(full, width, src + b / ranks * rank, 0, out, width, dst, 0, b / ranks, width);
    src += b;
    dst += b / ranks;
  }
  return out;
}

Tensor tp_unshard(const std::vector<Tensor>& shards, const TpSplit& split) {
  const int ranks = int(shards.size());
  const Tensor& first = shards.at(0);
  if (split.kind == TpSplit::Whole) return first;
  if (split.kind == TpSplit::Columns) {
    const int64_t rows = first.size(0), cols = first.size(1);
    Tensor full = Tensor::empty(with_dim(first.shape(), 1, cols * ranks), first.dtype());
    for (int r = 0; r < ranks; ++r)
      copy_block(shards[size_t(r)], cols, 0, 0, full, cols * ranks, 0, cols * r, rows, cols);
    return full;
  }
  int64_t rows = 0;
  for (int64_t b : split.row_blocks) rows += b;
  Tensor full = Tensor::empty(with_dim(first.shape(), 0, rows), first.dtype());
  const int64_t width = row_length(first);
  for (int r = 0; r < ranks; ++r) {
    int64_t src = 0, dst = 0;
    for (int64_t b : split.row_blocks) {
      copy_block(shards[size_t(r)], width, src, 0, full, width, dst + b / ranks * r, 0, b / ranks,
                 width);
      src += b / ranks;
      dst += b;
    }
  }
  return full;
}

}  // namespace nh
