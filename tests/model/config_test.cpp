#include "model/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/memory_estimate.h"

namespace nh {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kModels = std::string(NH_SOURCE_DIR) + "/configs/models/";
const double kInf = std::numeric_limits<double>::infinity();

// A small valid hybrid with every layer kind; tests change one key at a time.
json hybrid() {
  return json::parse(R"({
    "model_type": "nemotron_h", "vocab_size": 97, "hidden_size": 48,
    "hybrid_override_pattern": "M*-E",
    "mamba_num_heads": 6, "mamba_head_dim": 8, "ssm_state_size": 5, "n_groups": 3,
    "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 8,
    "intermediate_size": 40,
    "n_routed_experts": 6, "num_experts_per_tok": 3, "n_group": 2, "topk_group": 1,
    "moe_intermediate_size": 12, "moe_shared_expert_intermediate_size": 20
  })");
}

json mamba2() {
  return json::parse(R"({
    "model_type": "mamba2", "vocab_size": 97, "hidden_size": 24, "num_hidden_layers": 3,
    "num_heads": 6, "head_dim": 8, "state_size": 5, "n_groups": 2
  })");
}

json mamba_ssm() {
  return json::parse(R"({
    "d_model": 24, "n_layer": 2, "vocab_size": 97, "ssm_cfg": {"layer": "Mamba2", "headdim": 12},
    "pad_vocab_size_multiple": 16
  })");
}

// parse_config(j) must fail with a message naming the file, the field and what was found.
void expect_error(const json& j, const std::string& field, const std::string& found) {
  try {
    parse_config(j, "dir/config.json");
    ADD_FAILURE() << "no error for " << field << " in " << j.dump();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("dir/config.json: ", 0), 0u) << what;
    EXPECT_NE(what.find(field), std::string::npos) << what;
    EXPECT_NE(what.find(found), std::string::npos) << what;
  }
}

void expect_text_error(const std::string& text, const std::string& part) {
  try {
    parse_config_text(text, "t/config.json");
    ADD_FAILURE() << "no error for " << text;
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("t/config.json: ", 0), 0u) << what;
    EXPECT_NE(what.find(part), std::string::npos) << what;
  }
}

ModelConfig without_raw(ModelConfig c) {
  c.raw = json::object();
  c.mamba_ssm_layout = false;
  return c;
}

struct Published {
  const char* file;
  double size;       // the published total parameter count
  double tolerance;  // relative
  // Layer counts "M/*/-/E"; for 8B, 56B, Nano-9B-v2 and Nano-30B they are the counts the model
  // cards and papers state (8B: 24 Mamba-2, 24 MLP, 4 attention).
  const char* pattern_counts;
};

// Published sizes: the parameter count in each model's name, or the model card's total where
// the name rounds (Nemotron-3 Nano 30B-A3B: 31.6B total). mamba2-1.3b has 1.344B parameters
// by its own config, 3.4% over its name; it is checked at 3.5%.
const Published kPublished[] = {
    {"nemotron-h-8b", 8e9, 0.03, "24/4/24/0"},
    {"nemotron-h-47b", 47e9, 0.03, "45/5/48/0"},
    {"nemotron-h-56b", 56e9, 0.03, "54/10/54/0"},
    {"nemotron-nano-9b-v2", 9e9, 0.03, "27/4/25/0"},
    {"nemotron-nano-12b-v2", 12e9, 0.03, "28/6/28/0"},
    {"nemotron-3-nano-4b", 4e9, 0.03, "21/4/17/0"},
    {"nemotron-3-nano-30b-a3b", 31.6e9, 0.03, "23/6/0/23"},
    {"nemotron-3-super-120b-a12b", 120e9, 0.03, "40/8/0/40"},
    {"mamba2-130m", 130e6, 0.03, "24/0/0/0"},
    {"mamba2-370m", 370e6, 0.03, "48/0/0/0"},
    {"mamba2-780m", 780e6, 0.03, "48/0/0/0"},
    {"mamba2-1.3b", 1.3e9, 0.035, "48/0/0/0"},
    {"mamba2-2.7b", 2.7e9, 0.03, "64/0/0/0"},
};

std::string counts(const ModelConfig& c) {
  int n[4] = {0, 0, 0, 0};
  for (LayerKind k : c.layers) ++n[static_cast<int>(k)];
  return std::to_string(n[0]) + "/" + std::to_string(n[1]) + "/" + std::to_string(n[2]) + "/" +
         std::to_string(n[3]);
}

TEST(PublishedConfigs, LoadAndCountWithinToleranceOfPublishedSize) {
  for (const Published& p : kPublished) {
    SCOPED_TRACE(p.file);
    const ModelConfig c = load_config(kModels + p.file + ".json");
    EXPECT_EQ(counts(c), p.pattern_counts);
    const double n = static_cast<double>(count_parameters(c).total);
    EXPECT_LT(std::fabs(n - p.size) / p.size, p.tolerance) << n;
  }
}

TEST(PublishedConfigs, Nemotron3SuperHasLatentMoeAndOneMtpLayer) {
  const ModelConfig c = load_config(kModels + "nemotron-3-super-120b-a12b.json");
  EXPECT_EQ(c.moe_latent_size, 1024);
  EXPECT_EQ(c.n_routed_experts, 512);
  EXPECT_EQ(c.num_experts_per_tok, 22);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(layer_pattern(c.mtp_layers), "*E");
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 5.0);
  // No time_step_limit key: transformers' default (0, inf).
  EXPECT_EQ(c.time_step_limit, std::make_pair(0.0, kInf));
}

TEST(PublishedConfigs, MambaSsmLayoutPadsVocabularyAndTiesHead) {
  const ModelConfig c = load_config(kModels + "mamba2-2.7b.json");
  EXPECT_TRUE(c.mamba_ssm_layout);
  EXPECT_EQ(c.model_type, "mamba2");
  EXPECT_EQ(c.vocab_size, 50288);  // 50277 up to a multiple of 16
  EXPECT_EQ(c.hidden_size, 2560);
  EXPECT_EQ(c.num_layers(), 64);
  EXPECT_EQ(c.mamba_num_heads, 80);  // expand 2 * 2560 / headdim 64
  EXPECT_EQ(c.mamba_head_dim, 64);
  EXPECT_EQ(c.ssm_state_size, 128);
  EXPECT_EQ(c.n_groups, 1);
  EXPECT_EQ(c.conv_kernel, 4);
  EXPECT_EQ(c.chunk_size, 256);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.residual_in_fp32);
  EXPECT_TRUE(c.use_conv_bias);
  EXPECT_FALSE(c.use_bias);
}

TEST(Config, LoadsADirectoryThroughItsConfigJson) {
  const fs::path dir = fs::temp_directory_path() / ("nh_cfg_dir_" + std::to_string(getpid()));
  fs::create_directories(dir);
  fs::copy_file(kModels + "tiny-moe.json", dir / "config.json",
                fs::copy_options::overwrite_existing);
  const ModelConfig c = load_config(dir.string());
  EXPECT_EQ(c.pattern(), "ME*ME");
  fs::remove_all(dir);
  EXPECT_THROW(load_config(dir.string()), Error);
}

TEST(Config, ReferenceCaseConfigsWrittenByTransformersParse) {
  const fs::path root = fs::path(NH_SOURCE_DIR) / "tests/data/reference";
  if (!fs::exists(root)) GTEST_SKIP() << "no reference cases";
  int n = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (!fs::exists(entry.path() / "config.json")) continue;
    SCOPED_TRACE(entry.path().string());
    const ModelConfig c = load_config(entry.path().string());
    EXPECT_GT(c.num_layers(), 0);
    EXPECT_EQ(c.time_step_limit.second, kInf);
    ++n;
  }
  EXPECT_GT(n, 0);
}

TEST(Config, TinyConfigsMatchTransformersParameterCounts) {
  // sum(p.numel() for p in AutoModelForCausalLM.from_config(c).parameters()), transformers
  // 5.24 (buffers excluded, a tied head counted once).
  EXPECT_EQ(count_parameters(load_config(kModels + "tiny-hybrid.json")).total, 122148);
  EXPECT_EQ(count_parameters(load_config(kModels + "tiny-moe.json")).total, 159000);
  EXPECT_EQ(count_parameters(load_config(kModels + "tiny-mamba2.json")).total, 107528);
}

// Per layer kind, as SPEC §2-5 gives the shapes (pre-norms are counted under "norm").
TEST(Config, LayerParametersFollowSpecShapes) {
  ModelConfig c = parse_config(hybrid(), "h");
  c.use_bias = true;
  c.mlp_bias = true;
  const int64_t D = 48, d_in = 48, conv = 48 + 2 * 3 * 5, H = 6;
  auto by_kind = [&](const char* kind) { return count_parameters(c).by_kind[kind]; };
  EXPECT_EQ(by_kind("mamba"), D * (d_in + conv + H) + (d_in + conv + H) + conv * 4 + conv + 3 * H +
                                  d_in + d_in * D + D);
  EXPECT_EQ(by_kind("attention"), D * 48 + 2 * D * 16 + 48 * D);
  EXPECT_EQ(by_kind("mlp"), D * 40 + 40 + 40 * D + D);
  EXPECT_EQ(by_kind("moe"), 6 * D + 6 * 2 * 12 * D + (D * 20 + 20 + 20 * D + D));
  EXPECT_EQ(by_kind("norm"), 5 * D);
  EXPECT_EQ(by_kind("lm_head"), 97 * D);
  c.moe_latent_size = 7;
  EXPECT_EQ(by_kind("moe"),
            6 * D + 6 * 2 * 12 * 7 + (D * 20 + 20 + 20 * D + D) + (D * 7 + 7) + (7 * D + D));
  c.tie_word_embeddings = true;
  EXPECT_EQ(by_kind("lm_head"), 0);
  c.vocab_size = std::numeric_limits<int64_t>::max() / 2;
  EXPECT_THROW(count_parameters(c), Error);
}

TEST(Config, NemotronDefaultsAreTransformers) {
  json j = hybrid();
  const ModelConfig c = parse_config(j, "h");
  EXPECT_EQ(c.conv_kernel, 4);
  EXPECT_EQ(c.chunk_size, 128);
  EXPECT_EQ(c.expand, 2);
  EXPECT_TRUE(c.use_conv_bias);
  EXPECT_FALSE(c.use_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.residual_in_fp32);
  EXPECT_TRUE(c.rescale_prenorm_residual);
  EXPECT_DOUBLE_EQ(c.layer_norm_epsilon, 1e-5);
  EXPECT_DOUBLE_EQ(c.initializer_range, 0.02);
  EXPECT_DOUBLE_EQ(c.time_step_min, 0.001);
  EXPECT_DOUBLE_EQ(c.time_step_max, 0.1);
  EXPECT_DOUBLE_EQ(c.time_step_floor, 1e-4);
  EXPECT_EQ(c.time_step_limit, std::make_pair(0.0, kInf));
  EXPECT_EQ(c.moe_latent_size, 0);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.num_nextn_predict_layers, 0);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.pad_token_id, 0);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(c.d_inner(), 48);
  EXPECT_EQ(c.conv_dim(), 48 + 2 * 3 * 5);
  j["num_key_value_heads"] = nullptr;  // transformers: null means one per query head
  EXPECT_EQ(parse_config(j, "h").num_key_value_heads, 6);
}

TEST(Config, Mamba2DefaultsAreTransformers) {
  const ModelConfig c = parse_config(mamba2(), "m");
  EXPECT_EQ(c.model_type, "mamba2");
  EXPECT_EQ(c.pattern(), "MMM");
  EXPECT_EQ(c.chunk_size, 256);
  EXPECT_TRUE(c.residual_in_fp32);
  EXPECT_FALSE(c.tie_word_embeddings);  // Mamba2Config's default; the HF ports set it
  EXPECT_FALSE(c.rescale_prenorm_residual);
  EXPECT_DOUBLE_EQ(c.initializer_range, 0.1);
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.pad_token_id, 1);
  EXPECT_FALSE(c.mamba_ssm_layout);
}

TEST(Config, LegacyAliasesAreReadAndWinOverCanonicalKeys) {
  json j = hybrid();
  j.erase("n_groups");
  j.erase("n_routed_experts");
  j.erase("head_dim");
  j["mamba_n_groups"] = 2;
  j["conv_kernel"] = 9;  // the alias wins, as in transformers' __post_init__
  j["mamba_d_conv"] = 3;
  j["mamba_expand"] = 3;
  j["mamba_dt_min"] = 0.002;
  j["mamba_dt_max"] = 0.2;
  j["mamba_dt_limit"] = json::array({0.01, 50.0});
  j["mamba_dt_init_floor"] = 0.0003;
  j["mamba_conv_bias"] = false;
  j["mamba_chunk_size"] = 7;
  j["num_local_experts"] = 6;
  j["attention_head_dim"] = 8;
  const ModelConfig c = parse_config(j, "h");
  EXPECT_EQ(c.n_groups, 2);
  EXPECT_EQ(c.conv_kernel, 3);
  EXPECT_EQ(c.expand, 3);
  EXPECT_DOUBLE_EQ(c.time_step_min, 0.002);
  EXPECT_DOUBLE_EQ(c.time_step_max, 0.2);
  EXPECT_EQ(c.time_step_limit, std::make_pair(0.01, 50.0));
  EXPECT_DOUBLE_EQ(c.time_step_floor, 0.0003);
  EXPECT_FALSE(c.use_conv_bias);
  EXPECT_EQ(c.chunk_size, 7);
  EXPECT_EQ(c.n_routed_experts, 6);
  EXPECT_EQ(c.head_dim, 8);
  // Saving writes the canonical keys only.
  const json out = to_hf_json(c);
  for (const char* key :
       {"mamba_n_groups", "mamba_d_conv", "mamba_expand", "mamba_dt_min", "mamba_dt_max",
        "mamba_dt_limit", "mamba_dt_init_floor", "mamba_conv_bias", "mamba_chunk_size",
        "num_local_experts", "attention_head_dim"})
    EXPECT_FALSE(out.contains(key)) << key;
  EXPECT_EQ(out["n_groups"], 2);
  EXPECT_EQ(out["conv_kernel"], 3);
  EXPECT_EQ(out["n_routed_experts"], 6);
  EXPECT_EQ(without_raw(parse_config(out, "out")), without_raw(c));
}

TEST(Config, BothLayerListSpellingsGiveTheSameLayers) {
  const std::string expected = "M*-E";
  json by_pattern = hybrid();
  json by_new_names = hybrid();
  by_new_names.erase("hybrid_override_pattern");
  by_new_names["layers_block_type"] = {"linear_attention", "full_attention", "mlp", "moe"};
  json by_legacy_names = hybrid();
  by_legacy_names.erase("hybrid_override_pattern");
  by_legacy_names["layers_block_type"] = {"mamba", "attention", "mlp", "moe"};
  json by_attribute = hybrid();
  by_attribute.erase("hybrid_override_pattern");
  by_attribute["layer_types"] = {"mamba", "attention", "mlp", "moe"};
  for (const json& j : {by_pattern, by_new_names, by_legacy_names, by_attribute}) {
    const ModelConfig c = parse_config(j, "h");
    EXPECT_EQ(c.pattern(), expected);
    EXPECT_EQ(c.layers, (std::vector<LayerKind>{LayerKind::Mamba, LayerKind::Attention,
                                                LayerKind::Mlp, LayerKind::Moe}));
  }
}

TEST(Config, LayersBlockTypeWinsOverPatternAndNumHiddenLayersIsIgnored) {
  json j = hybrid();
  j["layers_block_type"] = {"mlp", "linear_attention", "mlp"};
  j["num_hidden_layers"] = 11;
  const ModelConfig c = parse_config(j, "h");
  EXPECT_EQ(c.pattern(), "-M-");
  EXPECT_EQ(c.num_layers(), 3);
  j["layers_block_type"] = nullptr;  // null is "not given": the pattern applies
  EXPECT_EQ(parse_config(j, "h").pattern(), "M*-E");
}

TEST(Config, MtpLayersFromListOrPattern) {
  json j = hybrid();
  j["num_nextn_predict_layers"] = 2;
  EXPECT_EQ(layer_pattern(parse_config(j, "h").mtp_layers), "*E");  // transformers' default
  j["mtp_hybrid_override_pattern"] = "M-";
  EXPECT_EQ(layer_pattern(parse_config(j, "h").mtp_layers), "M-");
  j["mtp_layers_block_type"] = {"attention", "mlp"};  // a non-default list beats the pattern
  const ModelConfig c = parse_config(j, "h");
  EXPECT_EQ(layer_pattern(c.mtp_layers), "*-");
  EXPECT_TRUE(c.mtp_has(LayerKind::Mlp));
  EXPECT_FALSE(c.mtp_has(LayerKind::Moe));
  EXPECT_EQ(without_raw(parse_config(to_hf_json(c), "out")), without_raw(c));
}

TEST(Config, BareInfinityOutsideStringsIsReadAndStringsAreUntouched) {
  const std::string text = R"({"model_type": "mamba2", "vocab_size": 97, "hidden_size": 24,
    "num_hidden_layers": 3, "num_heads": 6, "head_dim": 8, "state_size": 5, "n_groups": 2,
    "time_step_limit": [0.0, Infinity], "note": "Infinity, NaN and \"-Infinity\" in text",
    "custom_limits": [-Infinity, NaN, Infinity]})";
  const ModelConfig c = parse_config_text(text, "t");
  EXPECT_EQ(c.time_step_limit, std::make_pair(0.0, kInf));
  EXPECT_EQ(c.raw["note"], "Infinity, NaN and \"-Infinity\" in text");
  // Unknown keys keep their non-finite values, in transformers 5's spelling.
  const json out = to_hf_json(c);
  EXPECT_EQ(out["custom_limits"], json::parse(R"([{"__float__": "-Infinity"},
    {"__float__": "NaN"}, {"__float__": "Infinity"}])"));
  EXPECT_EQ(out["time_step_limit"], json::parse(R"([0.0, {"__float__": "Infinity"}])"));
}

TEST(Config, FloatObjectInfinityIsRead) {
  json j = mamba2();
  j["time_step_limit"] = json::parse(R"([0.0, {"__float__": "Infinity"}])");
  EXPECT_EQ(parse_config(j, "m").time_step_limit, std::make_pair(0.0, kInf));
  j["time_step_limit"] = json::parse(R"([0.5, 2])");
  EXPECT_EQ(parse_config(j, "m").time_step_limit, std::make_pair(0.5, 2.0));
}

TEST(Config, NaNAndMisplacedInfinityAreErrorsInBothSpellings) {
  json j = mamba2();
  j["time_step_limit"] = json::parse(R"([0.0, {"__float__": "NaN"}])");
  expect_error(j, "time_step_limit[1]", "NaN");
  j["time_step_limit"] = json::parse(R"([{"__float__": "-Infinity"}, 1.0])");
  expect_error(j, "time_step_limit[0]", "-Infinity");
  j["time_step_limit"] = json::parse(R"([2.0, 1.0])");
  expect_error(j, "time_step_limit[1]", "1.0");
  j["time_step_limit"] = json::parse(R"([0.0])");
  expect_error(j, "time_step_limit", "[0.0]");
  j["time_step_limit"] = json::parse(R"([0.0, {"__float__": "Infinite"}])");
  expect_error(j, "time_step_limit[1]", "Infinite");
  const std::string base = R"({"model_type": "mamba2", "vocab_size": 97, "hidden_size": 24,
    "num_hidden_layers": 3, "num_heads": 6, "head_dim": 8, "state_size": 5, "n_groups": 2, )";
  expect_text_error(base + R"("time_step_limit": [0.0, NaN]})", "time_step_limit[1]");
  expect_text_error(base + R"("layer_norm_epsilon": Infinity})", "layer_norm_epsilon");
  expect_text_error(base + R"("time_step_max": NaN})", "time_step_max");
}

TEST(Config, UnknownKeysSurviveASave) {
  json j = hybrid();
  j["my_key"] = {{"nested", json::array({1, 2})}};
  j["torch_dtype"] = "bfloat16";
  const json out = to_hf_json(parse_config(j, "h"));
  EXPECT_EQ(out["my_key"], j["my_key"]);
  EXPECT_EQ(out["torch_dtype"], "bfloat16");
  EXPECT_EQ(out["architectures"], json::array({"NemotronHForCausalLM"}));
  EXPECT_EQ(out["layers_block_type"],
            json::array({"linear_attention", "full_attention", "mlp", "moe"}));
  EXPECT_EQ(out["hybrid_override_pattern"], "M*-E");
  EXPECT_TRUE(out["moe_latent_size"].is_null());
}

TEST(Config, RoundTripGivesTheSameStructForEveryShippedConfig) {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(kModels)) files.push_back(entry.path().string());
  ASSERT_GE(files.size(), 16u);
  for (const std::string& file : files) {
    SCOPED_TRACE(file);
    const ModelConfig c = load_config(file);
    const json out = to_hf_json(c);
    const ModelConfig back = parse_config_text(out.dump(2), "out");
    EXPECT_EQ(without_raw(back), without_raw(c));
    EXPECT_FALSE(back.mamba_ssm_layout);
    EXPECT_EQ(to_hf_json(back), out);
  }
}

TEST(Config, MambaSsmLayoutSavesAsTransformersMamba2) {
  const ModelConfig c = parse_config(mamba_ssm(), "s");
  EXPECT_TRUE(c.mamba_ssm_layout);
  EXPECT_EQ(c.vocab_size, 112);
  EXPECT_EQ(c.mamba_num_heads, 4);
  const json out = to_hf_json(c);
  EXPECT_EQ(out["model_type"], "mamba2");
  EXPECT_EQ(out["architectures"], json::array({"Mamba2ForCausalLM"}));
  EXPECT_EQ(out["num_heads"], 4);
  EXPECT_EQ(out["head_dim"], 12);
  EXPECT_EQ(out["expand"], 2);
  EXPECT_FALSE(out.contains("ssm_cfg"));
  EXPECT_FALSE(out.contains("d_model"));
  EXPECT_EQ(without_raw(parse_config(out, "out")), without_raw(c));
}

TEST(ConfigErrors, ModelTypeAndTopLevel) {
  json j = hybrid();
  j["model_type"] = "llama";
  expect_error(j, "model_type", "\"llama\"");
  j["model_type"] = 3;
  expect_error(j, "model_type", "3");
  j.erase("model_type");
  expect_error(j, "model_type", "missing");
  expect_error(json::array({1}), "config", "[1]");
  expect_text_error("{\"model_type\": \"mamba2\",", "valid JSON");
  expect_text_error(std::string(300, '[') + std::string(300, ']'), "nesting");
  expect_text_error("", "valid JSON");
  EXPECT_THROW(load_config("/nonexistent/nowhere/config.json"), Error);
}

TEST(ConfigErrors, MissingRequiredKeys) {
  for (const char* key : {"vocab_size", "hidden_size", "hybrid_override_pattern"}) {
    json j = hybrid();
    j.erase(key);
    expect_error(j, key == std::string("hybrid_override_pattern") ? "layers_block_type" : key,
                 "missing");
  }
  for (const char* key : {"mamba_num_heads", "mamba_head_dim", "ssm_state_size"}) {
    json j = hybrid();
    j.erase(key);
    expect_error(j, key, "missing");
  }
  // Without Mamba layers the Mamba sizes may be absent.
  json no_mamba = hybrid();
  no_mamba.erase("mamba_num_heads");
  no_mamba["hybrid_override_pattern"] = "*-E";
  EXPECT_EQ(parse_config(no_mamba, "h").mamba_num_heads, 128);
  for (const char* key :
       {"vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "head_dim", "state_size"}) {
    json j = mamba2();
    j.erase(key);
    expect_error(j, key, "missing");
  }
  for (const char* key : {"d_model", "vocab_size"}) {
    json j = mamba_ssm();
    j.erase(key);
    expect_error(j, key == std::string("d_model") ? "model_type" : key, "missing");
  }
}

TEST(ConfigErrors, WrongJsonTypes) {
  const std::pair<const char*, json> cases[] = {
      {"hidden_size", "48"},          {"hidden_size", 48.0},
      {"hidden_size", true},          {"hidden_size", nullptr},
      {"tie_word_embeddings", 1},     {"layer_norm_epsilon", "1e-5"},
      {"hybrid_override_pattern", 4}, {"mtp_layers_block_type", "*E"},
      {"eos_token_id", "2"},          {"time_step_limit", "[0, inf]"},
  };
  for (const auto& [key, value] : cases) {
    json j = hybrid();
    j[key] = value;
    expect_error(j, key, value.dump());
  }
  json j = hybrid();
  j["eos_token_id"] = {2, "x"};
  expect_error(j, "eos_token_id[1]", "\"x\"");
  j = hybrid();
  j["eos_token_id"] = {2, 7};
  EXPECT_EQ(parse_config(j, "h").eos_token_ids, (std::vector<int64_t>{2, 7}));
  j = mamba_ssm();
  j["ssm_cfg"] = "Mamba2";
  expect_error(j, "ssm_cfg", "\"Mamba2\"");
}

TEST(ConfigErrors, UnknownLayerCharacterOrName) {
  json j = hybrid();
  j["hybrid_override_pattern"] = "M*x-";
  expect_error(j, "hybrid_override_pattern", "\"x\" at position 2");
  j["hybrid_override_pattern"] = "";
  expect_error(j, "hybrid_override_pattern", "none");
  j.erase("hybrid_override_pattern");
  j["layers_block_type"] = {"mamba", "transformer"};
  expect_error(j, "layers_block_type[1]", "\"transformer\"");
  j["layers_block_type"] = {"mamba", 3};
  expect_error(j, "layers_block_type[1]", "3");
  j["layers_block_type"] = json::array();
  expect_error(j, "layers_block_type", "none");
  j = hybrid();
  j["num_nextn_predict_layers"] = 1;
  j["mtp_layers_block_type"] = {"moe", "dense"};
  expect_error(j, "mtp_layers_block_type[1]", "\"dense\"");
}

TEST(ConfigErrors, SizesThatDoNotDivide) {
  json j = hybrid();
  j["n_groups"] = 4;  // 6 Mamba heads
  expect_error(j, "mamba_num_heads", "6");
  j = hybrid();
  j["num_key_value_heads"] = 4;  // 6 query heads
  expect_error(j, "num_attention_heads", "6");
  j = hybrid();
  j["n_group"] = 4;  // 6 experts
  expect_error(j, "n_routed_experts", "6");
  j = hybrid();
  j["n_group"] = 3;  // 2 experts per group is the least
  j["n_routed_experts"] = 3;
  j["num_experts_per_tok"] = 1;
  expect_error(j, "n_routed_experts", "at least 2 experts per group");
  j = hybrid();
  j["topk_group"] = 3;  // n_group 2
  expect_error(j, "topk_group", "3");
  j = hybrid();
  j["num_experts_per_tok"] = 4;  // topk_group 1 keeps 3 experts
  expect_error(j, "num_experts_per_tok", "4");
  j = mamba2();
  j["hidden_size"] = 25;  // expand 2 * 25 != 6 * 8
  expect_error(j, "num_heads * head_dim", "expand * hidden_size = 2 * 25 = 50");
  j = mamba_ssm();
  j["ssm_cfg"]["headdim"] = 7;  // expand 2 * 24 = 48
  expect_error(j, "ssm_cfg.headdim", "48");
  // Without a layer of that kind nothing is checked, as in transformers.
  j = hybrid();
  j["hybrid_override_pattern"] = "M-";
  j["n_group"] = 4;
  j["num_key_value_heads"] = 4;
  EXPECT_NO_THROW(parse_config(j, "h"));
}

TEST(ConfigErrors, ValuesOutOfRange) {
  const std::pair<const char*, json> cases[] = {
      {"hidden_size", 0},
      {"hidden_size", -48},
      {"vocab_size", 0},
      {"mamba_num_heads", 0},
      {"num_attention_heads", -1},
      {"conv_kernel", 0},
      {"chunk_size", 0},
      {"n_groups", 0},
      {"moe_latent_size", -1},
      {"num_nextn_predict_layers", -1},
      {"hidden_size", json::parse("9223372036854775808")},
      {"hidden_size", json::parse("18446744073709551615")},
      {"hidden_size", int64_t{1} << 40},
      {"layer_norm_epsilon", 0.0},
      {"time_step_min", -0.1},
  };
  for (const auto& [key, value] : cases) {
    json j = hybrid();
    j[key] = value;
    expect_error(j, key, value.dump());
  }
  json j = hybrid();
  j["time_step_max"] = 0.0001;  // below time_step_min 0.001
  expect_error(j, "time_step_max", "0.0001");
  j = hybrid();
  j["routed_scaling_factor"] = 0;
  expect_error(j, "routed_scaling_factor", "0");
  j = hybrid();
  j["mamba_num_heads"] = int64_t{1} << 30;  // heads * head_dim does not fit the size bound
  j["n_groups"] = 1;
  expect_error(j, "mamba_num_heads * mamba_head_dim", "1073741824 * 8");
  expect_text_error(R"({"model_type": "nemotron_h", "vocab_size": 1e400})", "valid JSON");
}

TEST(ConfigErrors, UnsupportedVariants) {
  json j = hybrid();
  j["mamba_hidden_act"] = "gelu";
  expect_error(j, "mamba_hidden_act", "\"gelu\"");
  j = hybrid();
  j["mlp_hidden_act"] = "silu";
  expect_error(j, "mlp_hidden_act", "\"silu\"");
  j = mamba2();
  j["hidden_act"] = "relu";
  expect_error(j, "hidden_act", "\"relu\"");
  j = mamba_ssm();
  j["ssm_cfg"].erase("layer");
  expect_error(j, "ssm_cfg.layer", "Mamba1");
  j = mamba_ssm();
  j["d_intermediate"] = 64;
  expect_error(j, "d_intermediate", "64");
  j = mamba_ssm();
  j["attn_layer_idx"] = {1};
  expect_error(j, "attn_layer_idx", "[1]");
  j = mamba_ssm();
  j["rms_norm"] = false;
  expect_error(j, "rms_norm", "false");
  j = mamba_ssm();
  j["ssm_cfg"]["d_ssm"] = 24;
  expect_error(j, "ssm_cfg.d_ssm", "24");
  j = mamba_ssm();
  j["ssm_cfg"]["norm_before_gate"] = true;
  expect_error(j, "ssm_cfg.norm_before_gate", "true");
}

// transformers reads what to_hf_json writes: AutoConfig on a written directory gives the same
// layers and sizes. Skipped where python3 or transformers is missing.
TEST(Config, TransformersReadsWhatWeWrite) {
  if (std::system("python3 -c 'import transformers' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 with transformers is not available";
  const fs::path root = fs::temp_directory_path() / ("nh_cfg_hf_" + std::to_string(getpid()));
  const std::vector<std::string> names = {"tiny-hybrid",   "tiny-moe",
                                          "tiny-mamba2",   "nemotron-3-super-120b-a12b",
                                          "nemotron-h-8b", "mamba2-130m"};
  std::vector<ModelConfig> configs;
  std::string dirs;
  for (const std::string& name : names) {
    configs.push_back(load_config(kModels + name + ".json"));
    fs::create_directories(root / name);
    std::ofstream(root / name / "config.json") << to_hf_json(configs.back()).dump(2);
    dirs += " " + (root / name).string();
  }
  const std::string script =
      "import json, sys\n"
      "from transformers import AutoConfig\n"
      "for d in sys.argv[1:]:\n"
      "    c = AutoConfig.from_pretrained(d)\n"
      "    m = c.model_type == 'mamba2'\n"
      "    print(json.dumps({'pattern': 'M' * c.num_hidden_layers if m else "
      "c.hybrid_override_pattern, 'mtp': '' if m else c.mtp_hybrid_override_pattern, "
      "'heads': c.num_heads if m else c.mamba_num_heads, 'limit': list(c.time_step_limit), "
      "'vocab': c.vocab_size, 'tie': c.tie_word_embeddings, 'groups': c.n_groups}))\n";
  const fs::path script_path = root / "read.py";
  std::ofstream(script_path) << script;
  FILE* pipe = popen(("python3 " + script_path.string() + dirs + " 2>/dev/null").c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  ASSERT_EQ(pclose(pipe), 0) << output;
  std::istringstream lines(output);
  std::string line;
  for (const ModelConfig& c : configs) {
    ASSERT_TRUE(std::getline(lines, line));
    const json got = parse_json_text(line, "python");
    EXPECT_EQ(got["pattern"], c.pattern());
    if (c.model_type == "nemotron_h") {
      EXPECT_EQ(got["mtp"], layer_pattern(c.mtp_layers));
    }
    EXPECT_EQ(got["heads"], c.mamba_num_heads);
    EXPECT_EQ(got["vocab"], c.vocab_size);
    EXPECT_EQ(got["tie"], c.tie_word_embeddings);
    EXPECT_EQ(got["groups"], c.n_groups);
    EXPECT_EQ(got["limit"],
              json::array({c.time_step_limit.first, json{{"__float__", "Infinity"}}}));
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace nh
