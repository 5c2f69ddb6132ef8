// LoRA adapters in PEFT's directory format: adapter_config.json + adapter_model.safetensors,
// which `peft` loads onto the transformers model (PeftModel.from_pretrained) and writes
// (save_pretrained).
//
// Tensor names: `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`, where <module> is
// the transformers module (`model.layers.3.mixer.q_proj`; `backbone.` for Mamba-2 models).
// Expert weights (PEFT's target_parameters, one ParamWrapper per targeted parameter): on
// `<layer>.mixer.experts` the targeted parameters wrap one another in registration order
// (up_proj, then down_proj), the last outermost, so with both targeted up_proj's pair is under
// `experts.base_layer.` and down_proj's under `experts.`; alone, either is under `experts.`.
// Their layout: A [E·r, in] (expert e owns rows e·r … e·r + r − 1), B [out, r·E] (expert e's
// column j is column j·E + e).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/lora.h"

namespace nh {

// Writes `dir`/adapter_config.json and adapter_model.safetensors (fp32), each atomically.
// `base_model` is recorded as base_model_name_or_path.
void save_peft_adapter(const std::string& dir, const ModelConfig& config,
                       const LoraAdapter& adapter, const std::string& base_model);

// Reads a PEFT LoRA adapter for a model of `config`: its settings from adapter_config.json, its
// targets from the tensors present. An option the engine does not run (DoRA, LoRA biases,
// modules_to_save, per-module ranks, ...), a tensor that names no weight of this model or has
// the wrong shape is an Error naming the file and the field or tensor.
LoraAdapter load_peft_adapter(const std::string& dir, const ModelConfig& config);

// The settings of an adapter_config.json's text (`where` names it in errors). An option the
// engine does not run, or a missing or mistyped field, is an Error.
LoraConfig parse_peft_adapter_config(std::string_view text, const std::string& where);

// `tensors` (named as the adapter's params: its params or their gradients) under PEFT's names
// and layouts, fp32 on the CPU.
std::vector<std::pair<std::string, Tensor>> to_peft_tensors(const ModelConfig& config,
                                                            const LoraAdapter& adapter,
                                                            const ParamSet& tensors);

}  // namespace nh
