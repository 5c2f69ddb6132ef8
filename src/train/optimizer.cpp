#include "train/optimizer.h"

#include <cmath>

#include "dist/data_parallel.h"
#include "ops/adamw.h"

namespace nh {

namespace {

std::vector<OptimizerRange> whole_parameters(Model& model) {
  std::vector<OptimizerRange> ranges;
  for (const auto& t : model.trainable())
    ranges.push_back({t.name, t.param, t.grad, 0, t.decay, whole_numel(model, t.name),
                      whole_offset(model, t.name), norm_kind(model, t.name)});
  return ranges;
}

}  // namespace

Optimizer::Optimizer(Model& model, OptimizerSettings settings, const ParamSet* full_precision)
    : Optimizer(whole_parameters(model), settings, full_precision,
                {nullptr, model.tensor_parallel_group(), nullptr, model.expert_parallel_group()}) {}

Optimizer::Optimizer(std::vector<OptimizerRange> ranges, OptimizerSettings settings,
                     const ParamSet* full_precision, NormGroups groups)
    : settings_(settings), groups_(groups) {
  for (auto& r : ranges) {
    const Tensor& p = r.param;
    Tensor master;
    const DType moments = p.dtype() == DType::F64 ? DType::F64 : DType::F32;
    if (p.dtype() != DType::F32 && p.dtype() != DType::F64) {
      Tensor from = p;
      if (full_precision && full_precision->has(r.name)) {
        const Tensor& full = full_precision->at(r.name);
        from = full.reshape({full.numel()}).slice0(r.begin, r.begin + p.numel()).reshape(p.shape());
      }
      master = Tensor::empty(p.shape(), DType::F32, p.device());
      master.copy_from(from);
    }
    slots_.push_back({r.name, r.begin, r.full_numel ? r.full_numel : p.numel(), r.whole_offset, p,
                      r.grad, Tensor::zeros(p.shape(), moments, p.device()),
                      Tensor::zeros(p.shape(), moments, p.device()), master, r.decay, r.norm});
  }
}

StepResult Optimizer::step(double grad_scale, double lr, int64_t step) {
  // Shards add up over their groups; whole tensors count once. Every rank makes the same
  // collectives in the same order.
  double whole = 0, tensor = 0, expert = 0;
  std::vector<Tensor> grads;
  for (const auto& s : slots_) grads.push_back(s.grad);
  const std::vector<double> squares = sums_of_squares(grads);
  for (size_t i = 0; i < slots_.size(); ++i)
    (slots_[i].norm == NormKind::Whole         ? whole
     : slots_[i].norm == NormKind::TensorShard ? tensor
                                               : expert) += squares[i];
  if (groups_.data) {
    whole = groups_.data->all_reduce(whole);
    tensor = groups_.data->all_reduce(tensor);
  }
  if (groups_.tensor) tensor = groups_.tensor->all_reduce(tensor);
  if (groups_.expert_data) expert = groups_.expert_data->all_reduce(expert);
  if (groups_.expert) expert = groups_.expert->all_reduce(expert);
  const double sum = whole + tensor + expert;
  StepResult r;
  r.grad_norm = std::sqrt(sum) * std::fabs(grad_scale);
  r.finite = std::isfinite(r.grad_norm);
  if (!r.finite) return r;
  double scale = grad_scale;
  if (settings_.clip_grad > 0 && r.grad_norm > settings_.clip_grad)
    scale *= settings_.clip_grad / (r.grad_norm + 1e-6);
  for (auto& s : slots_) {
    AdamWStep a{lr,
                settings_.beta1,
                settings_.beta2,
                settings_.eps,
                s.decay ? settings_.weight_decay : 0.0,
                step,
                scale};
    if (s.master.defined()) {
      adamw_step(s.master, s.grad, s.m, s.v, a, &s.param);
    } else {
      adamw_step(s.param, s.grad, s.m, s.v, a);
    }
  }
  return r;
}

std::vector<StatePiece> Optimizer::state() const {
  std::vector<StatePiece> out;
  for (const auto& s : slots_) {
    const int64_t at = s.whole_offset + s.begin;
    out.push_back({"exp_avg/" + s.name, at, s.m});
    out.push_back({"exp_avg_sq/" + s.name, at, s.v});
    if (s.master.defined()) out.push_back({"master/" + s.name, at, s.master});
  }
  return out;
}

void Optimizer::load_state(const StateReader& read, const std::string& where) {
  for (auto& s : slots_)
    for (auto [prefix, dst] : {std::pair{"exp_avg/", &s.m}, std::pair{"exp_avg_sq/", &s.v}})
      if (!read(prefix + s.name, s.whole_offset + s.begin, s.full_numel, *dst))
        throw Error(where, prefix + s.name, "an optimizer state tensor", "none");
}

}  // namespace nh
