#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>

#include "core/error.h"
#include "io/text_file.h"

namespace nh {
namespace {

using json = nlohmann::json;

// Sizes are bounded so that products of two fit int64 with room to spare; no released model
// is within a factor of 100 of this.
constexpr int64_t kMaxSize = 2147483647;
constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();
constexpr int64_t kMinInt = std::numeric_limits<int64_t>::min();
constexpr int kMaxDepth = 256;
constexpr double kInf = std::numeric_limits<double>::infinity();

// Bare Infinity/-Infinity/NaN become strings with this prefix before nlohmann parses the
// text; the \u0001 keeps them apart from any string a config really contains.
constexpr std::string_view kNonFinitePrefix = "\x01nh:";

const std::vector<LayerKind> kDefaultMtpLayers{LayerKind::Attention, LayerKind::Moe};

std::string describe(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

std::string range_text(int64_t lo, int64_t hi) {
  if (lo == kMinInt && hi == kMaxInt) return "an integer";
  if (hi == kMaxInt) return "an integer >= " + std::to_string(lo);
  return "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
}

// The first of `keys` present with a non-null value (legacy aliases are listed first: in
// transformers they override the canonical key), or nullptr. `name` gets the key found.
const json* find_any(const json& obj, std::initializer_list<const char*> keys,
                     std::string* name = nullptr) {
  for (const char* key : keys) {
    auto it = obj.find(key);
    if (it != obj.end() && !it->is_null()) {
      if (name) *name = key;
      return &*it;
    }
  }
  return nullptr;
}

int64_t as_int(const json& v, const std::string& where, const std::string& field, int64_t lo,
               int64_t hi) {
  int64_t x = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(kMaxInt))
      throw Error(where, field, range_text(lo, hi), describe(v));
    x = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    x = v.get<int64_t>();
  } else {
    throw Error(where, field, range_text(lo, hi), describe(v));
  }
  if (x < lo || x > hi) throw Error(where, field, range_text(lo, hi), describe(v));
  return x;
}

// A number, or transformers 5's {"__float__": "Infinity" | "-Infinity" | "NaN"}. NaN is
// never a meaningful value here; infinities only where `allow_inf`.
double as_double(const json& v, const std::string& where, const std::string& field,
                 bool allow_inf) {
  const char* expected = allow_inf ? "a number (not NaN)" : "a finite number";
  double x = 0;
  if (v.is_number()) {
    x = v.get<double>();
  } else if (v.is_object() && v.size() == 1 && v.contains("__float__") &&
             v["__float__"].is_string()) {
    const std::string& s = v["__float__"].get_ref<const std::string&>();
    if (s == "Infinity") {
      x = kInf;
    } else if (s == "-Infinity") {
      x = -kInf;
    } else if (s == "NaN") {
      x = std::nan("");
    } else {
      throw Error(where, field, expected, describe(v));
    }
  } else {
    throw Error(where, field, expected, describe(v));
  }
  if (std::isnan(x) || (!allow_inf && std::isinf(x)))
    throw Error(where, field, expected, describe(v));
  return x;
}

bool as_bool(const json& v, const std::string& where, const std::string& field) {
  if (!v.is_boolean()) throw Error(where, field, "true or false", describe(v));
  return v.get<bool>();
}

const std::string& as_string(const json& v, const std::string& where, const std::string& field,
                             const std::string& expected) {
  if (!v.is_string()) throw Error(where, field, expected, describe(v));
  return v.get_ref<const std::string&>();
}

// Readers over one JSON object: the field keeps its default when no key is present.
class Reader {
 public:
  Reader(const json& obj, const std::string& where, std::string prefix = "")
      : obj_(obj), where_(where), prefix_(std::move(prefix)) {}

  const std::string& where() const { return where_; }
  std::string field(const std::string& key) const { return prefix_ + key; }
  const json* find(std::initializer_list<const char*> keys, std::string* name = nullptr) const {
    return find_any(obj_, keys, name);
  }

  void read(std::initializer_list<const char*> keys, int64_t& out, int64_t lo, int64_t hi) const {
    std::string name;
    if (const json* v = find(keys, &name)) out = as_int(*v, where_, field(name), lo, hi);
  }
  void read(std::initializer_list<const char*> keys, double& out) const {
    std::string name;
    if (const json* v = find(keys, &name)) out = as_double(*v, where_, field(name), false);
  }
  void read(std::initializer_list<const char*> keys, bool& out) const {
    std::string name;
    if (const json* v = find(keys, &name)) out = as_bool(*v, where_, field(name));
  }
  int64_t required(const char* key, int64_t lo, int64_t hi) const {
    auto it = obj_.find(key);
    if (it == obj_.end()) throw Error(where_, field(key), range_text(lo, hi), "missing");
    return as_int(*it, where_, field(key), lo, hi);
  }
  // A key that may be absent, null or a string; anything else is an Error.
  std::optional<std::string> string(const char* key, const std::string& expected) const {
    const json* v = find({key});
    if (!v) return std::nullopt;
    return as_string(*v, where_, field(key), expected);
  }
  void token_id(const char* key, std::optional<int64_t>& out) const {
    auto it = obj_.find(key);
    if (it == obj_.end()) return;
    out.reset();
    if (!it->is_null()) out = as_int(*it, where_, field(key), kMinInt, kMaxInt);
  }
  void token_ids(const char* key, std::vector<int64_t>& out) const {
    auto it = obj_.find(key);
    if (it == obj_.end()) return;
    out.clear();
    if (it->is_array()) {
      for (size_t i = 0; i < it->size(); ++i)
        out.push_back(
            as_int((*it)[i], where_, field(key) + "[" + std::to_string(i) + "]", kMinInt, kMaxInt));
    } else if (!it->is_null()) {
      out.push_back(as_int(*it, where_, field(key), kMinInt, kMaxInt));
    }
  }
  void time_step_limit(std::initializer_list<const char*> keys,
                       std::pair<double, double>& out) const {
    std::string name;
    const json* v = find(keys, &name);
    if (!v) return;
    const std::string f = field(name);
    if (!v->is_array() || v->size() != 2)
      throw Error(where_, f, "a list of two numbers", describe(*v));
    out.first = as_double((*v)[0], where_, f + "[0]", true);
    out.second = as_double((*v)[1], where_, f + "[1]", true);
    if (!(out.first >= 0 && std::isfinite(out.first)))
      throw Error(where_, f + "[0]", "a finite lower bound >= 0", describe((*v)[0]));
    if (!(out.second >= out.first))
      throw Error(where_, f + "[1]", "an upper bound >= the lower bound " + describe((*v)[0]),
                  describe((*v)[1]));
  }

 private:
  const json& obj_;
  const std::string& where_;
  std::string prefix_;
};

std::optional<LayerKind> kind_of_name(const std::string& s) {
  if (s == "linear_attention" || s == "mamba") return LayerKind::Mamba;
  if (s == "full_attention" || s == "attention") return LayerKind::Attention;
  if (s == "mlp") return LayerKind::Mlp;
  if (s == "moe") return LayerKind::Moe;
  return std::nullopt;
}

std::optional<LayerKind> kind_of_char(char ch) {
  switch (ch) {
    case 'M':
      return LayerKind::Mamba;
    case '*':
      return LayerKind::Attention;
    case '-':
      return LayerKind::Mlp;
    case 'E':
      return LayerKind::Moe;
    default:
      return std::nullopt;
  }
}

std::vector<LayerKind> layers_from_list(const json& v, const std::string& where,
                                        const std::string& field) {
  const char* expected =
      "a list of linear_attention, full_attention, mlp, moe (or legacy mamba, attention)";
  if (!v.is_array()) throw Error(where, field, expected, describe(v));
  std::vector<LayerKind> out;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string f = field + "[" + std::to_string(i) + "]";
    const char* one = "linear_attention, full_attention, mlp or moe (or legacy mamba, attention)";
    if (!v[i].is_string()) throw Error(where, f, one, describe(v[i]));
    auto kind = kind_of_name(v[i].get_ref<const std::string&>());
    if (!kind) throw Error(where, f, one, describe(v[i]));
    out.push_back(*kind);
  }
  return out;
}

std::vector<LayerKind> layers_from_pattern(const json& v, const std::string& where,
                                           const std::string& field) {
  const std::string& s = as_string(v, where, field, "a string of M, *, - and E");
  std::vector<LayerKind> out;
  for (size_t i = 0; i < s.size(); ++i) {
    auto kind = kind_of_char(s[i]);
    if (!kind) {
      const std::string ch =
          json(std::string(1, s[i])).dump(-1, ' ', false, json::error_handler_t::replace);
      throw Error(where, field, "only the characters M, *, - and E",
                  ch + " at position " + std::to_string(i));
    }
    out.push_back(*kind);
  }
  return out;
}

void require_divides(const std::string& where, const std::string& field, int64_t value,
                     const std::string& divisor_text, int64_t divisor) {
  if (value % divisor != 0)
    throw Error(where, field,
                "a multiple of " + divisor_text + " (" + std::to_string(divisor) + ")",
                std::to_string(value));
}

void require_product_bounded(const std::string& where, const std::string& what, int64_t a,
                             int64_t b) {
  if (a > kMaxSize / b)
    throw Error(where, what, "a product <= " + std::to_string(kMaxSize),
                std::to_string(a) + " * " + std::to_string(b));
}

// JSON key names of the Mamba sizes in each layout, for error messages.
struct MambaKeys {
  const char* heads;
  const char* head_dim;
  const char* state;
  const char* groups;
};

void check_mamba(const ModelConfig& c, const std::string& where, const MambaKeys& k) {
  require_product_bounded(where, std::string(k.heads) + " * " + k.head_dim, c.mamba_num_heads,
                          c.mamba_head_dim);
  require_product_bounded(where, std::string("2 * ") + k.groups + " * " + k.state, 2 * c.n_groups,
                          c.ssm_state_size);
  require_divides(where, k.heads, c.mamba_num_heads, k.groups, c.n_groups);
  if (c.time_step_max < c.time_step_min)
    throw Error(where, "time_step_max", ">= time_step_min (" + describe(c.time_step_min) + ")",
                describe(c.time_step_max));
}

void check_common(const ModelConfig& c, const std::string& where) {
  if (!(c.layer_norm_epsilon > 0))
    throw Error(where, "layer_norm_epsilon", "a number > 0", describe(c.layer_norm_epsilon));
  if (c.initializer_range < 0)
    throw Error(where, "initializer_range", "a number >= 0", describe(c.initializer_range));
  for (auto [name, x] :
       {std::pair{"time_step_min", c.time_step_min}, std::pair{"time_step_max", c.time_step_max},
        std::pair{"time_step_floor", c.time_step_floor}})
    if (x < 0) throw Error(where, name, "a number >= 0", describe(x));
}

// --- nemotron_h ----------------------------------------------------------------------------

void read_mamba_hybrid(const Reader& r, ModelConfig& c) {
  r.read({"mamba_n_groups", "n_groups"}, c.n_groups, 1, kMaxSize);
  r.read({"mamba_d_conv", "conv_kernel"}, c.conv_kernel, 1, kMaxSize);
  r.read({"mamba_expand", "expand"}, c.expand, 1, kMaxSize);
  r.read({"mamba_chunk_size", "chunk_size"}, c.chunk_size, 1, kMaxSize);
  r.read({"mamba_conv_bias", "use_conv_bias"}, c.use_conv_bias);
  r.read({"use_bias"}, c.use_bias);
  r.read({"mamba_dt_min", "time_step_min"}, c.time_step_min);
  r.read({"mamba_dt_max", "time_step_max"}, c.time_step_max);
  r.read({"mamba_dt_init_floor", "time_step_floor"}, c.time_step_floor);
  r.time_step_limit({"mamba_dt_limit", "time_step_limit"}, c.time_step_limit);
}

ModelConfig parse_nemotron_h(const json& j, const std::string& where) {
  const Reader r(j, where);
  ModelConfig c;
  c.model_type = "nemotron_h";
  c.vocab_size = r.required("vocab_size", 1, kMaxSize);
  c.hidden_size = r.required("hidden_size", 1, kMaxSize);

  // transformers: an explicit layers_block_type (or its attribute alias layer_types) wins
  // over hybrid_override_pattern; num_hidden_layers is ignored.
  std::string name;
  if (const json* list = r.find({"layers_block_type", "layer_types"}, &name)) {
    c.layers = layers_from_list(*list, where, name);
  } else if (const json* pattern = r.find({"hybrid_override_pattern"})) {
    c.layers = layers_from_pattern(*pattern, where, "hybrid_override_pattern");
    name = "hybrid_override_pattern";
  } else {
    throw Error(where, "layers_block_type", "a list of layer types (or hybrid_override_pattern)",
                "missing");
  }
  if (c.layers.empty()) throw Error(where, name, "at least one layer", "none");

  r.read({"num_nextn_predict_layers"}, c.num_nextn_predict_layers, 0, kMaxSize);
  c.mtp_layers = kDefaultMtpLayers;
  if (const json* list = r.find({"mtp_layers_block_type"}))
    c.mtp_layers = layers_from_list(*list, where, "mtp_layers_block_type");
  if (const json* pattern = r.find({"mtp_hybrid_override_pattern"});
      pattern && c.mtp_layers == kDefaultMtpLayers)
    c.mtp_layers = layers_from_pattern(*pattern, where, "mtp_hybrid_override_pattern");
  if (c.num_nextn_predict_layers > 0 && c.mtp_layers.empty())
    throw Error(where, "mtp_layers_block_type",
                "at least one layer when num_nextn_predict_layers > 0", "none");

  r.read({"tie_word_embeddings"}, c.tie_word_embeddings);
  r.read({"layer_norm_epsilon"}, c.layer_norm_epsilon);
  r.read({"residual_in_fp32"}, c.residual_in_fp32);
  r.read({"initializer_range"}, c.initializer_range);
  r.read({"rescale_prenorm_residual"}, c.rescale_prenorm_residual);

  const bool mamba = c.has(LayerKind::Mamba) || c.mtp_has(LayerKind::Mamba);
  const bool attention = c.has(LayerKind::Attention) || c.mtp_has(LayerKind::Attention);
  const bool mlp = c.has(LayerKind::Mlp) || c.mtp_has(LayerKind::Mlp);
  const bool moe = c.has(LayerKind::Moe) || c.mtp_has(LayerKind::Moe);

  // The Mamba sizes have no sensible default for a model that has Mamba layers; without
  // any, transformers' defaults stand so the saved config stays complete.
  if (mamba) {
    c.mamba_num_heads = r.required("mamba_num_heads", 1, kMaxSize);
    c.mamba_head_dim = r.required("mamba_head_dim", 1, kMaxSize);
    c.ssm_state_size = r.required("ssm_state_size", 1, kMaxSize);
  } else {
    c.mamba_num_heads = 128;
    c.mamba_head_dim = 64;
    c.ssm_state_size = 128;
    r.read({"mamba_num_heads"}, c.mamba_num_heads, 1, kMaxSize);
    r.read({"mamba_head_dim"}, c.mamba_head_dim, 1, kMaxSize);
    r.read({"ssm_state_size"}, c.ssm_state_size, 1, kMaxSize);
  }
  read_mamba_hybrid(r, c);

  r.read({"num_attention_heads"}, c.num_attention_heads, 1, kMaxSize);
  // transformers: an explicit null means "as many as the query heads".
  if (auto it = j.find("num_key_value_heads"); it != j.end() && it->is_null())
    c.num_key_value_heads = c.num_attention_heads;
  r.read({"num_key_value_heads"}, c.num_key_value_heads, 1, kMaxSize);
  // Nemotron-H 8B/47B/56B spell it attention_head_dim (older remote code).
  r.read({"head_dim", "attention_head_dim"}, c.head_dim, 1, kMaxSize);
  r.read({"attention_bias"}, c.attention_bias);

  r.read({"intermediate_size"}, c.intermediate_size, 1, kMaxSize);
  r.read({"mlp_bias"}, c.mlp_bias);

  r.read({"n_routed_experts", "num_local_experts"}, c.n_routed_experts, 1, kMaxSize);
  r.read({"num_experts_per_tok"}, c.num_experts_per_tok, 1, kMaxSize);
  r.read({"moe_intermediate_size"}, c.moe_intermediate_size, 1, kMaxSize);
  r.read({"moe_shared_expert_intermediate_size"}, c.moe_shared_expert_intermediate_size, 1,
         kMaxSize);
  r.read({"moe_latent_size"}, c.moe_latent_size, 0, kMaxSize);
  r.read({"n_group"}, c.n_group, 1, kMaxSize);
  r.read({"topk_group"}, c.topk_group, 1, kMaxSize);
  r.read({"norm_topk_prob"}, c.norm_topk_prob);
  r.read({"routed_scaling_factor"}, c.routed_scaling_factor);

  c.bos_token_id = 1;
  c.pad_token_id = 0;
  c.eos_token_ids = {2};
  r.token_id("bos_token_id", c.bos_token_id);
  r.token_id("pad_token_id", c.pad_token_id);
  r.token_ids("eos_token_id", c.eos_token_ids);

  // The engine implements these activations only (SPEC §2, §4).
  if (mamba)
    if (auto act = r.string("mamba_hidden_act", "\"silu\""); act && *act != "silu")
      throw Error(where, "mamba_hidden_act", "\"silu\"", describe(*act));
  if (mlp || moe)
    if (auto act = r.string("mlp_hidden_act", "\"relu2\""); act && *act != "relu2")
      throw Error(where, "mlp_hidden_act", "\"relu2\"", describe(*act));

  check_common(c, where);
  if (mamba)
    check_mamba(c, where, {"mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups"});
  if (attention) {
    require_product_bounded(where, "num_attention_heads * head_dim", c.num_attention_heads,
                            c.head_dim);
    require_divides(where, "num_attention_heads", c.num_attention_heads, "num_key_value_heads",
                    c.num_key_value_heads);
  }
  if (moe) {
    require_divides(where, "n_routed_experts", c.n_routed_experts, "n_group", c.n_group);
    const int64_t per_group = c.n_routed_experts / c.n_group;
    // A group's score is the sum of its two best experts (SPEC §5).
    if (per_group < 2)
      throw Error(where, "n_routed_experts",
                  "at least 2 experts per group (n_group " + std::to_string(c.n_group) +
                      "; a group's score sums its 2 best experts)",
                  std::to_string(c.n_routed_experts));
    if (c.topk_group > c.n_group)
      throw Error(where, "topk_group", "at most n_group (" + std::to_string(c.n_group) + ")",
                  std::to_string(c.topk_group));
    if (c.num_experts_per_tok > c.topk_group * per_group)
      throw Error(where, "num_experts_per_tok",
                  "at most the experts of the topk_group kept groups (" +
                      std::to_string(c.topk_group * per_group) + ")",
                  std::to_string(c.num_experts_per_tok));
    if (!(c.routed_scaling_factor > 0))
      throw Error(where, "routed_scaling_factor", "a number > 0",
                  describe(c.routed_scaling_factor));
  }
  return c;
}

// --- mamba2 (transformers) -----------------------------------------------------------------

ModelConfig parse_mamba2(const json& j, const std::string& where) {
  const Reader r(j, where);
  ModelConfig c;
  c.model_type = "mamba2";
  c.vocab_size = r.required("vocab_size", 1, kMaxSize);
  c.hidden_size = r.required("hidden_size", 1, kMaxSize);
  c.layers.assign(r.required("num_hidden_layers", 1, kMaxSize), LayerKind::Mamba);
  c.mamba_num_heads = r.required("num_heads", 1, kMaxSize);
  c.mamba_head_dim = r.required("head_dim", 1, kMaxSize);
  c.ssm_state_size = r.required("state_size", 1, kMaxSize);
  // Mamba2Config's defaults where they differ from NemotronHConfig's.
  c.residual_in_fp32 = true;
  c.initializer_range = 0.1;
  c.rescale_prenorm_residual = false;
  c.chunk_size = 256;
  c.bos_token_id = 0;
  c.pad_token_id = 1;
  c.eos_token_ids = {2};

  r.read({"expand"}, c.expand, 1, kMaxSize);
  r.read({"n_groups"}, c.n_groups, 1, kMaxSize);
  r.read({"conv_kernel"}, c.conv_kernel, 1, kMaxSize);
  r.read({"chunk_size"}, c.chunk_size, 1, kMaxSize);
  r.read({"use_bias"}, c.use_bias);
  r.read({"use_conv_bias"}, c.use_conv_bias);
  r.read({"time_step_min"}, c.time_step_min);
  r.read({"time_step_max"}, c.time_step_max);
  r.read({"time_step_floor"}, c.time_step_floor);
  r.time_step_limit({"time_step_limit"}, c.time_step_limit);
  r.read({"tie_word_embeddings"}, c.tie_word_embeddings);
  r.read({"layer_norm_epsilon"}, c.layer_norm_epsilon);
  r.read({"residual_in_fp32"}, c.residual_in_fp32);
  r.read({"initializer_range"}, c.initializer_range);
  r.read({"rescale_prenorm_residual"}, c.rescale_prenorm_residual);
  r.token_id("bos_token_id", c.bos_token_id);
  r.token_id("pad_token_id", c.pad_token_id);
  r.token_ids("eos_token_id", c.eos_token_ids);
  if (auto act = r.string("hidden_act", "\"silu\""); act && *act != "silu")
    throw Error(where, "hidden_act", "\"silu\"", describe(*act));

  check_common(c, where);
  check_mamba(c, where, {"num_heads", "head_dim", "state_size", "n_groups"});
  // Mamba2Config.validate_architecture.
  if (c.expand * c.hidden_size != c.d_inner())
    throw Error(where, "num_heads * head_dim",
                "expand * hidden_size = " + std::to_string(c.expand) + " * " +
                    std::to_string(c.hidden_size) + " = " +
                    std::to_string(c.expand * c.hidden_size),
                std::to_string(c.mamba_num_heads) + " * " + std::to_string(c.mamba_head_dim) +
                    " = " + std::to_string(c.d_inner()));
  return c;
}

// --- mamba_ssm's layout (state-spaces/mamba2-*) ---------------------------------------------

void require_value(const Reader& r, const char* key, const json& wanted, const std::string& why) {
  const json* v = r.find({key});
  if (v && *v != wanted) throw Error(r.where(), r.field(key), describe(wanted) + why, describe(*v));
}

ModelConfig parse_mamba_ssm(const json& j, const std::string& where) {
  const Reader r(j, where);
  ModelConfig c;
  c.model_type = "mamba2";
  c.mamba_ssm_layout = true;
  c.hidden_size = r.required("d_model", 1, kMaxSize);
  c.layers.assign(r.required("n_layer", 1, kMaxSize), LayerKind::Mamba);
  const int64_t vocab = r.required("vocab_size", 1, kMaxSize);
  int64_t multiple = 8;  // MambaConfig's default
  r.read({"pad_vocab_size_multiple"}, multiple, 1, kMaxSize);
  // MambaLMHeadModel pads the vocabulary (and so the embedding) up to the multiple.
  c.vocab_size = vocab % multiple == 0 ? vocab : vocab + (multiple - vocab % multiple);
  if (c.vocab_size > kMaxSize)
    throw Error(where, "vocab_size", "at most " + std::to_string(kMaxSize) + " after padding",
                std::to_string(c.vocab_size));

  // What this engine cannot compute: an MLP after each mixer, attention layers, LayerNorm.
  require_value(r, "d_intermediate", 0, " (no MLP after each mixer)");
  if (const json* idx = r.find({"attn_layer_idx"}); idx && !(idx->is_array() && idx->empty()))
    throw Error(where, "attn_layer_idx", "[] (no attention layers)", describe(*idx));
  require_value(r, "rms_norm", true, " (LayerNorm is not supported)");
  c.residual_in_fp32 = true;
  r.read({"residual_in_fp32"}, c.residual_in_fp32);
  c.tie_word_embeddings = true;
  r.read({"tie_embeddings"}, c.tie_word_embeddings);
  // mamba_ssm's _init_weights defaults.
  c.initializer_range = 0.02;
  c.rescale_prenorm_residual = true;
  c.bos_token_id.reset();
  c.pad_token_id.reset();
  c.eos_token_ids.clear();

  static const json kEmpty = json::object();
  const json* ssm = r.find({"ssm_cfg"});
  if (ssm && !ssm->is_object()) throw Error(where, "ssm_cfg", "an object", describe(*ssm));
  const Reader s(ssm ? *ssm : kEmpty, where, "ssm_cfg.");
  // mamba_ssm builds Mamba1 when ssm_cfg names no layer.
  const auto layer = s.string("layer", "\"Mamba2\"");
  if (layer != "Mamba2")
    throw Error(where, "ssm_cfg.layer", "\"Mamba2\"",
                layer ? describe(*layer) : std::string("missing (mamba_ssm builds Mamba1)"));
  // Mamba2's constructor defaults (mamba_ssm/modules/mamba2.py).
  c.ssm_state_size = 128;
  c.conv_kernel = 4;
  c.expand = 2;
  c.mamba_head_dim = 64;
  c.n_groups = 1;
  c.chunk_size = 256;
  c.use_bias = false;
  c.use_conv_bias = true;
  s.read({"d_state"}, c.ssm_state_size, 1, kMaxSize);
  s.read({"d_conv"}, c.conv_kernel, 1, kMaxSize);
  s.read({"expand"}, c.expand, 1, kMaxSize);
  s.read({"headdim"}, c.mamba_head_dim, 1, kMaxSize);
  s.read({"ngroups"}, c.n_groups, 1, kMaxSize);
  s.read({"chunk_size"}, c.chunk_size, 1, kMaxSize);
  s.read({"bias"}, c.use_bias);
  s.read({"conv_bias"}, c.use_conv_bias);
  s.read({"dt_min"}, c.time_step_min);
  s.read({"dt_max"}, c.time_step_max);
  s.read({"dt_init_floor"}, c.time_step_floor);
  s.time_step_limit({"dt_limit"}, c.time_step_limit);
  require_value(s, "rmsnorm", true, " (the gated RMSNorm of SPEC §2)");
  require_value(s, "norm_before_gate", false, " (SPEC §2 gates before the norm)");
  require_value(s, "D_has_hdim", false, " (D is one value per head)");

  require_product_bounded(where, "ssm_cfg.expand * d_model", c.expand, c.hidden_size);
  const int64_t d_ssm = c.expand * c.hidden_size;
  if (const json* v = s.find({"d_ssm"});
      v && as_int(*v, where, "ssm_cfg.d_ssm", 1, kMaxSize) != d_ssm)
    throw Error(where, "ssm_cfg.d_ssm", "expand * d_model = " + std::to_string(d_ssm),
                describe(*v));
  require_divides(where, "expand * d_model", d_ssm, "ssm_cfg.headdim", c.mamba_head_dim);
  c.mamba_num_heads = d_ssm / c.mamba_head_dim;

  check_common(c, where);
  check_mamba(c, where,
              {"expand * d_model / ssm_cfg.headdim", "ssm_cfg.headdim", "ssm_cfg.d_state",
               "ssm_cfg.ngroups"});
  return c;
}

// --- text ----------------------------------------------------------------------------------

// Bare Infinity/-Infinity/NaN outside strings become sentinel strings; nesting is bounded so
// nothing downstream recurses without limit.
std::string quote_non_finite(std::string_view text, const std::string& where) {
  std::string out;
  out.reserve(text.size() + 32);
  bool in_string = false;
  int depth = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      out += ch;
      if (ch == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (ch == '"') {
        in_string = false;
      }
      continue;
    }
    if (ch == '"') {
      in_string = true;
    } else if (ch == '[' || ch == '{') {
      if (++depth > kMaxDepth)
        throw Error(where, "JSON", "nesting at most " + std::to_string(kMaxDepth) + " deep",
                    "deeper nesting at byte " + std::to_string(i));
    } else if (ch == ']' || ch == '}') {
      --depth;
    } else {
      bool replaced = false;
      for (std::string_view word : {"-Infinity", "Infinity", "NaN"}) {
        if (text.substr(i, word.size()) == word) {
          out += "\"\\u0001nh:";
          out += word;
          out += '"';
          i += word.size() - 1;
          replaced = true;
          break;
        }
      }
      if (replaced) continue;
    }
    out += ch;
  }
  return out;
}

void restore_non_finite(json& v) {
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    if (s.starts_with(kNonFinitePrefix)) v = json{{"__float__", s.substr(kNonFinitePrefix.size())}};
  } else if (v.is_structured()) {
    for (auto& child : v) restore_non_finite(child);
  }
}

}  // namespace

char layer_char(LayerKind kind) {
  switch (kind) {
    case LayerKind::Mamba:
      return 'M';
    case LayerKind::Attention:
      return '*';
    case LayerKind::Mlp:
      return '-';
    case LayerKind::Moe:
      return 'E';
  }
  return '?';
}

const char* layer_name(LayerKind kind) {
  switch (kind) {
    case LayerKind::Mamba:
      return "linear_attention";
    case LayerKind::Attention:
      return "full_attention";
    case LayerKind::Mlp:
      return "mlp";
    case LayerKind::Moe:
      return "moe";
  }
  return "?";
}

std::string layer_pattern(const std::vector<LayerKind>& layers) {
  std::string s;
  for (LayerKind k : layers) s += layer_char(k);
  return s;
}

bool ModelConfig::has(LayerKind kind) const {
  return std::find(layers.begin(), layers.end(), kind) != layers.end();
}

bool ModelConfig::mtp_has(LayerKind kind) const {
  return num_nextn_predict_layers > 0 &&
         std::find(mtp_layers.begin(), mtp_layers.end(), kind) != mtp_layers.end();
}

ModelConfig parse_config(const json& j, const std::string& where) {
  try {
    if (!j.is_object()) throw Error(where, "config", "a JSON object", describe(j));
    ModelConfig c;
    auto type = j.find("model_type");
    if (type != j.end() && !type->is_null()) {
      const std::string& t = as_string(*type, where, "model_type", "\"nemotron_h\" or \"mamba2\"");
      if (t == "nemotron_h") {
        c = parse_nemotron_h(j, where);
      } else if (t == "mamba2") {
        c = parse_mamba2(j, where);
      } else {
        throw Error(where, "model_type", "\"nemotron_h\" or \"mamba2\"", describe(*type));
      }
    } else if (j.contains("d_model") && j.contains("n_layer")) {
      c = parse_mamba_ssm(j, where);
    } else {
      throw Error(where, "model_type",
                  "\"nemotron_h\" or \"mamba2\" (or mamba_ssm's d_model and n_layer)", "missing");
    }
    c.raw = j;
    return c;
  } catch (const json::exception& e) {
    // The readers check types before every access; this is a last line of defence.
    throw Error(where, "config", "a well-formed config", e.what());
  }
}

json parse_json_text(std::string_view text, const std::string& where) {
  const std::string quoted = quote_non_finite(text, where);
  json j;
  try {
    j = json::parse(quoted);
  } catch (const json::exception& e) {
    throw Error(where, "JSON", "valid JSON", e.what());
  }
  restore_non_finite(j);
  return j;
}

ModelConfig parse_config_text(std::string_view text, const std::string& where) {
  return parse_config(parse_json_text(text, where), where);
}

ModelConfig load_config(const std::string& path_or_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path path = fs::is_directory(path_or_dir, ec) ? fs::path(path_or_dir) / "config.json"
                                                          : fs::path(path_or_dir);
  return parse_config_text(read_text_file(path.string(), "config.json"), path.string());
}


ModelConfig with_layer_pattern(const ModelConfig& c, const std::string& pattern,
                               const std::string& where) {
  if (pattern.empty()) return c;
  if (c.model_type != "nemotron_h")
    throw Error(where, "hybrid_override_pattern", "a nemotron_h model", c.model_type);
  json j = to_hf_json(c);
  j.erase("layers_block_type");
  j["hybrid_override_pattern"] = pattern;
  j["num_hidden_layers"] = pattern.size();
  return parse_config(j, where);
}

}  // namespace nh
