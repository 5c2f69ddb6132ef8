#include "model/mlp_mixer.h"

#include "ops/activations.h"

namespace nh {

MlpMixer::MlpMixer(const ModelConfig&, const LayerParams& p, const std::string& name,
                   int64_t intermediate)
    : up_(p, name + "up_proj"), down_(p, name + "down_proj") {
  NH_CHECK(up_.out_features() == intermediate, "MLP intermediate size");
}

void MlpMixer::forward(const Tensor& u, const Batch&, Tensor& out) {
  const int64_t t = u.size(0);
  u_ = u;
  pre_ = Tensor::empty({t, up_.out_features()}, u.dtype(), u.device());
  act_ = Tensor::empty(pre_.shape(), u.dtype(), u.device());
  up_.forward(u, pre_);
  relu2_forward(pre_, act_);
  down_.forward(act_, out);
}

void MlpMixer::backward(const Tensor& dout, Tensor& du) {
  Tensor dact = Tensor::empty(act_.shape(), dout.dtype(), dout.device());
  down_.backward(act_, dout, dact);
  Tensor dpre = Tensor::empty(pre_.shape(), dout.dtype(), dout.device());
  relu2_backward(pre_, dact, dpre);
  up_.backward(u_, dpre, du);
  release();
}

void MlpMixer::release() { u_ = pre_ = act_ = Tensor(); }

}  // namespace nh
