#include "model/params.h"

#include <algorithm>
#include <cstring>

#include "core/cuda_memory.h"

namespace nh {

namespace {

struct SpecList {
  std::vector<ParamSpec>& out;
  std::string prefix;
  void weight(const std::string& n, Shape s, Init init = Init::Normal) {
    out.push_back({prefix + n, std::move(s), init, true, true});
  }
  void no_decay(const std::string& n, Shape s, Init init) {
    out.push_back({prefix + n, std::move(s), init, true, false});
  }
  void linear(const std::string& n, int64_t out_f, int64_t in_f, bool bias,
              Init init = Init::Normal) {
    weight(n + ".weight", {out_f, in_f}, init);
    if (bias) no_decay(n + ".bias", {out_f}, Init::Zero);
  }
};

void mamba_specs(SpecList& s, const ModelConfig& c) {
  const int64_t d = c.hidden_size, h = c.mamba_num_heads, din = c.d_inner(), cd = c.conv_dim();
  s.linear("in_proj", din + cd + h, d, c.use_bias);
  s.weight("conv1d.weight", {cd, 1, c.conv_kernel});
  if (c.use_conv_bias) s.no_decay("conv1d.bias", {cd}, Init::Zero);
  s.no_decay("dt_bias", {h}, Init::DtBias);
  s.no_decay("A_log", {h}, Init::ALogRange);
  s.no_decay("D", {h}, Init::One);
  s.no_decay("norm.weight", {din}, Init::One);
  s.linear("out_proj", d, din, c.use_bias,
           c.rescale_prenorm_residual ? Init::OutProjRescaled : Init::Normal);
}

void attention_specs(SpecList& s, const ModelConfig& c, bool bias) {
  const int64_t d = c.hidden_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim;
  s.linear("q_proj", q, d, bias);
  s.linear("k_proj", kv, d, bias);
  s.linear("v_proj", kv, d, bias);
  s.linear("o_proj", d, q, bias);
}

void mlp_specs(SpecList& s, const ModelConfig& c, const std::string& prefix, int64_t inter) {
  s.linear(prefix + "up_proj", inter, c.hidden_size, c.mlp_bias);
  s.linear(prefix + "down_proj", c.hidden_size, inter, c.mlp_bias);
}

void moe_specs(SpecList& s, const ModelConfig& c) {
  const int64_t e = c.n_routed_experts, d = c.hidden_size;
  const int64_t din = c.moe_latent_size > 0 ? c.moe_latent_size : d;
  s.weight("gate.weight", {e, d});
  s.out.push_back({s.prefix + "gate.e_score_correction_bias", {e}, Init::Zero, false, false});
  if (c.moe_latent_size > 0) {
    s.linear("fc1_latent_proj", din, d, c.mlp_bias);
    s.linear("fc2_latent_proj", d, din, c.mlp_bias);
  }
  s.weight("experts.up_proj", {e, c.moe_intermediate_size, din});
  s.weight("experts.down_proj", {e, din, c.moe_intermediate_size});
  mlp_specs(s, c, "shared_experts.", c.moe_shared_expert_intermediate_size);
}

}  // namespace

std::vector<ParamSpec> param_specs(const ModelConfig& c, bool tied_head, bool attention_biases) {
  std::vector<ParamSpec> out;
  SpecList top{out, ""};
  top.weight("embeddings.weight", {c.vocab_size, c.hidden_size});
  for (size_t l = 0; l < c.layers.size(); ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    SpecList layer{out, p};
    layer.no_decay("norm.weight", {c.hidden_size}, Init::One);
    SpecList mixer{out, p + "mixer."};
    switch (c.layers[l]) {
      case LayerKind::Mamba: mamba_specs(mixer, c); break;
      case LayerKind::Attention: attention_specs(mixer, c, attention_biases); break;
      case LayerKind::Mlp: mlp_specs(mixer, c, "", c.intermediate_size); break;
      case LayerKind::Moe: moe_specs(mixer, c); break;
    }
  }
  top.no_decay("norm_f.weight", {c.hidden_size}, Init::One);
  if (!tied_head) top.weight("lm_head.weight", {c.vocab_size, c.hidden_size});
  return out;
}

bool is_expert_weight(const std::string& name) {
  return name.ends_with(".experts.up_proj") || name.ends_with(".experts.down_proj");
}

int layer_of(const std::string& name) {
  if (!name.starts_with("layers.")) return -1;
  return std::stoi(name.substr(7, name.find('.', 7) - 7));
}

void ParamSet::add(const std::string& name, Tensor t) {
  NH_CHECK(!has(name), "duplicate parameter " + name);
  names_.push_back(name);
  index_.emplace(name, std::move(t));
}

Tensor& ParamSet::at(const std::string& name) {
  auto it = index_.find(name);
  if (it == index_.end()) throw Error("model", name, "a parameter of this name", "none");
  return it->second;
}

const Tensor& ParamSet::at(const std::string& name) const {
  return const_cast<ParamSet*>(this)->at(name);
}

ParamSet ParamSet::zeros_like(DType dtype) const {
  ParamSet out;
  for (const auto& n : names_) out.add(n, Tensor::zeros(at(n).shape(), dtype, at(n).device()));
  return out;
}

void ParamSet::remove(const std::string& name) {
  if (!index_.erase(name)) return;
  names_.erase(std::find(names_.begin(), names_.end(), name));
}

void ParamSet::fill_zero() {
  for (auto& [name, t] : index_) {
    if (t.device() == Device::CPU)
      std::memset(t.raw(), 0, t.nbytes());
    else
      cuda_memset_zero(t.raw(), t.nbytes());
  }
}

}  // namespace nh
