// LoRA on the model: which weights a config targets (PEFT's matching), the PEFT directory
// format, merging, the quantised (QLoRA) base and the memory plan. The numbers against PEFT
// itself are the verify.*.lora tests (tests/data/reference/*/lora).
#include "model/lora.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "core/rng.h"
#include "io/safetensors.h"
#include "model/memory_estimate.h"
#include "model/model.h"
#include "model/peft_adapter.h"
#include "model/presets.h"
#include "support/temp_dir.h"

namespace nh {
namespace {

std::string reference_case(const std::string& name) {
  return std::string(NH_SOURCE_DIR) + "/tests/data/reference/" + name;
}

std::vector<std::string> target_names(const ModelConfig& c, const LoraConfig& l) {
  std::vector<std::string> out;
  for (const LoraTarget& t : lora_targets(c, l, "test")) out.push_back(t.name);
  return out;
}

std::string error_of(const ModelConfig& c, const LoraConfig& l) {
  try {
    lora_targets(c, l, "recipe.yaml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

Tensor random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  Tensor ids = Tensor::empty({1, n}, DType::I64);
  for (int64_t i = 0; i < n; ++i) ids.data<int64_t>()[i] = int64_t(rng.next() % vocab);
  return ids;
}

Tensor logits_of(Model& m, const Tensor& ids) {
  Tensor logits = Tensor::empty({ids.numel(), m.config().vocab_size}, DType::F32), none;
  m.forward(ids, none, none, logits);
  return logits;
}

double rel_diff(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = read_float(a, i) - read_float(b, i);
    num += d * d;
    den += read_float(b, i) * read_float(b, i);
  }
  return std::sqrt(num / den);
}

// An adapter with every B non-zero, so that it changes the model.
LoraAdapter live_adapter(const ModelConfig& c, const LoraConfig& l) {
  LoraAdapter a = new_lora_adapter(c, l, 3, "test");
  Rng rng(9);
  for (const auto& name : a.params.names())
    if (name.ends_with("lora_B.weight")) {
      Tensor& b = a.params.at(name);
      for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] = float(0.05 * rng.normal());
    }
  return a;
}

TEST(LoraTargets, FollowPeftMatching) {
  const ModelConfig c = preset_config("tiny-moe");  // ME*ME
  LoraConfig l;
  l.target_modules = {"q_proj", "mixer.in_proj"};
  EXPECT_EQ(target_names(c, l),
            (std::vector<std::string>{"layers.0.mixer.in_proj", "layers.2.mixer.q_proj",
                                      "layers.3.mixer.in_proj"}));
  // A leaf name matches every module ending in it; here the shared experts' up_proj.
  l.target_modules = {"up_proj"};
  EXPECT_EQ(target_names(c, l),
            (std::vector<std::string>{"layers.1.mixer.shared_experts.up_proj",
                                      "layers.4.mixer.shared_experts.up_proj"}));
  l.target_modules.clear();
  l.target_modules_regex = R"(model\.layers\.[34]\.mixer\.\w+_proj)";
  EXPECT_EQ(target_names(c, l),
            (std::vector<std::string>{"layers.3.mixer.in_proj", "layers.3.mixer.out_proj"}));
  l.target_modules_regex.clear();
  l.target_parameters = {"experts.down_proj"};
  const auto experts = lora_targets(c, l, "test");
  ASSERT_EQ(experts.size(), 2u);
  EXPECT_EQ(experts[0].name, "layers.1.mixer.experts.down_proj");
  EXPECT_EQ(experts[0].experts, c.n_routed_experts);
  EXPECT_EQ(experts[0].out, c.hidden_size);
  EXPECT_EQ(experts[0].in, c.moe_intermediate_size);
  LoraConfig all;
  all.target_linear = true;
  // Mamba 2 x (in, out), attention q/k/v/o, MoE 2 x shared (up, down).
  EXPECT_EQ(lora_targets(c, all, "test").size(), 12u);
}

TEST(LoraTargets, BadSettingsNameTheKey) {
  const ModelConfig c = preset_config("tiny-moe");
  LoraConfig l;
  EXPECT_NE(error_of(c, l).find("lora_target_modules"), std::string::npos);
  l.target_modules = {"gate_proj"};
  EXPECT_NE(error_of(c, l).find("'gate_proj', which matches none"), std::string::npos);
  l.target_modules = {"lm_head"};
  EXPECT_NE(error_of(c, l).find("lm_head"), std::string::npos);
  l.target_modules = {"conv1d"};
  EXPECT_NE(error_of(c, l).find("conv1d"), std::string::npos);
  l.target_modules = {"q_proj"};
  l.r = 100000;
  EXPECT_NE(error_of(c, l).find("lora_r"), std::string::npos);
  l.r = 4;
  l.target_modules_regex = "([";
  EXPECT_NE(error_of(c, l).find("regular expression"), std::string::npos);
  l.target_modules_regex.clear();
  l.target_parameters = {"gate.weight"};
  EXPECT_NE(error_of(c, l).find("lora_target_parameters"), std::string::npos);
  LoraConfig experts;
  experts.target_parameters = {"up_proj"};
  EXPECT_NE(error_of(preset_config("tiny-hybrid"), experts).find("no routed experts"),
            std::string::npos);
}

TEST(LoraAdapter, NewAdapterLeavesTheModelUnchanged) {
  Model m = Model::load(reference_case("moe_hybrid"));
  const Tensor ids = random_ids(11, m.config().vocab_size, 1);
  const Tensor before = logits_of(m, ids);
  LoraConfig l;
  l.target_linear = true;
  l.target_parameters = {"up_proj", "down_proj"};
  m.attach_adapter(new_lora_adapter(m.config(), l, 5, "test"));
  EXPECT_EQ(rel_diff(logits_of(m, ids), before), 0.0);
}

TEST(LoraAdapter, PeftDirectoryRoundTripsAndMergeEqualsTheAdapter) {
  test::TempDir tmp;
  Model m = Model::load(reference_case("moe_hybrid"));
  LoraConfig l;
  l.target_modules = {"in_proj", "out_proj", "q_proj"};
  l.target_parameters = {"experts.up_proj", "experts.down_proj"};
  l.r = 3;
  l.alpha = 7;
  const LoraAdapter a = live_adapter(m.config(), l);
  save_peft_adapter(tmp.path(), m.config(), a, "base");
  const LoraAdapter back = load_peft_adapter(tmp.path(), m.config());
  ASSERT_EQ(back.params.names(), a.params.names());
  for (const auto& n : a.params.names())
    EXPECT_EQ(rel_diff(back.params.at(n), a.params.at(n)), 0.0) << n;
  EXPECT_EQ(back.config.scaling(), a.config.scaling());

  const Tensor ids = random_ids(13, m.config().vocab_size, 2);
  const Tensor plain = logits_of(m, ids);
  m.attach_adapter(back);
  const Tensor adapted = logits_of(m, ids);
  EXPECT_GT(rel_diff(adapted, plain), 1e-3);
  m.merge_adapter();
  EXPECT_FALSE(m.has_adapter());
  EXPECT_LT(rel_diff(logits_of(m, ids), adapted), 1e-5);
}

TEST(LoraAdapter, BadAdapterDirectoriesNameTheFileAndField) {
  test::TempDir tmp;
  const ModelConfig c = load_config(reference_case("moe_hybrid"));
  LoraConfig l;
  l.target_modules = {"q_proj"};
  save_peft_adapter(tmp.path(), c, live_adapter(c, l), "base");
  const auto error_loading = [&](const ModelConfig& config) -> std::string {
    try {
      load_peft_adapter(tmp.path(), config);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(error_loading(c), "");
  // Another model's shapes: the tensor is named.
  const ModelConfig other = load_config(reference_case("dense_hybrid"));
  EXPECT_NE(error_loading(other).find("q_proj.lora_"), std::string::npos) << error_loading(other);
  // DoRA is not run here.
  const std::string config_path = tmp / "adapter_config.json";
  std::string text;
  {
    std::ifstream in(config_path);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  const auto pos = text.find("\"use_dora\": false");
  ASSERT_NE(pos, std::string::npos);
  std::ofstream(config_path) << text.replace(pos, 17, "\"use_dora\": true");
  EXPECT_NE(error_loading(c).find("use_dora"), std::string::npos);
  std::filesystem::remove(config_path);
  EXPECT_NE(error_loading(c).find("adapter_config.json"), std::string::npos);
}

// The quantised base computes exactly what the model does with its weights replaced by their
// NF4 round trip: every linear and expert weight is de-quantised, nothing else is touched.
TEST(Qlora, Nf4BaseComputesWithTheRoundTrippedWeightsAndCannotBeSavedWhole) {
  test::TempDir tmp;
  for (const QuantKind kind : {QuantKind::NF4, QuantKind::Int8}) {
    Model m = Model::load(reference_case("moe_hybrid"));
    Model rounded = Model::load(reference_case("moe_hybrid"));
    const Tensor ids = random_ids(13, m.config().vocab_size, 3);
    LoraConfig l;
    l.target_modules = {"q_proj"};
    l.target_parameters = {"experts.up_proj"};
    m.attach_adapter(live_adapter(m.config(), l));
    rounded.attach_adapter(live_adapter(m.config(), l));
    m.quantize_base(kind, Device::CPU);
    int64_t replaced = 0;
    for (const auto& name : rounded.params().names())
      if (!m.params().has(name)) {
        Tensor& w = rounded.params().at(name);
        dequantize(quantize(w, kind), w);
        ++replaced;
      }
    EXPECT_EQ(replaced, 16);  // 2 Mamba x 2, attention 4, 2 MoE x (2 shared + 2 experts)
    EXPECT_LT(rel_diff(logits_of(m, ids), logits_of(rounded, ids)), 1e-6);
    // NF4: 4 bits, a byte per 64 and 4 per 16384; int8: a byte, 4 per row of 32 here.
    EXPECT_NEAR(double(m.quantized_bytes()) / double(m.quantized_params()),
                kind == QuantKind::NF4 ? 0.516 : 1.14, 0.01);
    EXPECT_THROW(m.save(tmp.path()), Error);
    EXPECT_THROW(m.merge_adapter(), Error);
  }
}

TEST(Qlora, MemoryPlanCountsTheAdapterAndTheQuantisedWeights) {
  const ModelConfig c = preset_config("tiny-moe");
  LoraConfig l;
  l.target_linear = true;
  l.target_parameters = {"experts.up_proj"};
  const LoraAdapter a = new_lora_adapter(c, l, 1, "test");
  int64_t adapter = 0;
  for (const auto& n : a.params.names()) adapter += a.params.at(n).numel();
  const AdapterMemory plan = estimate_adapter_memory(c, l, true);
  EXPECT_EQ(plan.adapter_params, adapter);
  EXPECT_EQ(plan.adapter_state, 16 * adapter);
  Model m = Model::init_quantized(c, 1, l, QuantKind::NF4, Device::CPU);
  EXPECT_EQ(plan.quantized_params, m.quantized_params());
  EXPECT_NEAR(double(plan.base - 2 * (count_parameters(c).total - plan.quantized_params)),
              double(m.quantized_bytes()), 64.0 * 40);  // the per-tensor block remainders
}

}  // namespace
}  // namespace nh
