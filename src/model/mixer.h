// The interface every layer kind implements (SPEC §1: one mixer per layer).
// A mixer keeps the activations its backward needs from the last forward, so
// one micro-batch at a time flows forward and then backward (the llm.c way).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "model/inference_state.h"
#include "model/params.h"
#include "ops/quantize.h"

namespace nh {

// The layout of a micro-batch of T = B·S tokens.
struct Batch {
  int64_t batch = 0;   // B rows
  int64_t seq = 0;     // S tokens per row
  Tensor seq_idx;      // I32 [B, S] document index per token, or undefined (one per row)
  int64_t tokens() const { return batch * seq; }
};

// The dtype of per-row statistics saved for the backward (1/rms of the norms): fp32 when the
// activations are bf16 or fp16, else the activations' own.
inline DType stats_dtype(DType activations) {
  return activations == DType::BF16 || activations == DType::F16 ? DType::F32 : activations;
}

class Mixer {
 public:
  virtual ~Mixer() = default;
  // u [T, D] (the normalised residual stream) -> out [T, D].
  virtual void forward(const Tensor& u, const Batch& batch, Tensor& out) = 0;
  // dout [T, D] -> du [T, D] overwritten; parameter gradients accumulated into the grads set.
  virtual void backward(const Tensor& dout, Tensor& du) = 0;
  // Drops what forward saved (activation recomputation runs forward again before backward).
  virtual void release() = 0;

  // Inference. prefill: forward over one sequence's prompt (batch.batch == 1) that also leaves
  // the layer's decoding state in row `row` of `cache` (`slots` places the prompt's tokens);
  // nothing is kept for a backward.
  virtual void prefill(const Tensor& u, const Batch& batch, LayerCache& cache,
                       const CacheSlots& slots, int64_t row, Tensor& out);
  // decode: one new token per batch entry, u [B, D] -> out [B, D], reading and updating the
  // rows of `cache` that `slots` names.
  virtual void decode(const Tensor& u, LayerCache& cache, const CacheSlots& slots, Tensor& out);
  // Whether decode enqueues GPU work only (no host synchronisation), so that a whole decode
  // step can be captured in a CUDA graph and replayed.
  virtual bool decode_capturable() const { return true; }
};

// The state of an attached LoRA adapter that its layers share (model/lora.h).
struct LoraRuntime {
  double scale = 1, dropout = 0;
  bool training = false;  // dropout applies only while training
  uint64_t seed = 0;      // the current micro-batch's dropout stream (Model::set_lora_dropout)
};

// An adapter's tensors and gradients while one is attached to the model.
struct AdapterBinding {
  ParamSet* params = nullptr;
  ParamSet* grads = nullptr;
  const LoraRuntime* runtime = nullptr;
  const std::map<std::string, QuantizedTensor>* quantized = nullptr;  // the frozen base's
};

// A LoRA pair on one weight with its gradients; all undefined when the weight has none.
struct LoraPair {
  Tensor a, b, da, db;
  bool defined() const { return a.defined(); }
};

// Looks up a layer's parameters and gradients by their name under `prefix`
// (`layers.3.mixer.`). Optional parameters (biases) and the gradients of a frozen base come back
// undefined.
class LayerParams {
 public:
  LayerParams(ParamSet& params, ParamSet& grads, std::string prefix,
              AdapterBinding adapter = AdapterBinding())
      : params_(params), grads_(grads), prefix_(std::move(prefix)), adapter_(adapter) {}
  Tensor param(const std::string& name) const { return params_.at(prefix_ + name); }
  Tensor grad(const std::string& name) const { return grads_.at(prefix_ + name); }
  Tensor optional_param(const std::string& name) const {
    return params_.has(prefix_ + name) ? params_.at(prefix_ + name) : Tensor();
  }
  Tensor optional_grad(const std::string& name) const {
    return grads_.has(prefix_ + name) ? grads_.at(prefix_ + name) : Tensor();
  }
  // The adapter's pair on weight `name` (`q_proj`, `experts.up_proj`).
  LoraPair lora(const std::string& name) const;
  // Weight `name` when the base holds it quantised, else null.
  const QuantizedTensor* quantized(const std::string& name) const;
  const LoraRuntime* lora_runtime() const { return adapter_.runtime; }
  // The full name of `name` in this layer (seeds a module's dropout stream).
  std::string full_name(const std::string& name) const { return prefix_ + name; }

 private:
  ParamSet& params_;
  ParamSet& grads_;
  std::string prefix_;
  AdapterBinding adapter_;
};

// A linear layer's weight (or its quantised form, de-quantised for each product), optional
// bias, optional LoRA pair and their gradients (dw and db are undefined when the base is frozen).
struct Linear {
  Tensor w, b, dw, db;
  const QuantizedTensor* qw = nullptr;
  LoraPair lora;
  const LoraRuntime* runtime = nullptr;
  uint64_t lora_stream = 0;  // this module's dropout stream, mixed with the runtime's seed
  Linear() = default;
  Linear(const LayerParams& p, const std::string& name);
  int64_t out_features() const { return qw ? qw->shape[0] : w.size(0); }
  // w, or qw de-quantised to `dtype` on its device.
  Tensor weight(DType dtype) const;
  void forward(const Tensor& x, Tensor& y) const;
  void backward(const Tensor& x, const Tensor& dy, Tensor& dx);
};

// q de-quantised into a new tensor of `dtype` on its device.
Tensor dequantized(const QuantizedTensor& q, DType dtype);

std::unique_ptr<Mixer> make_mixer(LayerKind kind, const ModelConfig& config, const LayerParams& p);

}  // namespace nh
