#include "model/mixer.h"

#include "model/attention_mixer.h"
#include "model/mamba_mixer.h"
#include "model/mlp_mixer.h"
#include "model/moe_mixer.h"
#include "ops/linear.h"

namespace nh {

void Linear::forward(const Tensor& x, Tensor& y) const { linear_forward(x, w, b, y); }

void Linear::backward(const Tensor& x, const Tensor& dy, Tensor& dx) {
  linear_backward(x, w, dy, dx, dw, db);
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
