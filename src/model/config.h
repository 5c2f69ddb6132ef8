// The model configuration: Hugging Face config.json of a Nemotron-H (`nemotron_h`) or Mamba-2
// (`mamba2`) model, or mamba_ssm's own config.json of the state-spaces releases, read into one
// struct whose field names follow SPEC.md. Keys and defaults are those of transformers'
// configuration_nemotron_h.py / configuration_mamba2.py (5.24), with their legacy aliases
// (SPEC §1, §7); docs/CONFIGS.md lists the published configurations.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace nh {

// One mixer per layer (SPEC §1).
enum class LayerKind { Mamba, Attention, Mlp, Moe };

// 'M', '*', '-', 'E' as in hybrid_override_pattern.
char layer_char(LayerKind kind);
// "linear_attention", "full_attention", "mlp", "moe" as in layers_block_type.
const char* layer_name(LayerKind kind);
// The pattern string of a layer list ("M-M*").
std::string layer_pattern(const std::vector<LayerKind>& layers);

struct ModelConfig {
  std::string model_type = "nemotron_h";  // "nemotron_h" or "mamba2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  std::vector<LayerKind> layers;  // the number of layers is layers.size()
  bool tie_word_embeddings = false;
  double layer_norm_epsilon = 1e-5;
  bool residual_in_fp32 = false;
  double initializer_range = 0.02;
  bool rescale_prenorm_residual = true;

  // Mamba-2 mixer (SPEC §2).
  int64_t mamba_num_heads = 0;
  int64_t mamba_head_dim = 0;
  int64_t ssm_state_size = 0;
  int64_t n_groups = 8;
  int64_t conv_kernel = 4;
  int64_t expand = 2;  // informational for nemotron_h; mamba2 requires expand·D == d_inner()
  int64_t chunk_size = 128;
  bool use_conv_bias = true;
  bool use_bias = false;  // in_proj / out_proj biases
  double time_step_min = 0.001;
  double time_step_max = 0.1;
  double time_step_floor = 1e-4;
  std::pair<double, double> time_step_limit{0.0, std::numeric_limits<double>::infinity()};

  // Attention (SPEC §3).
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 8;
  int64_t head_dim = 128;
  bool attention_bias = false;

  // MLP (SPEC §4).
  int64_t intermediate_size = 21504;
  bool mlp_bias = false;

  // Mixture of experts (SPEC §5).
  int64_t n_routed_experts = 8;
  int64_t num_experts_per_tok = 2;
  int64_t moe_intermediate_size = 7688;
  int64_t moe_shared_expert_intermediate_size = 7688;
  int64_t moe_latent_size = 0;  // 0: no latent projections
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;

  // Multi-token prediction layers (SPEC §10); mtp_layers is meaningful only when
  // num_nextn_predict_layers > 0 (transformers keeps its default [*, E] otherwise).
  int64_t num_nextn_predict_layers = 0;
  std::vector<LayerKind> mtp_layers{LayerKind::Attention, LayerKind::Moe};

  // Special tokens; eos may be a list in config.json.
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> pad_token_id;
  std::vector<int64_t> eos_token_ids;

  // Read from mamba_ssm's layout (d_model / n_layer / ssm_cfg): its weights name the
  // embedding `backbone.embedding.weight` (singular).
  bool mamba_ssm_layout = false;

  // The config.json as read (non-finite numbers as {"__float__": "Infinity"}), so keys this
  // struct does not know survive a save.
  nlohmann::json raw = nlohmann::json::object();

  int64_t num_layers() const { return static_cast<int64_t>(layers.size()); }
  int64_t d_inner() const { return mamba_num_heads * mamba_head_dim; }
  int64_t conv_dim() const { return d_inner() + 2 * n_groups * ssm_state_size; }
  std::string pattern() const { return layer_pattern(layers); }
  bool has(LayerKind kind) const;
  // MTP layers exist in the model (num_nextn_predict_layers > 0) and include `kind`.
  bool mtp_has(LayerKind kind) const;

  friend bool operator==(const ModelConfig&, const ModelConfig&) = default;
};

// Reads a config.json object. `where` names its file in errors. Every problem (unknown
// model_type, missing or mistyped key, sizes that do not divide, values out of range) is an
// nh::Error naming `where`, the field, what was expected and what was found.
ModelConfig parse_config(const nlohmann::json& j, const std::string& where);

// Parses config.json text as Python writes it: bare Infinity, -Infinity and NaN outside of
// strings are accepted (nlohmann::json rejects them) and become {"__float__": "..."} objects,
// transformers 5's spelling. Syntax errors and nesting deeper than 256 are an nh::Error.
nlohmann::json parse_json_text(std::string_view text, const std::string& where);

// parse_json_text then parse_config.
ModelConfig parse_config_text(std::string_view text, const std::string& where);

// A config.json file, or <dir>/config.json when `path_or_dir` is a directory.
ModelConfig load_config(const std::string& path_or_dir);

// The config with its layers replaced by `pattern` (hybrid_override_pattern characters),
// validated as a config.json would be; `pattern` empty returns the config unchanged. Only for
// nemotron_h models; problems are an Error naming `where` and hybrid_override_pattern.
ModelConfig with_layer_pattern(const ModelConfig& config, const std::string& pattern,
                               const std::string& where);

// The config.json to write when saving: `raw` (unknown keys survive) with the canonical keys
// set, legacy aliases removed, time_step_limit's infinity as {"__float__": "Infinity"}.
// nemotron_h writes layers_block_type (new names) plus hybrid_override_pattern and
// num_hidden_layers for older readers; mamba2 (also from the mamba_ssm layout) writes the
// transformers Mamba2Config keys, so parse_config(to_hf_json(c)) == c up to `raw` and
// `mamba_ssm_layout`.
nlohmann::json to_hf_json(const ModelConfig& config);

}  // namespace nh
