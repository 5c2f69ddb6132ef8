// Where the parameters live in checkpoint files (SPEC §7): the one table from
// file names to canonical names (params.h) and back.
//   read:  `backbone.` or `model.` prefix; `backbone.embedding.weight` (mamba_ssm layout);
//          MoE experts per expert (`experts.{j}.up_proj.weight` [I, Din]) or fused 3-D
//          (`experts.up_proj` [E, I, Din]); tensors the model does not use (MTP layers)
//          are kept as extras and written back unchanged.
//   write: `backbone.` prefix, experts per expert, `lm_head.weight` unless tied, each tensor in
//          the dtype it was read in (so a load/save round trip is bit-identical).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "io/checkpoint.h"
#include "model/config.h"
#include "model/params.h"
#include "ops/quantize.h"

namespace nh {

struct ModelWeights {
  ParamSet params;                                   // fp32 (or the requested dtype)
  std::map<std::string, DType> file_dtype;           // canonical name -> dtype to save in
  std::vector<std::pair<std::string, Tensor>> extra; // file tensors the model does not use
  bool tied_head = false;
  bool attention_biases = false;
  // Frozen weights held quantised (QLoRA), by canonical name; they are not in `params`.
  std::map<std::string, QuantizedTensor> quantized;
};

// Loads every parameter `config` needs from `weights` (the files of directory `where`),
// converting to `dtype`. Missing tensors and wrong shapes are an Error naming the
// tensor as the file spells it.
ModelWeights load_model_weights(const ModelConfig& config, const WeightSet& weights,
                                const std::string& where, DType dtype = DType::F32);

// The tensors to write for an HF directory, named as NVIDIA publishes them.
std::vector<std::pair<std::string, Tensor>> hf_tensors(const ModelConfig& config,
                                                       const ModelWeights& weights);

// The canonical name of a file tensor name (prefix stripped, mamba_ssm spelling mapped);
// per-expert names stay per expert.
std::string canonical_name(const std::string& file_name);

}  // namespace nh
