#include "train/recipe.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "support/temp_dir.h"

namespace nh {
namespace {

// A valid recipe body; tests append or replace keys.
constexpr const char* kMinimal = "max_steps: 10\n";

class RecipeFile : public ::testing::Test {
 protected:
  std::string write(const std::string& text, const std::string& name = "r.yaml") {
    const std::string path = dir_ / name;
    std::ofstream(path) << text;
    return path;
  }
  // Loads `text` (plus overrides) and returns the error message, or "" when it loads.
  std::string error_of(const std::string& text, const std::vector<std::string>& overrides = {}) {
    try {
      load_recipe(write(text), overrides);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  test::TempDir dir_;
};

// Every message must name the file (or --set) and the key.
void expect_names(const std::string& message, const std::vector<std::string>& words) {
  ASSERT_FALSE(message.empty()) << "no error";
  for (const std::string& w : words) EXPECT_NE(message.find(w), std::string::npos) << message;
}

TEST_F(RecipeFile, EveryShippedRecipeLoadsAndRoundTrips) {
  const std::filesystem::path dir = std::filesystem::path(NH_SOURCE_DIR) / "configs/recipes";
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    Recipe r;
    ASSERT_NO_THROW(r = load_recipe(entry.path().string(), {}));
    EXPECT_FALSE(r.data.empty());
    EXPECT_EQ(load_recipe(write(recipe_to_yaml(r)), {}), r);
    ++count;
  }
  EXPECT_EQ(count, 15);
}

TEST_F(RecipeFile, ShippedRecipeCarriesItsSourceNumbers) {
  const std::string dir = std::string(NH_SOURCE_DIR) + "/configs/recipes/";
  const Recipe r = load_recipe(dir + "nemotron-h-8b-pretrain.yaml", {});
  EXPECT_EQ(r.model, "nemotron-h-8b");
  EXPECT_EQ(r.seq_length, 8192);
  EXPECT_EQ(r.global_batch_size, 768);
  EXPECT_EQ(r.max_steps, 1168251);
  EXPECT_EQ(r.warmup_steps, 2000);
  EXPECT_DOUBLE_EQ(r.lr, 3e-4);
  const Recipe sft = load_recipe(dir + "nemotron-3-nano-30b-a3b-sft.yaml", {});
  EXPECT_EQ(sft.data.at(0).type, "chat");
  EXPECT_DOUBLE_EQ(sft.min_lr, 0.0);
}

TEST_F(RecipeFile, AdapterKeysRoundTripWithAListOrARegex) {
  Recipe r;
  r.max_steps = 3;
  r.init_from = "base";
  r.adapter = "qlora";
  r.lora_r = 16;
  r.lora_alpha = 32;
  r.lora_dropout = 0.05;
  r.lora_target_modules = {"q_proj", "mixer.in_proj"};
  r.lora_target_parameters = {"experts.up_proj"};
  r.peft_use_rslora = true;
  r.lora_init = "gaussian";
  r.gradient_checkpointing = true;
  r.sample_packing = false;
  EXPECT_EQ(load_recipe(write(recipe_to_yaml(r)), {}), r);
  r.lora_target_modules.clear();
  r.lora_target_modules_regex = ".*\\.(q|v)_proj";
  const Recipe back = load_recipe(write(recipe_to_yaml(r)), {});
  EXPECT_EQ(back, r) << recipe_to_yaml(r);
  // A single string is PEFT's regular expression; a list holds names.
  const Recipe one = load_recipe(write("max_steps: 1\ninit_from: b\nadapter: lora\n"
                                       "lora_target_modules: q_proj\n"),
                                 {"lora_target_parameters=[down_proj]"});
  EXPECT_EQ(one.lora_target_modules_regex, "q_proj");
  EXPECT_TRUE(one.lora_target_modules.empty());
  EXPECT_EQ(one.lora_target_parameters, std::vector<std::string>{"down_proj"});
}

TEST_F(RecipeFile, RoundTripKeepsEveryFieldIncludingAwkwardStrings) {
  Recipe r;
  r.model = "configs/models/tiny-moe.json";
  r.init_from = "null";  // must not come back as an empty string
  r.tokenizer = "dir with spaces/tokenizer.json";
  r.seq_length = 77;
  r.global_batch_size = 12;
  r.micro_batch_size = 3;
  r.train_tokens = 123456789;
  r.lr_schedule = "wsd";
  r.warmup_steps = 3;
  r.wsd_decay_fraction = 0.25;
  r.seed = 18446744073709551615ull;
  r.precision = "fp32";
  r.data = {{"a.jsonl", "text", 0.3, "content"}, {"~", "megatron", 2.5, "text"}};
  r.split = "9,0.5,0.5";
  r.chat_template = "plain";
  r.train_on_all_turns = true;
  r.append_eod = false;
  r.eval_interval = 5;
  r.save_interval = 7;
  r.recompute = {"mamba", "moe"};
  r.device = "cuda";
  r.out = "yes";
  r.sample_prompt = "Q: \"why?\" # not a comment\n- not a list";
  // Doubles from a fixed seed: the text must read back bit-identical.
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int i = 0; i < 20; ++i) {
    r.lr = 1e-2 * u(rng) + 1e-9;
    r.min_lr = r.lr * u(rng);
    r.weight_decay = u(rng);
    r.adam_beta1 = 0.999 * u(rng);
    r.adam_beta2 = 0.999 * u(rng);
    r.adam_eps = 1e-6 * u(rng) + 1e-12;
    r.clip_grad = 10 * u(rng);
    r.moe_router_bias_update_rate = 1e-2 * u(rng);
    const Recipe back = load_recipe(write(recipe_to_yaml(r)), {});
    ASSERT_EQ(back, r) << recipe_to_yaml(r);
  }
}

TEST_F(RecipeFile, MissingKeysTakeTheStructDefaults) {
  Recipe expected;
  expected.max_steps = 10;
  EXPECT_EQ(load_recipe(write(kMinimal), {}), expected);
  EXPECT_EQ(load_recipe("", {"max_steps=10"}), expected);
}

TEST_F(RecipeFile, WrongTypesNameFileLineKeyAndValue) {
  expect_names(error_of("max_steps: 10\nlr: fast\n"),
               {"r.yaml:2", "lr", "a finite number", "fast"});
  expect_names(error_of("max_steps: 10\nlr: \"1e-3\"\n"), {"lr", "quoted string"});
  expect_names(error_of("max_steps: 1.5\n"), {"r.yaml:1", "max_steps", "an integer", "1.5"});
  expect_names(error_of("max_steps: 10\nseed: -1\n"), {"seed", "non-negative integer"});
  expect_names(error_of("max_steps: 10\nappend_eod: maybe\n"), {"append_eod", "true or false"});
  expect_names(error_of("max_steps: 10\nmodel: [a, b]\n"), {"model", "a string", "a list"});
  expect_names(error_of("max_steps: 10\nlr: .inf\n"), {"lr", "finite"});
}

TEST_F(RecipeFile, IntegersMayBeWrittenInFloatNotation) {
  const Recipe r = load_recipe(write("train_tokens: 1e9\nseq_length: 2.0e3\n"), {});
  EXPECT_EQ(r.train_tokens, 1000000000);
  EXPECT_EQ(r.seq_length, 2000);
}

TEST_F(RecipeFile, ImpossibleSettingsAreErrorsNamingTheKey) {
  struct Case {
    std::string yaml;
    std::vector<std::string> words;
  };
  const std::vector<Case> cases = {
      {"max_steps: 10\nseq_length: 0\n", {"r.yaml:2", "seq_length", "0"}},
      {"max_steps: 10\nglobal_batch_size: -8\n", {"global_batch_size", "-8"}},
      {"max_steps: 10\nmicro_batch_size: 0\n", {"micro_batch_size"}},
      {"max_steps: 10\nglobal_batch_size: 10\nmicro_batch_size: 4\n",
       {"r.yaml:3", "micro_batch_size", "divisor of global_batch_size (10)", "4"}},
      {"max_steps: 10\ntrain_tokens: 100\n", {"max_steps", "train_tokens", "exactly one"}},
      {"lr: 1e-3\n", {"r.yaml", "max_steps", "train_tokens", "exactly one"}},
      {"max_steps: -1\n", {"max_steps", "-1"}},
      {"max_steps: 10\nlr_schedule: exp\n",
       {"lr_schedule", "cosine, linear, wsd, constant", "exp"}},
      {"max_steps: 10\nlr: 1e-4\nmin_lr: 1e-3\n", {"r.yaml:3", "min_lr", "<= lr"}},
      {"max_steps: 10\nlr: 0\n", {"lr", "> 0"}},
      {"max_steps: 10\nwarmup_steps: 11\n", {"warmup_steps", "10 steps", "11"}},
      // 1000 tokens at 8 × 256 per step need one step.
      {"train_tokens: 1000\nwarmup_steps: 2\n", {"warmup_steps", "1 steps"}},
      {"max_steps: 10\nadam_beta1: 1.0\n", {"adam_beta1", "[0, 1)"}},
      {"max_steps: 10\nadam_beta2: -0.1\n", {"adam_beta2", "[0, 1)"}},
      {"max_steps: 10\nadam_eps: 0\n", {"adam_eps", "> 0"}},
      {"max_steps: 10\nprecision: fp16\n", {"precision", "bf16, fp32", "fp16"}},
      {"max_steps: 10\nsplit: \"98\"\n", {"split", "98"}},
      {"max_steps: 10\nlora_r: 4\n", {"r.yaml:2", "lora_r", "adapter"}},
      {"max_steps: 10\nadapter: lora\nlora_target_linear: true\n", {"adapter", "init_from"}},
      {"max_steps: 10\nadapter: ia3\n", {"r.yaml:2", "adapter", "lora, qlora", "ia3"}},
      {"max_steps: 10\ninit_from: m\nadapter: lora\n", {"lora_target_modules", "none"}},
      {"max_steps: 10\ninit_from: m\nadapter: lora\nlora_target_linear: true\nlora_r: 0\n",
       {"r.yaml:5", "lora_r"}},
      {"max_steps: 10\ninit_from: m\nadapter: lora\nlora_target_linear: true\n"
       "lora_dropout: 1\n",
       {"lora_dropout", "[0, 1)"}},
      {"max_steps: 10\ninit_from: m\nadapter: lora\nlora_target_linear: true\nlora_init: pissa\n",
       {"lora_init", "default, gaussian", "pissa"}},
      {"max_steps: 10\nsample_packing: false\ndata: [a.jsonl]\n",
       {"sample_packing", "chat", "text"}},
      {"max_steps: 10\nsplit: \"1,2,3,4\"\n", {"split"}},
      {"max_steps: 10\nsplit: \"0,0\"\n", {"split", "positive sum"}},
      {"max_steps: 10\nsplit: \"98,-2\"\n", {"split"}},
      {"max_steps: 10\nsplit: \"98,x\"\n", {"split"}},
      {"max_steps: 10\ndata: [{type: text}]\n", {"r.yaml:2", "data.0.path"}},
      {"max_steps: 10\ndata: [{path: a, weight: 0}]\n", {"data.0.weight", "> 0"}},
      {"max_steps: 10\ndata:\n  - path: a\n  - path: b\n    type: parquet\n",
       {"r.yaml:4", "data.1.type", "megatron, text, chat", "parquet"}},
      {"max_steps: 10\ndata: a\n", {"data", "a list"}},
      {"max_steps: 10\nrecompute: [mamba, ssm]\n", {"recompute.1", "mamba, attention", "ssm"}},
      {"max_steps: 10\nrecompute: everything\n", {"recompute", "everything"}},
      {"max_steps: 10\ndevice: tpu\n", {"device", "cpu, cuda", "tpu"}},
      {"max_steps: 10\nchat_template: llama\n", {"chat_template", "llama"}},
      {"max_steps: 10\nwsd_decay_fraction: 1.5\n", {"wsd_decay_fraction", "[0, 1]"}},
      {"max_steps: 10\nkeep_last: 0\n", {"keep_last"}},
      {"max_steps: 10\nmax_steps: 20\n", {"r.yaml:2", "max_steps", "each key once"}},
      {"- a\n- b\n", {"r.yaml", "a map of recipe keys"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.yaml);
    expect_names(error_of(c.yaml), c.words);
  }
}

TEST_F(RecipeFile, UnknownKeySuggestsTheClosestKnownKey) {
  expect_names(error_of("max_steps: 10\nglobal_batchsize: 8\n"),
               {"r.yaml:2", "global_batchsize", "did you mean global_batch_size?", "unknown"});
  expect_names(error_of("max_steps: 10\nlr_warmup_iter: 8\n"), {"did you mean lr_warmup_iters?"});
  expect_names(error_of("max_steps: 10\ndata: [{path: a, wieght: 2}]\n"),
               {"data.0.wieght", "did you mean weight?"});
  const std::string far = error_of("max_steps: 10\nfsdp_offload_params: true\n");
  expect_names(far, {"fsdp_offload_params", "unknown"});
  EXPECT_EQ(far.find("did you mean"), std::string::npos) << far;
}

TEST_F(RecipeFile, ParallelLayoutKeysKeepMegatronNamesAndRejectAdapters) {
  const Recipe r = load_recipe(write("max_steps: 10\ntensor_model_parallel_size: 2\n"
                                     "sequence_parallel: true\n"
                                     "use_distributed_optimizer: true\nddp_bucket_size: 1000\n"),
                               {});
  EXPECT_EQ(r.tensor_model_parallel_size, 2);
  EXPECT_TRUE(r.sequence_parallel);
  EXPECT_TRUE(r.use_distributed_optimizer);
  EXPECT_EQ(r.ddp_bucket_size, 1000);
  EXPECT_EQ(load_recipe(write("max_steps: 10\nexpert_model_parallel_size: 4\n"), {})
                .expert_model_parallel_size,
            4);
  expect_names(error_of("max_steps: 10\nexpert_model_parallel_size: 2\nadapter: lora\n"
                        "init_from: somewhere\n"),
               {"r.yaml", "expert_model_parallel_size", "adapter"});
  expect_names(error_of("max_steps: 10\ntensor_model_parallel_size: 0\n"),
               {"tensor_model_parallel_size"});
  expect_names(error_of("max_steps: 10\ntensor_model_parallel_size: 2\nadapter: lora\n"
                        "init_from: somewhere\n"),
               {"tensor_model_parallel_size", "adapter"});
}

TEST_F(RecipeFile, YamlSyntaxErrorNamesFileAndLine) {
  expect_names(error_of("max_steps: 10\nrecompute: [mamba,\nlr: 3\n"), {"r.yaml:", "YAML"});
  const std::string e = error_of("max_steps: 10\nlr: 1\n  bad: [\n");
  expect_names(e, {"r.yaml:"});
}

TEST_F(RecipeFile, MissingFileIsAnError) {
  EXPECT_THROW(load_recipe(dir_ / "absent.yaml", {}), Error);
}

TEST_F(RecipeFile, DataTypeIsInferredFromThePath) {
  const Recipe r =
      load_recipe(write("max_steps: 10\ndata:\n  - path: a.jsonl\n  - path: b_text_document\n"
                        "    weight: 3\n  - c.jsonl\n"),
                  {});
  ASSERT_EQ(r.data.size(), 3u);
  EXPECT_EQ(r.data[0].type, "text");
  EXPECT_EQ(r.data[1].type, "megatron");
  EXPECT_DOUBLE_EQ(r.data[1].weight, 3.0);
  EXPECT_EQ(r.data[2].path, "c.jsonl");
  EXPECT_EQ(r.data[2].type, "text");
}

TEST_F(RecipeFile, OverridesApplyAfterTheFile) {
  const std::string path =
      write("max_steps: 10\nlr: 3e-4\ndata:\n  - path: a\n    weight: 1\nrecompute: mamba\n");
  const Recipe r = load_recipe(path, {"lr=1e-3", "recompute=[mamba,attention]", "data.0.weight=2",
                                      "data.1.path=b.jsonl", "sample_prompt=Hello, world"});
  EXPECT_DOUBLE_EQ(r.lr, 1e-3);
  EXPECT_EQ(r.recompute, (std::vector<std::string>{"mamba", "attention"}));
  ASSERT_EQ(r.data.size(), 2u);
  EXPECT_DOUBLE_EQ(r.data[0].weight, 2.0);
  EXPECT_EQ(r.data[1].path, "b.jsonl");
  EXPECT_EQ(r.data[1].type, "text");
  EXPECT_EQ(r.sample_prompt, "Hello, world");
  // Later overrides win over earlier ones.
  EXPECT_EQ(load_recipe(path, {"max_steps=5", "max_steps=7"}).max_steps, 7);
}

TEST_F(RecipeFile, OverridesBuildDataWhenTheFileHasNone) {
  const Recipe r = load_recipe("", {"max_steps=3", "data.0.path=corpus", "data.0.weight=0.5"});
  ASSERT_EQ(r.data.size(), 1u);
  EXPECT_EQ(r.data[0].path, "corpus");
  EXPECT_EQ(r.data[0].type, "megatron");
  EXPECT_DOUBLE_EQ(r.data[0].weight, 0.5);
}

TEST_F(RecipeFile, OverrideErrorsNameSetAndTheKey) {
  const std::string path = write("max_steps: 10\ndata: [{path: a}]\n");
  auto error = [&](const std::vector<std::string>& o) {
    try {
      load_recipe(path, o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  expect_names(error({"lr=fast"}), {"--set", "lr", "fast"});
  expect_names(error({"lrr=1"}), {"--set", "lrr", "did you mean lr?"});
  expect_names(error({"lr"}), {"--set", "key=value"});
  expect_names(error({"=3"}), {"--set", "key=value"});
  expect_names(error({"data.0.weight=-1"}), {"--set", "data.0.weight", "> 0"});
  expect_names(error({"data.5.path=x"}), {"--set", "data.5.path", "index <= 1"});
  expect_names(error({"lr.x=1"}), {"--set", "lr.x", "only into data or recompute"});
  expect_names(error({"data.0.path.x=1"}), {"--set", "data.0.path.x", "list or map", "a"});
  expect_names(error({"recompute=[mamba"}), {"--set", "recompute", "a YAML value"});
  expect_names(error({"micro_batch_size=3"}), {"--set", "micro_batch_size", "divisor"});
  // A key the file got wrong is still reported against the file.
  expect_names(error_of("max_steps: 10\nlr: fast\n", {"seed=3"}), {"r.yaml:2", "lr"});
}

TEST_F(RecipeFile, MegatronAliasesMapToTheirKeys) {
  const Recipe r = load_recipe(
      write("train_iters: 100\nlr_warmup_iters: 10\nlr_decay_style: WSD\n"
            "encoder_seq_length: 512\nrecompute_layer_kinds: [moe]\nmin_lr: 0\nclip_grad: 0.5\n"),
      {});
  EXPECT_EQ(r.max_steps, 100);
  EXPECT_EQ(r.warmup_steps, 10);
  EXPECT_EQ(r.lr_schedule, "wsd");
  EXPECT_EQ(r.seq_length, 512);
  EXPECT_EQ(r.recompute, std::vector<std::string>{"moe"});
  EXPECT_DOUBLE_EQ(r.clip_grad, 0.5);
  // Errors use the spelling the recipe used.
  expect_names(error_of("train_iters: 5\nlr_warmup_iters: 6\n"), {"r.yaml:2", "lr_warmup_iters"});
}

TEST_F(RecipeFile, BothSpellingsOfOneKeyAreAnError) {
  expect_names(error_of("max_steps: 10\ntrain_iters: 10\n"),
               {"r.yaml:2", "train_iters", "only one of max_steps and train_iters"});
  // --set of one spelling replaces the file's other spelling.
  EXPECT_EQ(load_recipe(write("train_iters: 10\n"), {"max_steps=4"}).max_steps, 4);
}

TEST_F(RecipeFile, MegatronDataPathBecomesMegatronSources) {
  const Recipe blend =
      load_recipe(write("max_steps: 1\ndata_path: [\"0.7\", /d/a_text, \"0.3\", /d/b_text]\n"), {});
  ASSERT_EQ(blend.data.size(), 2u);
  EXPECT_EQ(blend.data[0].path, "/d/a_text");
  EXPECT_DOUBLE_EQ(blend.data[0].weight, 0.7);
  EXPECT_EQ(blend.data[1].path, "/d/b_text");
  EXPECT_DOUBLE_EQ(blend.data[1].weight, 0.3);
  EXPECT_EQ(blend.data[1].type, "megatron");

  const Recipe one = load_recipe(write("max_steps: 1\ndata_path: /d/corpus.jsonl\n"), {});
  ASSERT_EQ(one.data.size(), 1u);
  EXPECT_EQ(one.data[0].path, "/d/corpus.jsonl");
  EXPECT_EQ(one.data[0].type, "megatron");  // Megatron's data_path is always indexed data
  EXPECT_DOUBLE_EQ(one.data[0].weight, 1.0);

  const Recipe spaced = load_recipe(write("max_steps: 1\ndata_path: 2 /d/a 1 /d/b\n"), {});
  ASSERT_EQ(spaced.data.size(), 2u);
  EXPECT_DOUBLE_EQ(spaced.data[1].weight, 1.0);

  const Recipe plain = load_recipe(write("max_steps: 1\ndata_path: [/d/a, /d/b]\n"), {});
  ASSERT_EQ(plain.data.size(), 2u);
  EXPECT_EQ(plain.data[1].path, "/d/b");

  expect_names(error_of("max_steps: 1\ndata_path: [\"0.7\", /d/a, /d/b]\n"),
               {"r.yaml:2", "data_path", "weight, prefix pairs"});
  expect_names(error_of("max_steps: 1\ndata_path: [\"0\", /d/a]\n"), {"data_path.0.weight"});
  expect_names(error_of("max_steps: 1\ndata: [{path: a}]\ndata_path: b\n"),
               {"r.yaml:3", "only one of data and data_path"});
}

TEST_F(RecipeFile, RecomputeGranularityFollowsMegatron) {
  EXPECT_EQ(load_recipe(write("max_steps: 1\nrecompute_granularity: full\n"), {}).recompute,
            std::vector<std::string>{"all"});
  EXPECT_EQ(load_recipe(write("max_steps: 1\nrecompute_granularity: selective\n"), {}).recompute,
            std::vector<std::string>{"attention"});
  EXPECT_EQ(load_recipe(write("max_steps: 1\nrecompute_granularity: selective\n"
                              "recompute_layer_kinds: [mlp]\n"),
                        {})
                .recompute,
            std::vector<std::string>{"mlp"});
  EXPECT_TRUE(
      load_recipe(write("max_steps: 1\nrecompute_granularity: null\n"), {}).recompute.empty());
  expect_names(error_of("max_steps: 1\nrecompute_granularity: half\n"),
               {"recompute_granularity", "full, selective", "half"});
}

TEST_F(RecipeFile, BuiltInRecipeNeedsARunLength) {
  try {
    load_recipe("", {});
    FAIL() << "no error";
  } catch (const Error& e) {
    expect_names(e.what(), {"built-in recipe", "max_steps", "train_tokens"});
  }
}

}  // namespace
}  // namespace nh
