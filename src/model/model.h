// The Nemotron-H / Mamba-2 language model (SPEC §1): embedding, a stack of pre-norm
// residual layers (one mixer each), final RMSNorm, LM head and the causal-LM loss.
// Forward keeps the activations one backward needs; backward accumulates gradients.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "model/config.h"
#include "model/lora.h"
#include "model/mixer.h"
#include "model/weight_names.h"
#include "ops/lm_head_loss.h"

namespace nh {

class Model {
 public:
  // Loads config.json and the safetensors weights of an HF directory.
  static Model load(const std::string& dir, DType dtype = DType::F32);
  // A freshly initialised model (SPEC §8); `save_dtype` is the dtype written on save.
  static Model init(const ModelConfig& config, uint64_t seed, DType save_dtype = DType::F32);
  // QLoRA at sizes whose full-precision weights would not fit in host memory: a freshly
  // initialised model (init_parameter_parallel's values) whose linear and expert weights are
  // quantised on `device` as they are made, a few at a time, with a new adapter of `lora`
  // attached. The rest stays on the CPU in fp32 (move it with to()).
  static Model init_quantized(const ModelConfig& config, uint64_t seed, const LoraConfig& lora,
                              QuantKind kind, Device device);
  // Writes an HF directory (config.json + weights) that transformers loads; files are
  // written to temporary names and renamed. An attached adapter is not written (see
  // save_peft_adapter, or merge_adapter first); a quantised base is an Error.
  void save(const std::string& dir) const;
  // Under tensor or expert parallelism every rank of the groups calls it: the whole weights are
  // gathered from the ranks' shards and written when `write`. Otherwise save(dir) when `write`.
  void save_gathered(const std::string& dir, bool write) const;

  // Moves the parameters to `device` in `dtype` (buffers such as the router's correction bias
  // stay F32); gradients are recreated there as zeros and saved activations are dropped.
  void to(Device device, DType dtype);
  Device device() const { return params().at("embeddings.weight").device(); }
  DType dtype() const { return params().at("embeddings.weight").dtype(); }

  // The config this process computes with: under tensor parallelism, its share of the heads,
  // groups and MLP width (dist/tensor_parallel.h); full_config() is the whole model's.
  const ModelConfig& config() const { return config_; }
  const ModelConfig& full_config() const { return tp_ ? full_config_ : config_; }
  ParamSet& params() { return weights_.params; }
  const ParamSet& params() const { return weights_.params; }
  ParamSet& grads() { return grads_; }
  const ModelWeights& weights() const { return weights_; }
  bool tied_head() const { return weights_.tied_head; }

  // ids I64 [B, S]; targets I64 [B, S] aligned (target of position t, -100 ignored) or
  // undefined; seq_idx I32 [B, S] or undefined; on any device (moved to the model's).
  // Writes logits [B·S, V] when defined (any device and float dtype; converted).
  LossSum forward(const Tensor& ids, const Tensor& targets, const Tensor& seq_idx,
                  Tensor& logits);
  // After forward with targets: gradients of grad_scale · Σ loss accumulate into grads().
  void backward(double grad_scale);
  // The next forward (with targets, no logits) also computes the LM head's gradients for a
  // backward(grad_scale) that follows, in one pass over the head instead of two
  // (lm_head_loss_forward_backward). Only for training: a forward that no backward follows
  // would leave them accumulated.
  void head_gradients_in_next_forward(double grad_scale) { head_grad_scale_ = grad_scale; }

  // Inference (decoding with state, SPEC §2-3). A zeroed state on the model's device for `rows`
  // sequences of up to `capacity` positions each, whose attention layers share a pool of KV
  // pages of `page_size` positions holding `kv_positions` in all (0: enough pages for every row
  // to reach capacity).
  InferenceState new_inference_state(int64_t rows, int64_t capacity, int64_t kv_positions = 0,
                                     int64_t page_size = kDefaultPageSize) const;
  // Runs one sequence's prompt (ids I64, S tokens, any shape and device) into empty row `row`
  // of the state and writes the logits of its last position to `last_logits` ([V] or [1, V],
  // any device and float dtype). A row with no reserved pages first reserves `capacity`
  // positions (InferenceState::reserve). Keeps nothing for a backward.
  void prefill(const Tensor& ids, InferenceState& state, int64_t row, Tensor& last_logits);
  // One new token (ids I64 [B], on the host) for each of the B distinct, prefilled state rows
  // `rows` -> logits [B, V] (any device and float dtype). On the GPU the step is captured as a
  // CUDA graph per padded batch size the first time and replayed after (when
  // state.use_graphs and every layer allows it).
  void decode(const Tensor& ids, const std::vector<int64_t>& rows, InferenceState& state,
              Tensor& logits);
  // decode for every row of the state, in order.
  void decode(const Tensor& ids, InferenceState& state, Tensor& logits);

  // LoRA (model/lora.h). Attaching an adapter freezes the base: only the adapter's tensors get
  // gradients (the linear weights, experts, embedding and LM head get none; the small
  // parameters keep scratch gradients that nothing reads). The adapter moves to the model's
  // device and dtype, and follows it through to().
  void attach_adapter(LoraAdapter adapter);
  bool has_adapter() const { return !adapter_.targets.empty(); }
  const LoraAdapter& adapter() const { return adapter_; }
  ParamSet& adapter_params() { return adapter_.params; }
  const ParamSet& adapter_grads() const { return adapter_grads_; }
  // Zeroes every gradient: the base's and the adapter's.
  void zero_grads();
  // Dropout on the adapter's path: on while training, with a fresh seed per micro-batch (the
  // recomputed forward and the backward of that micro-batch draw the same masks).
  void set_lora_dropout(bool training, uint64_t seed);
  // Folds W + s · B · A into the base weights (on the CPU) and detaches the adapter.
  void merge_adapter();
  // QLoRA: holds every linear weight and the experts quantised (NF4 or int8) on `device`,
  // de-quantised for each product; the rest of the model stays as it is (move it with to()).
  // Needs an adapter (the quantised weights are frozen); such a model cannot be saved whole.
  void quantize_base(QuantKind kind, Device device);
  // Bytes of the quantised weights (codes and scales).
  int64_t quantized_bytes() const;
  int64_t quantized_params() const;

  // What the optimizer updates: the adapter's tensors when one is attached, else every
  // trainable parameter; each with its gradient and whether weight decay applies.
  struct TrainableParam {
    std::string name;
    Tensor param, grad;
    bool decay = true;
  };
  std::vector<TrainableParam> trainable();

  // Distributed training: puts the trainable parameters (trainable()) into one flat buffer and
  // their gradients into another, each tensor at the element offset `offsets` gives it, in
  // buffers of `total` elements (the gaps are zero); returns (params, grads). The gradients start
  // at zero. Call it after to(), which gives every tensor storage of its own again.
  std::pair<Tensor, Tensor> make_contiguous(
      const std::vector<std::pair<std::string, int64_t>>& offsets, int64_t total);
  // Tensor parallelism: keeps this rank's shard of each Mamba, attention and MLP parameter of
  // `group` (the model holds whole parameters on the CPU, with no adapter or quantised base),
  // computes with the local config, and sums those layers' outputs and input gradients over
  // the group. An impossible split is an Error naming the config field.
  void shard_tensor_parallel(Communicator& group);
  Communicator* tensor_parallel_group() const { return tp_; }
  // Sequence parallelism (Megatron's, with tensor parallelism): between the split layers the
  // residual stream, the norms and the LM head + loss work on this rank's 1/n of the tokens;
  // each layer's input is all-gathered and its partial output reduce-scattered instead of
  // all-reduced. The gradients of the tensors every rank holds whole (norms, embedding, LM head)
  // are then partial sums, summed over the group during the step's last backward
  // (set_final_backward). The batch's tokens must divide by n.
  void set_sequence_parallel(bool on);
  // Whether the next backward is the step's last micro-batch (default true).
  void set_final_backward(bool final) { final_backward_ = final; }
  // Expert parallelism: keeps experts [r·E/n, (r+1)·E/n) of every MoE layer on rank r of the n
  // ranks of `group` (data-parallel ranks, each with its own tokens). Each MoE layer gathers the
  // group's tokens, runs its experts on those routed to them, and sums the outputs back
  // (dist/data_parallel.h reduces the experts' gradients over the ranks that hold the same
  // experts). The model holds whole parameters on the CPU, with no adapter or quantised base.
  void shard_experts(Communicator& group);
  Communicator* expert_parallel_group() const { return ep_; }

  // Called during backward each time a group of gradients is final: with the layer index once
  // layer l (and its pre-norm) is done, with layers() for the final norm and an untied LM head
  // (before any layer), and with -1 for the embedding (the tied head's too) at the end.
  void set_grads_ready_hook(std::function<void(int)> hook) { grads_ready_ = std::move(hook); }

  // Layers of these kinds keep only their input during forward and run forward again just
  // before their backward (activation recomputation).
  void set_recompute(const std::vector<LayerKind>& kinds);
  // Routed (token, slot) pairs per expert in the last forward, I64 [E], by MoE layer index.
  std::vector<std::pair<size_t, Tensor>> expert_loads() const;
  // The router correction bias of MoE layer `layer` (a buffer the trainer updates).
  Tensor& correction_bias(size_t layer);

 private:
  Model(ModelConfig config, ModelWeights weights, LoraAdapter adapter = LoraAdapter());
  // An HF directory of `weights` under `config`, with this model's tokenizer files.
  void write_model_dir(const std::string& dir, const ModelConfig& config,
                       const ModelWeights& weights) const;
  // Gradients (zeros, beside each trainable parameter) and the mixers bound to both.
  void bind();
  void bind_mixers();
  const Tensor& head_weight() const;
  Tensor head_grad();  // its gradient, or undefined (a frozen head)
  // Logits of the rows of `normed` (the final norm's output) into `logits`, converting.
  LossSum head_logits(const Tensor& normed, const Tensor& labels, Tensor& logits) const;
  // Layer l's pre-norm weight (the final norm's when l = layers).
  const Tensor& norm_weight(size_t l) const;
  // h [T, D] -> normed [T, D] by layer l's pre-norm (or the final norm when l = layers).
  void norm(size_t l, const Tensor& h, Tensor& normed) const;
  // The GPU work of one decode step: ids I64 [B] on the device, the tokens placed by `slots`
  // -> logits [B, V] in the model's dtype on its device.
  void decode_step(const Tensor& ids, InferenceState& state, const CacheSlots& slots,
                   Tensor& logits);
  // The state's captured step for `padded` batch entries, captured now if it is not yet.
  DecodeGraph& decode_graph(InferenceState& state, int64_t padded);

  ModelConfig config_;
  ModelWeights weights_;
  ParamSet grads_;
  std::string source_dir_;
  LoraAdapter adapter_;
  ParamSet adapter_grads_;
  // On the heap: layers keep its address, which must survive moving the Model.
  std::unique_ptr<LoraRuntime> lora_runtime_ = std::make_unique<LoraRuntime>();
  std::vector<std::unique_ptr<Mixer>> mixers_;
  std::vector<bool> recompute_;
  std::function<void(int)> grads_ready_;
  Communicator* tp_ = nullptr;
  bool sp_ = false, final_backward_ = true;
  // Sequence parallelism: this rank's rows of a [tokens, ·] tensor.
  Tensor my_rows(const Tensor& all) const;
  // Sums a gradient of a whole tensor over the tensor-parallel group at the step's last
  // backward, under sequence parallelism.
  void sum_sequence_parallel_grad(const std::string& name);
  Communicator* ep_ = nullptr;
  ModelConfig full_config_;
  // Saved activations: residual input, its norm and 1/rms per layer; the final stream.
  Batch batch_;
  Tensor ids_, targets_;
  std::vector<Tensor> resid_, normed_, rstd_;
  Tensor final_in_, final_normed_, final_rstd_;
  // head_gradients_in_next_forward: the scale asked for, and the head's input gradient the
  // forward computed with it (for the backward).
  std::optional<double> head_grad_scale_;
  double dfinal_scale_ = 0;
  Tensor dfinal_;
};

// transformers' labels are unshifted: position t is trained to predict labels[t + 1].
// Returns those aligned targets, I64 [B, S], with -100 at each row's last position.
Tensor shift_labels(const Tensor& labels);

}  // namespace nh
