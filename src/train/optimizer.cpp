#include "train/optimizer.h"

#include <cmath>
#include <map>

#include "ops/adamw.h"

namespace nh {

Optimizer::Optimizer(Model& model, OptimizerSettings settings, const ParamSet* full_precision)
    : settings_(settings) {
  for (const auto& t : model.trainable()) {
    const Tensor& p = t.param;
    Tensor master;
    if (p.dtype() != DType::F32 && p.dtype() != DType::F64) {
      const Tensor& from =
          full_precision && full_precision->has(t.name) ? full_precision->at(t.name) : p;
      master = Tensor::empty(p.shape(), DType::F32, p.device());
      master.copy_from(from);
    }
    slots_.push_back({t.name, p, t.grad, Tensor::zeros(p.shape(), DType::F32, p.device()),
                      Tensor::zeros(p.shape(), DType::F32, p.device()), master, t.decay});
  }
}

StepResult Optimizer::step(double grad_scale, double lr, int64_t step) {
  double sum = 0;
  for (const auto& s : slots_) sum += sum_of_squares(s.grad);
  StepResult r;
  r.grad_norm = std::sqrt(sum) * std::fabs(grad_scale);
  r.finite = std::isfinite(r.grad_norm);
  if (!r.finite) return r;
  double scale = grad_scale;
  if (settings_.clip_grad > 0 && r.grad_norm > settings_.clip_grad)
    scale *= settings_.clip_grad / (r.grad_norm + 1e-6);
  for (auto& s : slots_) {
    AdamWStep a{lr, settings_.beta1, settings_.beta2, settings_.eps,
                s.decay ? settings_.weight_decay : 0.0, step, scale};
    if (s.master.defined()) {
      adamw_step(s.master, s.grad, s.m, s.v, a);
      s.param.copy_from(s.master);
    } else {
      adamw_step(s.param, s.grad, s.m, s.v, a);
    }
  }
  return r;
}

std::vector<std::pair<std::string, Tensor>> Optimizer::state() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& s : slots_) {
    out.emplace_back("exp_avg/" + s.name, s.m);
    out.emplace_back("exp_avg_sq/" + s.name, s.v);
    if (s.master.defined()) out.emplace_back("master/" + s.name, s.master);
  }
  return out;
}

void Optimizer::load_state(const std::vector<std::pair<std::string, Tensor>>& tensors,
                           const std::string& where) {
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [n, t] : tensors) by_name[n] = &t;
  for (auto& s : slots_)
    for (auto [prefix, dst] : {std::pair{"exp_avg/", &s.m}, std::pair{"exp_avg_sq/", &s.v}}) {
      const std::string name = prefix + s.name;
      auto it = by_name.find(name);
      if (it == by_name.end()) throw Error(where, name, "an optimizer state tensor", "none");
      if (it->second->shape() != dst->shape())
        throw Error(where, name, "shape " + shape_str(dst->shape()), shape_str(it->second->shape()));
      dst->copy_from(*it->second);
    }
}

}  // namespace nh
