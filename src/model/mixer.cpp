#include "model/mixer.h"

#include "model/attention_mixer.h"
#include "model/mamba_mixer.h"
#include "model/mlp_mixer.h"
#include "model/moe_mixer.h"
#include "model/init.h"
#include "model/lora.h"
#include "ops/linear.h"
#include "ops/lora.h"

namespace nh {

LoraPair LayerParams::lora(const std::string& name) const {
  if (!adapter_.params) return {};
  const std::string a = lora_a_name(prefix_ + name), b = lora_b_name(prefix_ + name);
  if (!adapter_.params->has(a)) return {};
  return {adapter_.params->at(a), adapter_.params->at(b), adapter_.grads->at(a),
          adapter_.grads->at(b)};
}

const QuantizedTensor* LayerParams::quantized(const std::string& name) const {
  if (!adapter_.quantized) return nullptr;
  const auto it = adapter_.quantized->find(prefix_ + name);
  return it == adapter_.quantized->end() ? nullptr : &it->second;
}

Tensor dequantized(const QuantizedTensor& q, DType dtype) {
  Tensor out = Tensor::empty(q.shape, dtype, q.device());
  dequantize(q, out);
  return out;
}

Linear::Linear(const LayerParams& p, const std::string& name)
    : w(p.quantized(name + ".weight") ? Tensor() : p.param(name + ".weight")),
      b(p.optional_param(name + ".bias")),
      dw(p.optional_grad(name + ".weight")),
      db(p.optional_grad(name + ".bias")),
      qw(p.quantized(name + ".weight")),
      lora(p.lora(name)),
      runtime(p.lora_runtime()),
      lora_stream(name_hash(p.full_name(name))) {}

namespace {
LoraPath path_of(const Linear& l) {
  const LoraRuntime& rt = *l.runtime;
  return {rt.scale, rt.training ? rt.dropout : 0.0, rt.seed ^ l.lora_stream};
}
}  // namespace

Tensor Linear::weight(DType dtype) const { return qw ? dequantized(*qw, dtype) : w; }

void Linear::forward(const Tensor& x, Tensor& y) const {
  linear_forward(x, weight(x.dtype()), b, y);
  if (lora.defined()) lora_forward(x, lora.a, lora.b, path_of(*this), y);
}

void Linear::backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  linear_backward(x, weight(x.dtype()), dy, dx, dw, db);
  if (lora.defined()) lora_backward(x, lora.a, lora.b, path_of(*this), dy, dx, lora.da, lora.db);
}

// Layers without decoding state (MLP, MoE) run their forward on the tokens at hand.
void Mixer::prefill(const Tensor& u, const Batch& batch, LayerCache&, const CacheSlots&, int64_t,
                    Tensor& out) {
  forward(u, batch, out);
  release();
}

void Mixer::decode(const Tensor& u, LayerCache&, const CacheSlots&, Tensor& out) {
  forward(u, Batch{u.size(0), 1, Tensor()}, out);
  release();
}

std::unique_ptr<Mixer> make_mixer(LayerKind kind, const ModelConfig& config, const LayerParams& p) {
  switch (kind) {
    case LayerKind::Mamba: return std::make_unique<MambaMixer>(config, p);
    case LayerKind::Attention: return std::make_unique<AttentionMixer>(config, p);
    case LayerKind::Mlp: return std::make_unique<MlpMixer>(config, p, "", config.intermediate_size);
    case LayerKind::Moe: return std::make_unique<MoeMixer>(config, p);
  }
  throw Error("unknown layer kind");
}

}  // namespace nh
