// nemotronh verify: checks that this engine computes what transformers computes on a
// checkpoint, against a reference file made by tools/make_reference.py (or any file with
// input_ids, labels, logits, loss and grad/<parameter name> tensors).
#include <chrono>
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <map>

#include "cli/commands.h"
#include "core/device_select.h"
#include "core/cuda_memory.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/peft_adapter.h"

namespace nh::cli {

namespace {

struct Options {
  std::string model, adapter, reference, device = "cpu", dtype;
  double rtol = 0, grad_rtol = 0;  // 0: the default of the compute dtype
};

// Default tolerances of ‖a−b‖/‖b‖ against fp32 references. fp32 compute agrees to rounding
// noise. bf16 compute (8-bit mantissa) drifts through the layers, gradients of per-head scalars
// (dt_bias, A_log, D) most, being sums of many cancelling terms: transformers itself in bf16
// differs from its fp32 reference by up to 5.5 % (dense_hybrid dt_bias) and 7.2 % (moe_hybrid
// A_log) on these cases, and its logits by up to 1.1 % (10.7 % where a routing decision flips).
constexpr double kFp32Rtol = 1e-4, kFp32GradRtol = 1e-3;
constexpr double kBf16Rtol = 3e-2, kBf16GradRtol = 1e-1;
// A token whose best experts nearly tie may route differently in bf16 than in fp32, moving its
// whole contribution between experts; the gradients of that MoE layer and of every layer below
// it are then compared at this tolerance (verify prints the moves).
constexpr double kRoutingMovedGradRtol = 0.25;

// The layer a canonical parameter name belongs to: N for layers.N.*, -1 for the embedding (below
// every layer), a large number for the final norm and the LM head (above every layer).
int64_t layer_of(const std::string& canonical) {
  if (canonical.starts_with("embeddings.")) return -1;
  if (!canonical.starts_with("layers.")) return INT64_MAX;
  return std::stoll(canonical.substr(7));
}

// The model of --model, with the adapter of --adapter attached when given.
Model load_model(const Options& o) {
  Model m = Model::load(o.model);
  if (!o.adapter.empty()) m.attach_adapter(load_peft_adapter(o.adapter, m.config()));
  return m;
}

// The deepest MoE layer whose routing in `model`'s last forward differs from the fp32 CPU
// model's on the same tokens (-1 when none); prints each layer's moved (token, expert) pairs.
int64_t deepest_routing_move(const Model& model, const Options& o, const Tensor& ids,
                             const Tensor& targets) {
  const auto loads = model.expert_loads();
  if (loads.empty()) return -1;
  Model fp32 = load_model(o);
  Tensor none;
  fp32.forward(ids, targets, none, none);
  const auto want = fp32.expert_loads();
  int64_t deepest = -1;
  for (size_t i = 0; i < loads.size(); ++i) {
    const Tensor a = loads[i].second.to(Device::CPU), b = want[i].second;
    int64_t diff = 0;
    for (int64_t e = 0; e < a.numel(); ++e)
      diff += std::abs(a.data<int64_t>()[e] - b.data<int64_t>()[e]);
    if (diff == 0) continue;
    std::printf("routing differs from fp32 in layer %zu: %lld routed pairs moved\n",
                loads[i].first, (long long)(diff / 2));
    deepest = std::max(deepest, int64_t(loads[i].first));
  }
  return deepest;
}

struct Diff {
  double max_abs = 0, rel = 0;
};

Diff compare(const Tensor& on_device, const Tensor& want) {
  const Tensor got = on_device.to(Device::CPU);
  double num = 0, den = 0;
  Diff d;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double a = read_float(got, i), b = read_float(want, i);
    d.max_abs = std::max(d.max_abs, std::fabs(a - b));
    num += (a - b) * (a - b);
    den += b * b;
  }
  d.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  if (std::isnan(num)) d.rel = d.max_abs = NAN;
  return d;
}

// The engine's gradient for a reference name such as `model.layers.3.mixer.in_proj.weight`
// or the per-expert `backbone.layers.1.mixer.experts.4.up_proj.weight`.
Tensor find_grad(Model& m, const std::string& hf_name, const std::string& where) {
  const std::string c = canonical_name(hf_name);
  if (m.grads().has(c)) return m.grads().at(c);
  if (c == "lm_head.weight" && m.tied_head()) return m.grads().at("embeddings.weight");
  const auto pos = c.find(".experts.");
  if (pos != std::string::npos && c.ends_with(".weight")) {
    const std::string rest = c.substr(pos + 9);  // "<j>.up_proj.weight"
    const auto dot = rest.find('.');
    const std::string fused = c.substr(0, pos + 9) + rest.substr(dot + 1, rest.size() - dot - 8);
    if (dot != std::string::npos && m.grads().has(fused)) {
      const Tensor& g = m.grads().at(fused);
      const int64_t j = std::stoll(rest.substr(0, dot));
      if (j >= 0 && j < g.size(0)) return g.slice0(j, j + 1).reshape({g.size(1), g.size(2)});
    }
  }
  throw Error(where, "grad/" + hf_name, "the name of a parameter of the model", "no such parameter");
}

int run(Options o) {
  const Device device = select_device(o.device, "--device");
  const DType dtype = select_compute_dtype(o.dtype, device, "--dtype");
  const bool bf16 = dtype == DType::BF16;
  if (o.rtol <= 0) o.rtol = bf16 ? kBf16Rtol : kFp32Rtol;
  if (o.grad_rtol <= 0) o.grad_rtol = bf16 ? kBf16GradRtol : kFp32GradRtol;
  Model model = load_model(o);
  if (device != Device::CPU) model.to(device, dtype);
  SafetensorsFile ref(o.reference);
  for (const char* name : {"input_ids", "labels", "logits", "loss"})
    if (!ref.has(name)) throw Error(o.reference, name, "a tensor of this name", "none");
  const Tensor ids = ref.get("input_ids").to(DType::I64);
  const Tensor labels = ref.get("labels").to(DType::I64);
  if (labels.shape() != ids.shape())
    throw Error(o.reference, "labels", "shape " + shape_str(ids.shape()), shape_str(labels.shape()));
  const int64_t t = ids.numel(), v = model.config().vocab_size;
  const Tensor want_logits = ref.get("logits");
  if (want_logits.numel() != t * v)
    throw Error(o.reference, "logits", "shape [B, S, " + std::to_string(v) + "]",
                shape_str(want_logits.shape()));

  Tensor logits = Tensor::empty({t, v}, DType::F32), none;
  const auto start = std::chrono::steady_clock::now();
  const Tensor targets = shift_labels(labels);
  const LossSum loss = model.forward(ids, targets, none, logits);
  model.backward(loss.count ? 1.0 / double(loss.count) : 0.0);
  if (device == Device::CUDA) cuda_synchronize();
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  const int64_t moved_below = bf16 ? deepest_routing_move(model, o, ids, targets) : -1;
  const double mean_loss = loss.count ? loss.sum / double(loss.count) : 0.0;

  int failed = 0, checked = 0;
  auto report = [&](const std::string& name, const Diff& d, double tol) {
    const bool ok = d.rel <= tol;
    failed += !ok;
    ++checked;
    std::printf("%-60s max_abs %.3e  rel %.3e  %s\n", name.c_str(), d.max_abs, d.rel,
                ok ? "ok" : "FAIL");
  };
  report("logits", compare(logits, want_logits), o.rtol);
  report("loss", compare(Tensor::from(std::vector<double>{mean_loss}, {1}), ref.get("loss")),
         o.rtol);
  // Under an adapter the reference holds the adapter's gradients, named and laid out as PEFT's.
  std::map<std::string, Tensor> adapter_grads;
  if (model.has_adapter())
    for (auto& [name, t] : to_peft_tensors(model.config(), model.adapter(), model.adapter_grads()))
      adapter_grads[name] = t;
  for (const auto& name : ref.names()) {
    if (!name.starts_with("grad/")) continue;
    const Tensor want = ref.get(name);
    if (model.has_adapter() && !adapter_grads.count(name.substr(5)))
      throw Error(o.reference, name, "the name of a tensor of the adapter", "no such tensor");
    const Tensor got = model.has_adapter() ? adapter_grads.at(name.substr(5))
                                           : find_grad(model, name.substr(5), o.reference);
    if (got.numel() != want.numel())
      throw Error(o.reference, name, "shape " + shape_str(got.shape()), shape_str(want.shape()));
    std::string param = name.substr(5);
    if (param.starts_with("base_model.model.")) param = param.substr(17);  // PEFT's prefix
    const bool moved = layer_of(canonical_name(param)) <= moved_below;
    report(name, compare(got, want), moved ? std::max(o.grad_rtol, kRoutingMovedGradRtol) : o.grad_rtol);
  }
  std::printf("%d of %d tensors within tolerance (rtol %.1e, gradients %.1e); forward+backward "
              "of %lld tokens in %s on %s took %.1f ms\n",
              checked - failed, checked, o.rtol, o.grad_rtol, (long long)t, bf16 ? "bf16" : "fp32",
              device_name(device), ms);
  return failed ? 1 : 0;
}

}  // namespace

void add_verify(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "verify", "Check forward and backward against reference tensors from transformers");
  cmd->add_option("--model", o->model, "HF model directory")->required();
  cmd->add_option("--adapter", o->adapter,
                  "PEFT LoRA adapter directory: the reference then holds its gradients");
  cmd->add_option("--reference", o->reference, "safetensors file with input_ids, labels, logits, "
                                               "loss and grad/<name> tensors")
      ->required();
  cmd->add_option("--device", o->device, "cpu, cuda or auto")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "compute dtype: fp32, or bf16 on cuda (the default there)");
  cmd->add_option("--rtol", o->rtol,
                  "tolerance of ‖a−b‖/‖b‖ for logits and loss (default 1e-4 fp32, 3e-2 bf16)");
  cmd->add_option("--grad-rtol", o->grad_rtol,
                  "tolerance of ‖a−b‖/‖b‖ for gradients (default 1e-3 fp32, 1e-1 bf16)");
  cmd->callback([o] { set_exit_code(run(*o)); });
}

}  // namespace nh::cli
