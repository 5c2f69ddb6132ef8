#include "train/first_run.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "io/atomic_file.h"
#include "model/presets.h"

namespace nh {

namespace {

// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the rest
// are shifted above U+0100, so every byte is one visible character of the vocabulary.
std::string byte_char(int b) {
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  int cp = b;
  if (!printable) {
    int n = 0;
    for (int i = 0; i < b; ++i)
      if (!((i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

std::string sentence(Rng& rng) {
  static const char* subjects[] = {"the cat", "a dog", "my friend", "the old man", "a small bird",
                                   "the teacher", "our neighbour", "the child"};
  static const char* verbs[] = {"sees", "likes", "finds", "follows", "watches", "helps"};
  static const char* objects[] = {"the red ball", "a green tree", "the river", "a quiet house",
                                  "the morning sun", "a long road"};
  auto pick = [&](const auto& list) { return list[rng.next() % (sizeof(list) / sizeof(list[0]))]; };
  if (rng.uniform() < 0.4) {
    const int a = int(rng.next() % 50), b = int(rng.next() % 50);
    return std::to_string(a) + " plus " + std::to_string(b) + " is " + std::to_string(a + b) + ".";
  }
  std::string s = std::string(pick(subjects)) + " " + pick(verbs) + " " + pick(objects) + ".";
  s[0] = char(std::toupper(s[0]));
  return s;
}

}  // namespace

std::string byte_level_tokenizer_json() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  nlohmann::json added = nlohmann::json::array();
  const char* specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  for (int i = 0; i < 3; ++i)
    added.push_back({{"id", 256 + i}, {"content", specials[i]}, {"single_word", false},
                     {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                     {"special", true}});
  nlohmann::json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
        {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder",
       {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
        {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
        {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  return j.dump(1) + "\n";
}

Recipe first_run_recipe(const std::string& dir) {
  std::filesystem::create_directories(dir);
  Rng rng(2024);
  std::string corpus;
  for (int doc = 0; doc < 4000; ++doc) {
    std::string text;
    const int n = 1 + int(rng.next() % 4);
    for (int i = 0; i < n; ++i) {
      if (i) text += ' ';
      text += sentence(rng);
    }
    corpus += nlohmann::json({{"text", text}}).dump() + "\n";
  }
  write_file_atomic(dir + "/corpus.jsonl", corpus);
  write_file_atomic(dir + "/tokenizer.json", byte_level_tokenizer_json());
  // tiny-hybrid with room for the byte tokens and the three specials.
  ModelConfig config = preset_config("tiny-hybrid");
  config.vocab_size = 264;
  write_file_atomic(dir + "/model-config.json", to_hf_json(config).dump(2) + "\n");
  Recipe r;
  r.model = dir + "/model-config.json";
  r.tokenizer = dir + "/tokenizer.json";
  r.data = {DataSourceSpec{dir + "/corpus.jsonl", "text", 1.0, "text"}};
  r.seq_length = 128;
  r.global_batch_size = 8;
  r.micro_batch_size = 8;
  r.max_steps = 300;
  r.lr = 3e-3;
  r.min_lr = 3e-4;
  r.warmup_steps = 20;
  r.weight_decay = 0.01;
  r.precision = "fp32";
  r.split = "98,2";
  r.eval_interval = 100;
  r.eval_iters = 2;
  r.log_interval = 25;
  r.sample_prompt = "The cat";
  return r;
}

}  // namespace nh
