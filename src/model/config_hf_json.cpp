// config.json written the way transformers reads it (its canonical key names, every field the
// engine knows, non-finite floats in transformers' {"__float__": ...} form), from ModelConfig.
#include "model/config.h"

#include <cmath>
#include <optional>

namespace nh {
namespace {

using json = nlohmann::json;

json float_value(double x) {
  if (std::isinf(x)) return json{{"__float__", x > 0 ? "Infinity" : "-Infinity"}};
  return x;
}

json layer_names(const std::vector<LayerKind>& layers) {
  json out = json::array();
  for (LayerKind k : layers) out.push_back(layer_name(k));
  return out;
}

json token(const std::optional<int64_t>& id) { return id ? json(*id) : json(nullptr); }

json eos_token(const std::vector<int64_t>& ids) {
  if (ids.empty()) return nullptr;
  if (ids.size() == 1) return ids[0];
  return ids;
}

}  // namespace

json to_hf_json(const ModelConfig& c) {
  json j = c.raw.is_object() ? c.raw : json::object();
  // Aliases consumed on reading; the canonical keys below replace them.
  for (const char* key :
       {"mamba_n_groups", "mamba_d_conv", "mamba_expand", "mamba_dt_min", "mamba_dt_max",
        "mamba_dt_limit", "mamba_dt_init_floor", "mamba_conv_bias", "mamba_chunk_size",
        "layer_types", "num_local_experts", "attention_head_dim"})
    j.erase(key);

  const bool mamba2 = c.model_type == "mamba2";
  j["model_type"] = c.model_type;
  j["architectures"] = {mamba2 ? "Mamba2ForCausalLM" : "NemotronHForCausalLM"};
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["layer_norm_epsilon"] = float_value(c.layer_norm_epsilon);
  j["residual_in_fp32"] = c.residual_in_fp32;
  j["initializer_range"] = float_value(c.initializer_range);
  j["rescale_prenorm_residual"] = c.rescale_prenorm_residual;
  j["n_groups"] = c.n_groups;
  j["conv_kernel"] = c.conv_kernel;
  j["expand"] = c.expand;
  j["chunk_size"] = c.chunk_size;
  j["use_conv_bias"] = c.use_conv_bias;
  j["use_bias"] = c.use_bias;
  j["time_step_min"] = float_value(c.time_step_min);
  j["time_step_max"] = float_value(c.time_step_max);
  j["time_step_floor"] = float_value(c.time_step_floor);
  j["time_step_limit"] = {float_value(c.time_step_limit.first),
                          float_value(c.time_step_limit.second)};
  j["bos_token_id"] = token(c.bos_token_id);
  j["pad_token_id"] = token(c.pad_token_id);
  j["eos_token_id"] = eos_token(c.eos_token_ids);

  if (mamba2) {
    for (const char* key :
         {"d_model", "n_layer", "ssm_cfg", "pad_vocab_size_multiple", "tie_embeddings", "rms_norm",
          "fused_add_norm", "d_intermediate", "attn_layer_idx", "attn_cfg"})
      j.erase(key);
    j["num_hidden_layers"] = c.num_layers();
    j["num_heads"] = c.mamba_num_heads;
    j["head_dim"] = c.mamba_head_dim;
    j["state_size"] = c.ssm_state_size;
    return j;
  }

  j["layers_block_type"] = layer_names(c.layers);
  j["hybrid_override_pattern"] = c.pattern();
  j["num_hidden_layers"] = c.num_layers();
  j["mamba_num_heads"] = c.mamba_num_heads;
  j["mamba_head_dim"] = c.mamba_head_dim;
  j["ssm_state_size"] = c.ssm_state_size;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["attention_bias"] = c.attention_bias;
  j["intermediate_size"] = c.intermediate_size;
  j["mlp_bias"] = c.mlp_bias;
  j["n_routed_experts"] = c.n_routed_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["moe_shared_expert_intermediate_size"] = c.moe_shared_expert_intermediate_size;
  j["moe_latent_size"] = c.moe_latent_size > 0 ? json(c.moe_latent_size) : json(nullptr);
  j["n_group"] = c.n_group;
  j["topk_group"] = c.topk_group;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["routed_scaling_factor"] = float_value(c.routed_scaling_factor);
  j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
  j["mtp_layers_block_type"] = layer_names(c.mtp_layers);
  j["mtp_hybrid_override_pattern"] = layer_pattern(c.mtp_layers);
  return j;
}

}  // namespace nh
