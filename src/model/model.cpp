#include "model/model.h"

#include <algorithm>
#include <filesystem>

#include "dist/tensor_parallel.h"
#include "io/atomic_file.h"
#include "model/init.h"
#include "model/moe_mixer.h"
#include "ops/cpu/gemm.h"
#include "ops/dispatch.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/rmsnorm.h"

namespace nh {

namespace fs = std::filesystem;

Model::Model(ModelConfig config, ModelWeights weights, LoraAdapter adapter)
    : config_(std::move(config)), weights_(std::move(weights)) {
  if (adapter.targets.empty())
    bind();
  else
    attach_adapter(std::move(adapter));
  recompute_.assign(mixers_.size(), false);
}

namespace {
// The weights QLoRA holds quantised: every linear weight and the experts. The embedding, LM
// head, norms, router, conv, A_log, D and dt_bias stay in full precision.
bool quantizable(const std::string& name) {
  return name.ends_with("_proj.weight") || is_expert_weight(name);
}

// Under an adapter, the weights that get no gradient at all: linear weights and biases, the
// experts, the embedding and the LM head. The rest are small and keep scratch gradients.
bool frozen_without_grad(const std::string& name) {
  return name.ends_with("_proj.weight") || name.ends_with("_proj.bias") || is_expert_weight(name) ||
         name == "embeddings.weight" || name == "lm_head.weight";
}
}  // namespace

void Model::bind() {
  grads_ = ParamSet();
  adapter_grads_ = ParamSet();
  mixers_.clear();
  // Gradients for trainable parameters only (the correction bias is a buffer).
  for (const auto& spec : param_specs(config_, weights_.tied_head, weights_.attention_biases))
    if (spec.trainable && !(has_adapter() && frozen_without_grad(spec.name))) {
      const Tensor& p = weights_.params.at(spec.name);
      grads_.add(spec.name, Tensor::zeros(p.shape(), p.dtype(), p.device()));
    }
  for (const auto& name : adapter_.params.names()) {
    const Tensor& p = adapter_.params.at(name);
    adapter_grads_.add(name, Tensor::zeros(p.shape(), p.dtype(), p.device()));
  }
  bind_mixers();
}

void Model::bind_mixers() {
  mixers_.clear();
  const AdapterBinding binding{&adapter_.params, &adapter_grads_, lora_runtime_.get(),
                               &weights_.quantized};
  for (size_t l = 0; l < config_.layers.size(); ++l) {
    LayerParams p(weights_.params, grads_, "layers." + std::to_string(l) + ".mixer.",
                  has_adapter() ? binding : AdapterBinding());
    mixers_.push_back(make_mixer(config_.layers[l], config_, p));
    if (ep_ && config_.layers[l] == LayerKind::Moe)
      static_cast<MoeMixer&>(*mixers_.back()).set_expert_parallel(*ep_);
  }
}

std::pair<Tensor, Tensor> Model::make_contiguous(
    const std::vector<std::pair<std::string, int64_t>>& offsets, int64_t total) {
  ParamSet& params = has_adapter() ? adapter_.params : weights_.params;
  ParamSet& grads = has_adapter() ? adapter_grads_ : grads_;
  NH_CHECK(offsets.size() == grads.names().size(), "make_contiguous: one offset per gradient");
  const Tensor& first = params.at(offsets.at(0).first);
  Tensor flat_params = Tensor::zeros({total}, first.dtype(), first.device());
  Tensor flat_grads = Tensor::zeros({total}, first.dtype(), first.device());
  for (const auto& [name, offset] : offsets) {
    Tensor& p = params.at(name);
    NH_CHECK(
        p.dtype() == first.dtype() && p.device() == first.device() && offset + p.numel() <= total,
        "make_contiguous: " + name + " does not fit the flat buffer");
    Tensor view = flat_params.slice0(offset, offset + p.numel()).reshape(p.shape());
    view.copy_from(p);
    p = view;
    grads.at(name) = flat_grads.slice0(offset, offset + p.numel()).reshape(p.shape());
  }
  bind_mixers();
  return {flat_params, flat_grads};
}

void Model::shard_tensor_parallel(Communicator& group) {
  NH_CHECK(!has_adapter() && weights_.quantized.empty() && device() == Device::CPU && !tp_,
           "shard_tensor_parallel: a whole model on the CPU, with no adapter");
  const ModelConfig local = tp_local_config(config_, group.size());
  for (const auto& spec : param_specs(config_, weights_.tied_head, weights_.attention_biases)) {
    Tensor& p = weights_.params.at(spec.name);
    p = tp_shard(p, tp_split(config_, spec.name), group.rank(), group.size());
  }
  full_config_ = config_;
  config_ = local;
  tp_ = &group;
  bind();
}

void Model::set_sequence_parallel(bool on) {
  NH_CHECK(!on || tp_, "sequence parallelism needs tensor parallelism");
  sp_ = on;
}

Tensor Model::my_rows(const Tensor& all) const {
  const int64_t rows = all.size(0) / tp_->size();
  return all.slice0(rows * tp_->rank(), rows * (tp_->rank() + 1));
}

void Model::sum_sequence_parallel_grad(const std::string& name) {
  if (!sp_ || !final_backward_ || !grads_.has(name)) return;
  tp_->all_reduce(grads_.at(name));
}

void Model::shard_experts(Communicator& group) {
  NH_CHECK(!has_adapter() && weights_.quantized.empty() && device() == Device::CPU && !ep_,
           "shard_experts: a whole model on the CPU, with no adapter");
  if (config_.n_routed_experts % group.size() != 0)
    throw Error("recipe", "expert_model_parallel_size",
                "a divisor of the model's n_routed_experts (" +
                    std::to_string(config_.n_routed_experts) + ")",
                std::to_string(group.size()));
  const int64_t local = config_.n_routed_experts / group.size();
  for (size_t l = 0; l < config_.layers.size(); ++l) {
    if (config_.layers[l] != LayerKind::Moe) continue;
    for (const char* w : {"up_proj", "down_proj"}) {
      Tensor& p = weights_.params.at("layers." + std::to_string(l) + ".mixer.experts." + w);
      p = p.slice0(local * group.rank(), local * (group.rank() + 1)).clone();
    }
  }
  ep_ = &group;
  bind();
}

void Model::save_gathered(const std::string& dir, bool write) const {
  if (!tp_ && !ep_) {
    if (write) save(dir);
    return;
  }
  const ModelConfig& config = full_config();
  ModelWeights whole = weights_;
  for (const auto& spec : param_specs(config, weights_.tied_head, weights_.attention_biases)) {
    const Tensor& local = weights_.params.at(spec.name);
    Tensor& out = whole.params.at(spec.name);
    const TpSplit split = tp_ ? tp_split(config, spec.name) : TpSplit();
    if (ep_ && is_expert_weight(spec.name)) {
      out = all_gather_rows(*ep_, local).to(Device::CPU);  // the ranks' experts in order
    } else if (split.kind != TpSplit::Whole) {
      const Tensor host = all_gather_rows(*tp_, local).to(Device::CPU);
      const int64_t rows = local.size(0);
      std::vector<Tensor> shards;
      for (int r = 0; r < tp_->size(); ++r) shards.push_back(host.slice0(rows * r, rows * (r + 1)));
      out = tp_unshard(shards, split);
    } else {
      out = local.to(Device::CPU);
    }
  }
  if (write) write_model_dir(dir, config, whole);
}

void Model::quantize_base(QuantKind kind, Device device) {
  NH_CHECK(has_adapter(), "a quantised base is frozen: attach an adapter first");
  NH_CHECK(weights_.quantized.empty(), "the base is quantised already");
  for (const auto& spec : param_specs(config_, weights_.tied_head, weights_.attention_biases)) {
    if (!quantizable(spec.name)) continue;
    // One weight at a time on `device`, so the full-precision model never has to fit there.
    weights_.quantized.emplace(spec.name, quantize(weights_.params.at(spec.name).to(device), kind));
    weights_.params.remove(spec.name);
  }
  bind();
}

int64_t Model::quantized_bytes() const {
  int64_t bytes = 0;
  for (const auto& [name, q] : weights_.quantized) bytes += q.bytes();
  return bytes;
}

int64_t Model::quantized_params() const {
  int64_t n = 0;
  for (const auto& [name, q] : weights_.quantized) n += shape_numel(q.shape);
  return n;
}

void Model::attach_adapter(LoraAdapter adapter) {
  NH_CHECK(!has_adapter(), "the model already has an adapter");
  NH_CHECK(!adapter.targets.empty(), "an adapter without targets");
  for (const auto& name : adapter.params.names()) {
    Tensor& t = adapter.params.at(name);
    t = t.to(device()).to(dtype());
  }
  *lora_runtime_ = LoraRuntime{adapter.config.scaling(), adapter.config.dropout, false, 0};
  adapter_ = std::move(adapter);
  bind();
}

void Model::zero_grads() {
  grads_.fill_zero();
  adapter_grads_.fill_zero();
}

void Model::set_lora_dropout(bool training, uint64_t seed) {
  lora_runtime_->training = training;
  lora_runtime_->seed = seed;
}

void Model::merge_adapter() {
  NH_CHECK(has_adapter(), "merge_adapter needs an adapter");
  if (!weights_.quantized.empty())
    throw Error("merge", "base", "full-precision weights (load the base unquantised)",
                "a quantised base");
  if (device() != Device::CPU)
    throw Error("merge", "device", "the CPU (the merged weights are written from there)", "cuda");
  const double scale = adapter_.config.scaling();
  for (const LoraTarget& t : adapter_.targets) {
    Tensor& w = weights_.params.at(t.experts ? t.name : t.name + ".weight");
    const Tensor a = adapter_.params.at(lora_a_name(t.name)).to(w.dtype());
    const Tensor b = adapter_.params.at(lora_b_name(t.name)).to(w.dtype());
    const int64_t r = a.size(-2), n = std::max<int64_t>(1, t.experts);
    with_float_type(w.dtype(), [&](auto zero) {
      using T = decltype(zero);
      for (int64_t e = 0; e < n; ++e)  // w[e] += s · b[e] · a[e]
        cpu::gemm<T>(false, false, t.out, t.in, r, T(scale), b.data<T>() + e * t.out * r, r,
                     a.data<T>() + e * r * t.in, t.in, T(1), w.data<T>() + e * t.out * t.in, t.in);
    });
  }
  adapter_ = LoraAdapter();
  bind();
}

std::vector<Model::TrainableParam> Model::trainable() {
  std::vector<TrainableParam> out;
  if (has_adapter()) {
    for (const auto& name : adapter_.params.names())
      out.push_back({name, adapter_.params.at(name), adapter_grads_.at(name), true});
    return out;
  }
  for (const auto& spec : param_specs(config_, weights_.tied_head, weights_.attention_biases))
    if (spec.trainable)
      out.push_back({spec.name, weights_.params.at(spec.name), grads_.at(spec.name),
                     spec.weight_decay});
  return out;
}

void Model::to(Device device, DType dtype) {
  ParamSet moved;
  for (const auto& spec : param_specs(config_, weights_.tied_head, weights_.attention_biases)) {
    if (weights_.quantized.count(spec.name)) continue;
    const Tensor& p = weights_.params.at(spec.name);
    Tensor t = Tensor::empty(p.shape(), spec.trainable ? dtype : DType::F32, device);
    t.copy_from(p);  // converts on whichever side it can
    moved.add(spec.name, std::move(t));
  }
  for (const auto& name : adapter_.params.names()) {
    Tensor& t = adapter_.params.at(name);
    t = t.to(device).to(dtype);
  }
  for (auto& [name, q] : weights_.quantized)
    for (Tensor* t : {&q.data, &q.absmax_q, &q.absmax2, &q.row_scale})
      if (t->defined()) *t = t->to(device);
  // Release the old copies before the gradients are made on the new device.
  weights_.params = ParamSet();
  grads_ = ParamSet();
  mixers_.clear();
  resid_.clear();
  normed_.clear();
  rstd_.clear();
  final_in_ = final_normed_ = final_rstd_ = ids_ = targets_ = Tensor();
  weights_.params = std::move(moved);
  bind();
}

void Model::set_recompute(const std::vector<LayerKind>& kinds) {
  for (size_t l = 0; l < mixers_.size(); ++l)
    recompute_[l] = std::find(kinds.begin(), kinds.end(), config_.layers[l]) != kinds.end();
}

std::vector<std::pair<size_t, Tensor>> Model::expert_loads() const {
  std::vector<std::pair<size_t, Tensor>> out;
  for (size_t l = 0; l < mixers_.size(); ++l)
    if (auto* moe = dynamic_cast<const MoeMixer*>(mixers_[l].get()))
      out.emplace_back(l, moe->expert_load());
  return out;
}

Tensor& Model::correction_bias(size_t layer) {
  return weights_.params.at("layers." + std::to_string(layer) + ".mixer.gate.e_score_correction_bias");
}

Model Model::load(const std::string& dir, DType dtype) {
  ModelConfig config = load_config(dir);
  WeightSet files(dir);
  Model m(config, load_model_weights(config, files, dir, dtype));
  m.source_dir_ = dir;
  return m;
}

Model Model::init(const ModelConfig& config, uint64_t seed, DType save_dtype) {
  ModelWeights w;
  w.tied_head = config.tie_word_embeddings;
  const std::vector<ParamSpec> specs = param_specs(config, w.tied_head, false);
  // Each parameter has its own random stream (seeded by its name), so they fill in parallel.
  std::vector<Tensor> values(specs.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < specs.size(); ++i) values[i] = init_parameter(config, specs[i], seed);
  for (size_t i = 0; i < specs.size(); ++i) {
    const ParamSpec& spec = specs[i];
    w.params.add(spec.name, std::move(values[i]));
    w.file_dtype[spec.name] = spec.name.ends_with("e_score_correction_bias") ? DType::F32 : save_dtype;
  }
  return Model(config, std::move(w));
}

Model Model::init_quantized(const ModelConfig& config, uint64_t seed, const LoraConfig& lora,
                            QuantKind kind, Device device) {
  ModelWeights w;
  w.tied_head = config.tie_word_embeddings;
  for (const ParamSpec& spec : param_specs(config, w.tied_head, false)) {
    Tensor value = init_parameter_parallel(config, spec, seed);
    if (quantizable(spec.name))
      w.quantized.emplace(spec.name, quantize(value.to(device), kind));
    else
      w.params.add(spec.name, std::move(value));
    w.file_dtype[spec.name] = DType::F32;
  }
  Model m(config, std::move(w), new_lora_adapter(config, lora, seed, "init_quantized"));
  return m;
}

void Model::save(const std::string& dir) const {
  if (!weights_.quantized.empty())
    throw Error(dir, "weights", "full-precision weights (nemotronh merge folds an adapter into "
                "the unquantised base)", "a quantised base");
  write_model_dir(dir, config_, weights_);
}

void Model::write_model_dir(const std::string& dir, const ModelConfig& config,
                            const ModelWeights& weights) const {
  fs::create_directories(dir);
  write_weights(dir, hf_tensors(config, weights));
  write_file_atomic((fs::path(dir) / "config.json").string(), to_hf_json(config).dump(2) + "\n");
  // The tokenizer and generation settings travel with the weights.
  if (!source_dir_.empty() && fs::path(source_dir_) != fs::path(dir))
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "generation_config.json"}) {
      const fs::path src = fs::path(source_dir_) / f;
      if (fs::exists(src)) fs::copy_file(src, fs::path(dir) / f, fs::copy_options::overwrite_existing);
    }
}

Tensor Model::head_grad() {
  const std::string head = weights_.tied_head ? "embeddings.weight" : "lm_head.weight";
  return grads_.has(head) ? grads_.at(head) : Tensor();
}

const Tensor& Model::head_weight() const {
  return weights_.params.at(weights_.tied_head ? "embeddings.weight" : "lm_head.weight");
}

LossSum Model::forward(const Tensor& ids, const Tensor& targets, const Tensor& seq_idx,
                       Tensor& logits) {
  if (ids.dtype() != DType::I64 || ids.ndim() != 2)
    throw Error("input_ids", "shape", "I64 [B, S]", std::string(dtype_name(ids.dtype())) + " " +
                                                         shape_str(ids.shape()));
  const Tensor& emb = weights_.params.at("embeddings.weight");
  const DType dt = emb.dtype();
  const Device dev = emb.device();
  const int64_t d = config_.hidden_size;
  batch_ = Batch{ids.size(0), ids.size(1), seq_idx.defined() ? seq_idx.to(dev) : seq_idx};
  ids_ = ids.to(dev);
  targets_ = targets.defined() ? targets.to(dev) : targets;
  const int64_t t = batch_.tokens();
  if (sp_ && t % tp_->size() != 0)
    throw Error("recipe", "sequence_parallel",
                "a batch whose tokens divide by tensor_model_parallel_size " +
                    std::to_string(tp_->size()),
                std::to_string(t) + " tokens");
  if (sp_ && logits.defined())
    throw Error("model", "logits", "none under sequence parallelism (the loss only)", "asked for");
  // Under sequence parallelism the residual stream holds this rank's tokens only.
  const int64_t mine = sp_ ? t / tp_->size() : t;

  Tensor h = Tensor::empty({mine, d}, dt, dev);
  embedding_forward(sp_ ? my_rows(ids_.reshape({t})) : ids_, emb, h);
  const size_t n = mixers_.size();
  resid_.assign(n, Tensor());
  normed_.assign(n, Tensor());
  rstd_.assign(n, Tensor());
  for (size_t l = 0; l < n; ++l) {
    resid_[l] = h.clone();
    Tensor normed = Tensor::empty({mine, d}, dt, dev);
    rstd_[l] = Tensor::empty({mine}, stats_dtype(dt), dev);
    rmsnorm_forward(h, weights_.params.at("layers." + std::to_string(l) + ".norm.weight"),
                    config_.layer_norm_epsilon, normed, rstd_[l]);
    normed_[l] = sp_ ? all_gather_rows(*tp_, normed) : normed;  // the layer sees every token
    Tensor out = Tensor::empty({t, d}, dt, dev);
    mixers_[l]->forward(normed_[l], batch_, out);
    const bool split = tp_ && config_.layers[l] != LayerKind::Moe;
    if (split && sp_) {
      out = reduce_scatter_rows(*tp_, out);  // this rank's tokens of the partial sums
    } else if (split) {
      tp_->all_reduce(out);  // partial sums
    } else if (sp_) {
      out = my_rows(out);
    }
    if (recompute_[l]) mixers_[l]->release();
    add_inplace(h, out);
  }
  final_in_ = h;
  final_normed_ = Tensor::empty({mine, d}, dt, dev);
  final_rstd_ = Tensor::empty({mine}, stats_dtype(dt), dev);
  rmsnorm_forward(h, weights_.params.at("norm_f.weight"), config_.layer_norm_epsilon,
                  final_normed_, final_rstd_);
  Tensor labels = targets_.defined() ? targets_.reshape({t}) : Tensor();
  if (sp_ && labels.defined()) labels = my_rows(labels);
  const std::optional<double> head_scale = std::exchange(head_grad_scale_, std::nullopt);
  dfinal_ = Tensor();
  LossSum loss;
  if (head_scale && labels.defined() && !logits.defined()) {
    dfinal_ = Tensor::empty({mine, d}, dt, dev);
    dfinal_scale_ = *head_scale;
    Tensor dhead = head_grad();
    loss = lm_head_loss_forward_backward(final_normed_, head_weight(), labels, *head_scale, dfinal_,
                                         dhead);
  } else {
    loss = head_logits(final_normed_, labels, logits);
  }
  if (sp_) {  // each rank scored its own tokens
    loss.sum = tp_->all_reduce(loss.sum);
    loss.count = int64_t(tp_->all_reduce(double(loss.count)));
  }
  return loss;
}

LossSum Model::head_logits(const Tensor& normed, const Tensor& labels, Tensor& logits) const {
  const Device dev = normed.device();
  Tensor l = labels;
  if (!l.defined()) {
    l = Tensor::empty({normed.size(0)}, DType::I64, dev);
    l.fill(-100);
  }
  if (!logits.defined() || (logits.device() == dev && logits.dtype() == normed.dtype()))
    return lm_head_loss_forward(normed, head_weight(), l, logits);
  Tensor here = Tensor::empty(logits.shape(), normed.dtype(), dev);
  const LossSum loss = lm_head_loss_forward(normed, head_weight(), l, here);
  logits.copy_from(here);
  return loss;
}

const Tensor& Model::norm_weight(size_t l) const {
  return weights_.params.at(l < mixers_.size() ? "layers." + std::to_string(l) + ".norm.weight"
                                               : "norm_f.weight");
}

void Model::norm(size_t l, const Tensor& h, Tensor& normed) const {
  Tensor rstd = Tensor::empty({h.size(0)}, stats_dtype(h.dtype()), h.device());
  rmsnorm_forward(h, norm_weight(l), config_.layer_norm_epsilon, normed, rstd);
}

void Model::backward(double grad_scale) {
  NH_CHECK(targets_.defined() && final_in_.defined(), "backward needs a forward with targets");
  const Tensor& emb = weights_.params.at("embeddings.weight");
  const DType dt = emb.dtype();
  const Device dev = emb.device();
  const int64_t t = batch_.tokens(), d = config_.hidden_size;
  const int64_t mine = sp_ ? t / tp_->size() : t;  // the residual stream's tokens here

  Tensor dfinal = std::exchange(dfinal_, Tensor());
  if (dfinal.defined()) {  // the forward computed the head's gradients
    NH_CHECK(dfinal_scale_ == grad_scale, "backward's grad_scale differs from the forward's");
  } else {
    dfinal = Tensor::empty({mine, d}, dt, dev);
    const Tensor labels = sp_ ? my_rows(targets_.reshape({t})) : targets_.reshape({t});
    Tensor dhead = head_grad();
    lm_head_loss_backward(final_normed_, head_weight(), labels, grad_scale, dfinal, dhead);
  }
  Tensor dh = Tensor::empty({mine, d}, dt, dev);
  Tensor dnorm_f = grads_.at("norm_f.weight");
  rmsnorm_backward(final_in_, weights_.params.at("norm_f.weight"), final_rstd_, dfinal, dh,
                   dnorm_f);
  sum_sequence_parallel_grad("norm_f.weight");
  if (!weights_.tied_head) sum_sequence_parallel_grad("lm_head.weight");
  if (grads_ready_) grads_ready_(int(mixers_.size()));

  Tensor dnormed = Tensor::empty({t, d}, dt, dev), dx = Tensor::empty({mine, d}, dt, dev);
  for (size_t l = mixers_.size(); l-- > 0;) {
    const std::string norm = "layers." + std::to_string(l) + ".norm.weight";
    if (recompute_[l]) {
      Tensor again = Tensor::empty({t, d}, dt, dev);
      mixers_[l]->forward(normed_[l], batch_, again);
    }
    mixers_[l]->backward(sp_ ? all_gather_rows(*tp_, dh) : dh, dnormed);
    const bool split = tp_ && config_.layers[l] != LayerKind::Moe;
    Tensor dnormed_mine = dnormed;
    if (split && sp_) {
      dnormed_mine = reduce_scatter_rows(*tp_, dnormed);
    } else if (split) {
      tp_->all_reduce(dnormed);
    } else if (sp_) {
      dnormed_mine = my_rows(dnormed);
    }
    Tensor dnorm_w = grads_.at(norm);
    rmsnorm_backward(resid_[l], weights_.params.at(norm), rstd_[l], dnormed_mine, dx, dnorm_w);
    sum_sequence_parallel_grad(norm);
    add_inplace(dh, dx);
    resid_[l] = normed_[l] = rstd_[l] = Tensor();
    if (grads_ready_) grads_ready_(int(l));
  }
  if (grads_.has("embeddings.weight")) {
    Tensor demb = grads_.at("embeddings.weight");
    embedding_backward(sp_ ? my_rows(ids_.reshape({t})) : ids_, dh, demb);
    sum_sequence_parallel_grad("embeddings.weight");
  }
  if (grads_ready_) grads_ready_(-1);
  final_in_ = final_normed_ = final_rstd_ = Tensor();
}

Tensor shift_labels(const Tensor& labels) {
  if (labels.dtype() != DType::I64 || labels.ndim() != 2)
    throw Error("labels", "shape", "I64 [B, S]",
                std::string(dtype_name(labels.dtype())) + " " + shape_str(labels.shape()));
  const int64_t b = labels.size(0), s = labels.size(1);
  Tensor out = Tensor::empty({b, s}, DType::I64);
  const int64_t* in = labels.data<int64_t>();
  int64_t* o = out.data<int64_t>();
  for (int64_t r = 0; r < b; ++r)
    for (int64_t i = 0; i < s; ++i) o[r * s + i] = i + 1 < s ? in[r * s + i + 1] : -100;
  return out;
}

}  // namespace nh
