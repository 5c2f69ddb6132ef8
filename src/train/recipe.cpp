#include "train/recipe.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "core/error.h"
#include "io/chat_format.h"
#include "train/recipe_keys.h"

namespace nh {
namespace {

using namespace recipe_keys;

constexpr const char* kBuiltIn = "built-in recipe";
constexpr const char* kSet = "--set";
// Sizes are bounded so that global_batch_size · seq_length fits int64 with room to spare.
constexpr int64_t kMaxSize = 2147483647;

const std::array<const char*, 4> kDataKeys = {"path", "type", "weight", "text_key"};
const std::array<const char*, 4> kSchedules = {"cosine", "linear", "wsd", "constant"};
const std::array<const char*, 5> kRecomputeKinds = {"mamba", "attention", "mlp", "moe", "all"};

std::string in_quotes(const std::string& s) { return "\"" + s + "\""; }

std::string format_double(double x) {
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, res.ptr);
}

// What a node holds, for "found ..." in messages.
std::string describe(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "nothing (null)";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a map";
  std::string s = n.Scalar();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return n.Tag() == "!" ? in_quotes(s) + " (a quoted string)" : s;
}

template <typename List>
std::string one_of(const List& names) {
  std::string text = "one of ";
  for (size_t i = 0; i < names.size(); ++i) text += (i ? ", " : "") + std::string(names[i]);
  return text;
}

template <typename List>
bool contains(const List& names, const std::string& value) {
  return std::find(names.begin(), names.end(), value) != names.end();
}

// A plain (unquoted) scalar: quoted "3" is a string in YAML, not a number.
bool is_plain_scalar(const YAML::Node& n) { return n.IsScalar() && n.Tag() != "!"; }

int64_t read_int(const YAML::Node& n, const std::string& where, const std::string& key) {
  if (is_plain_scalar(n)) {
    int64_t v = 0;
    if (YAML::convert<int64_t>::decode(n, v)) return v;
    // 1e12 and 2.0 are integers written as floats (common for token counts).
    double d = 0;
    if (YAML::convert<double>::decode(n, d) && std::isfinite(d) && d == std::floor(d) &&
        std::fabs(d) < 9.2e18)
      return static_cast<int64_t>(d);
  }
  throw Error(where, key, "an integer", describe(n));
}

uint64_t read_uint(const YAML::Node& n, const std::string& where, const std::string& key) {
  if (is_plain_scalar(n) && n.Scalar().find('-') == std::string::npos) {
    uint64_t v = 0;
    if (YAML::convert<uint64_t>::decode(n, v)) return v;
  }
  throw Error(where, key, "a non-negative integer", describe(n));
}

double read_double(const YAML::Node& n, const std::string& where, const std::string& key) {
  double d = 0;
  if (is_plain_scalar(n) && YAML::convert<double>::decode(n, d) && std::isfinite(d)) return d;
  throw Error(where, key, "a finite number", describe(n));
}

bool read_bool(const YAML::Node& n, const std::string& where, const std::string& key) {
  bool b = false;
  if (is_plain_scalar(n) && YAML::convert<bool>::decode(n, b)) return b;
  throw Error(where, key, "true or false", describe(n));
}

// Any scalar is a string (`out: 2024` names a directory); null is the empty string.
std::string read_string(const YAML::Node& n, const std::string& where, const std::string& key) {
  if (n.IsNull()) return "";
  if (n.IsScalar()) return n.Scalar();
  throw Error(where, key, "a string", describe(n));
}

// Reads a recipe tree into a Recipe and checks it, remembering where each key was given so
// that every message names the file and line, or --set.
class RecipeReader {
 public:
  RecipeReader(std::string file, std::set<std::string> from_set)
      : file_(std::move(file)), from_set_(std::move(from_set)) {}

  Recipe read(const YAML::Node& root) {
    Recipe r;
    std::string granularity;
    std::string granularity_where;
    for (const auto& kv : root) {
      if (!kv.first.IsScalar())
        throw Error(file_ + ":" + std::to_string(kv.first.Mark().line + 1), "recipe", "plain keys",
                    describe(kv.first));
      const std::string name = kv.first.Scalar();
      const std::string where = where_of(name, kv.first);
      const std::string key = canonical_key(name);
      if (key.empty())
        throw Error(where, name, known_key_text(name, top_level_names(), "recipe"),
                    "an unknown key");
      if (spelled_.count(key)) {
        const std::string& other = spelled_[key];
        throw Error(where, name,
                    other == name ? "each key once" : "only one of " + other + " and " + name,
                    other == name ? "it twice" : "both");
      }
      spelled_[key] = name;
      where_[key] = where;
      const YAML::Node& value = kv.second;
      if (key == kGranularity) {
        granularity = read_string(value, where, name);
        granularity_where = where;
      } else if (name == "data_path") {
        r.data = read_data_path(value, where, name);
      } else {
        read_field(r, *find_field(key), value, where, name);
      }
    }
    apply_granularity(r, granularity, granularity_where);
    return r;
  }

  void validate(const Recipe& r) const {
    positive(r.seq_length, "seq_length");
    positive(r.global_batch_size, "global_batch_size");
    positive(r.micro_batch_size, "micro_batch_size");
    need(r.global_batch_size % r.micro_batch_size == 0, "micro_batch_size",
         "a divisor of global_batch_size (" + std::to_string(r.global_batch_size) + ")",
         std::to_string(r.micro_batch_size));
    non_negative(r.max_steps, "max_steps");
    non_negative(r.train_tokens, "train_tokens");
    if ((r.max_steps > 0) == (r.train_tokens > 0)) {
      const char* at = where_.count("max_steps") ? "max_steps" : "train_tokens";
      throw Error(where(at), name("max_steps") + "/" + name("train_tokens"),
                  "exactly one of " + name("max_steps") + " and " + name("train_tokens") + " > 0",
                  name("max_steps") + "=" + std::to_string(r.max_steps) + ", " +
                      name("train_tokens") + "=" + std::to_string(r.train_tokens));
    }
    need(contains(kSchedules, r.lr_schedule), "lr_schedule", one_of(kSchedules),
         in_quotes(r.lr_schedule));
    need(r.lr > 0, "lr", "a number > 0", format_double(r.lr));
    need(r.min_lr >= 0, "min_lr", "a number >= 0", format_double(r.min_lr));
    need(r.min_lr <= r.lr, "min_lr", "a number <= lr (" + format_double(r.lr) + ")",
         format_double(r.min_lr));
    non_negative(r.warmup_steps, "warmup_steps");
    // With train_tokens the step count is what the token budget needs, rounded up.
    const int64_t tokens_per_step = r.global_batch_size * r.seq_length;
    const int64_t steps = r.max_steps > 0 ? r.max_steps
                                          : r.train_tokens / tokens_per_step +
                                                (r.train_tokens % tokens_per_step != 0 ? 1 : 0);
    need(r.warmup_steps <= steps, "warmup_steps",
         "at most the run's " + std::to_string(steps) + " steps", std::to_string(r.warmup_steps));
    need(r.wsd_decay_fraction >= 0 && r.wsd_decay_fraction <= 1, "wsd_decay_fraction",
         "a number in [0, 1]", format_double(r.wsd_decay_fraction));
    need(r.weight_decay >= 0, "weight_decay", "a number >= 0", format_double(r.weight_decay));
    need(r.adam_beta1 >= 0 && r.adam_beta1 < 1, "adam_beta1", "a number in [0, 1)",
         format_double(r.adam_beta1));
    need(r.adam_beta2 >= 0 && r.adam_beta2 < 1, "adam_beta2", "a number in [0, 1)",
         format_double(r.adam_beta2));
    need(r.adam_eps > 0, "adam_eps", "a number > 0", format_double(r.adam_eps));
    need(r.clip_grad >= 0, "clip_grad", "a number >= 0 (0 disables clipping)",
         format_double(r.clip_grad));
    need(r.hybrid_override_pattern.empty() || r.init_from.empty(), "hybrid_override_pattern",
         "empty when init_from is set (a checkpoint's layers are fixed)",
         in_quotes(r.hybrid_override_pattern));
    need(r.precision == "bf16" || r.precision == "fp32", "precision", "one of bf16, fp32",
         in_quotes(r.precision));
    check_split(r.split);
    try {
      chat_template_by_name(r.chat_template);
    } catch (const Error& e) {
      throw Error(where("chat_template") + ": " + name("chat_template") + ": " + e.what());
    }
    non_negative(r.eval_interval, "eval_interval");
    positive(r.eval_iters, "eval_iters");
    non_negative(r.save_interval, "save_interval");
    positive(r.keep_last, "keep_last");
    positive(r.log_interval, "log_interval");
    need(r.moe_router_bias_update_rate >= 0, "moe_router_bias_update_rate",
         "a number >= 0 (0 disables)", format_double(r.moe_router_bias_update_rate));
    non_negative(r.max_skipped_steps, "max_skipped_steps");
    need(r.device == "cpu" || r.device == "cuda" || r.device == "auto", "device",
         "one of cpu, cuda, auto", in_quotes(r.device));
    if (!r.sample_packing)
      for (const DataSourceSpec& d : r.data)
        need(d.type == "chat", "sample_packing",
             "true unless every data source is chat (pretraining rows are always packed)",
             "false with a " + d.type + " source");
    validate_parallel(r);
    validate_adapter(r);
  }

  // The layout keys alone; whether the world size fits them is checked at launch.
  void validate_parallel(const Recipe& r) const {
    positive(r.tensor_model_parallel_size, "tensor_model_parallel_size");
    positive(r.expert_model_parallel_size, "expert_model_parallel_size");
    positive(r.ddp_bucket_size, "ddp_bucket_size");
    need(r.expert_model_parallel_size == 1 || r.adapter.empty(), "expert_model_parallel_size",
         "1 with an adapter (expert parallelism trains whole models for now)",
         std::to_string(r.expert_model_parallel_size));
    need(r.tensor_model_parallel_size == 1 || r.adapter.empty(), "tensor_model_parallel_size",
         "1 with an adapter (tensor parallelism trains whole models for now)",
         std::to_string(r.tensor_model_parallel_size));
  }

  // The adapter keys: sensible values, and set only with an adapter on a pretrained model.
  void validate_adapter(const Recipe& r) const {
    need(r.adapter.empty() || r.adapter == "lora" || r.adapter == "qlora", "adapter",
         "one of lora, qlora (or unset)", in_quotes(r.adapter));
    if (r.adapter.empty()) {
      for (const char* key : kAdapterKeys)
        need(!where_.count(key), key, "set only with adapter: lora or qlora", "adapter unset");
      return;
    }
    need(!r.init_from.empty(), "adapter", "init_from a pretrained model to adapt",
         "init_from unset");
    positive(r.lora_r, "lora_r");
    need(r.lora_alpha > 0, "lora_alpha", "a number > 0", format_double(r.lora_alpha));
    need(r.lora_dropout >= 0 && r.lora_dropout < 1, "lora_dropout", "a number in [0, 1)",
         format_double(r.lora_dropout));
    need(!(r.load_in_4bit && r.load_in_8bit), "load_in_8bit", "not with load_in_4bit",
         "both set");
    need(!(r.adapter == "qlora" && r.load_in_8bit), "load_in_8bit",
         "unset with adapter: qlora (4-bit NF4; 8-bit is adapter: lora with load_in_8bit)", "true");
    need(r.lora_init == "default" || r.lora_init == "gaussian", "lora_init",
         "one of default, gaussian", in_quotes(r.lora_init));
    need(!r.lora_target_modules.empty() || !r.lora_target_modules_regex.empty() ||
             r.lora_target_linear || !r.lora_target_parameters.empty(),
         "lora_target_modules",
         "some target: lora_target_modules, lora_target_linear or lora_target_parameters",
         "none");
  }

 private:
  // Where a top-level key was given: --set, the file and line, or nowhere (the file or the
  // built-in recipe, for a default).
  std::string where_of(const std::string& name, const YAML::Node& key_node) const {
    if (from_set_.count(name)) return kSet;
    return file_ + ":" + std::to_string(key_node.Mark().line + 1);
  }
  std::string where(const std::string& key) const {
    auto it = where_.find(key);
    return it == where_.end() ? file_ : it->second;
  }
  std::string name(const std::string& key) const {
    auto it = spelled_.find(key);
    return it == spelled_.end() ? key : it->second;
  }
  void need(bool ok, const std::string& key, const std::string& expected,
            const std::string& found) const {
    if (!ok) throw Error(where(key), name(key), expected, found);
  }
  void positive(int64_t v, const std::string& key) const {
    need(v > 0 && v <= kMaxSize, key, "an integer in [1, " + std::to_string(kMaxSize) + "]",
         std::to_string(v));
  }
  void non_negative(int64_t v, const std::string& key) const {
    need(v >= 0, key, "an integer >= 0", std::to_string(v));
  }

  // Megatron's split string: "train,validation[,test]" weights, normalised by their sum.
  void check_split(const std::string& split) const {
    const char* expected = "two or three comma-separated numbers >= 0 with a positive sum";
    std::vector<double> parts;
    std::stringstream ss(split);
    std::string item;
    while (std::getline(ss, item, ',')) {
      const auto b = item.find_first_not_of(" \t");
      const auto e = item.find_last_not_of(" \t");
      const std::string t = b == std::string::npos ? "" : item.substr(b, e - b + 1);
      double v = 0;
      const auto res = std::from_chars(t.data(), t.data() + t.size(), v);
      need(!t.empty() && res.ec == std::errc() && res.ptr == t.data() + t.size() &&
               std::isfinite(v) && v >= 0,
           "split", expected, in_quotes(split));
      parts.push_back(v);
    }
    if (!split.empty() && split.back() == ',') parts.clear();
    double sum = 0;
    for (double v : parts) sum += v;
    need((parts.size() == 2 || parts.size() == 3) && sum > 0, "split", expected, in_quotes(split));
  }

  void read_field(Recipe& r, const Field& f, const YAML::Node& v, const std::string& where,
                  const std::string& name) const {
    std::visit(
        [&](auto member) {
          using T = std::remove_reference_t<decltype(r.*member)>;
          if constexpr (std::is_same_v<T, std::string>) {
            std::string s = read_string(v, where, name);
            // Megatron writes the WSD schedule in capitals.
            if (name == "lr_decay_style")
              std::transform(s.begin(), s.end(), s.begin(),
                             [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
            r.*member = s;
          } else if constexpr (std::is_same_v<T, int64_t>) {
            r.*member = read_int(v, where, name);
          } else if constexpr (std::is_same_v<T, uint64_t>) {
            r.*member = read_uint(v, where, name);
          } else if constexpr (std::is_same_v<T, double>) {
            r.*member = read_double(v, where, name);
          } else if constexpr (std::is_same_v<T, bool>) {
            r.*member = read_bool(v, where, name);
          } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
            if (std::string_view(f.key) == "recompute")
              r.*member = read_recompute(v, where, name);
            else if (std::string_view(f.key) == "lora_target_modules" && v.IsScalar())
              r.lora_target_modules_regex = read_string(v, where, name);  // PEFT's string form
            else
              r.*member = read_names(v, where, name);
          } else {
            r.*member = read_data(v, where, name);
          }
        },
        f.member);
  }

  // A list of names (a single name is a list of one).
  std::vector<std::string> read_names(const YAML::Node& v, const std::string& where,
                                      const std::string& name) const {
    std::vector<std::string> names;
    if (v.IsNull()) return names;
    if (v.IsScalar()) return {v.Scalar()};
    if (!v.IsSequence()) throw Error(where, name, "a list of names", describe(v));
    for (size_t i = 0; i < v.size(); ++i)
      names.push_back(read_string(v[i], where, name + "." + std::to_string(i)));
    return names;
  }

  // A list of layer kinds, or one kind as a plain string.
  std::vector<std::string> read_recompute(const YAML::Node& v, const std::string& where,
                                          const std::string& name) const {
    std::vector<std::string> kinds;
    if (v.IsNull()) return kinds;
    if (v.IsScalar()) {
      kinds.push_back(v.Scalar());
    } else if (v.IsSequence()) {
      for (size_t i = 0; i < v.size(); ++i) {
        if (!v[i].IsScalar())
          throw Error(where, name + "." + std::to_string(i), one_of(kRecomputeKinds),
                      describe(v[i]));
        kinds.push_back(v[i].Scalar());
      }
    } else {
      throw Error(where, name, "a layer kind or a list of them", describe(v));
    }
    for (size_t i = 0; i < kinds.size(); ++i)
      if (!contains(kRecomputeKinds, kinds[i]))
        throw Error(where, v.IsSequence() ? name + "." + std::to_string(i) : name,
                    one_of(kRecomputeKinds), in_quotes(kinds[i]));
    return kinds;
  }

  std::string entry_where(const std::string& where, const YAML::Node& n) const {
    if (where == kSet || n.Mark().is_null()) return where;
    return file_ + ":" + std::to_string(n.Mark().line + 1);
  }

  // `data`: a list of {path, type, weight, text_key} maps (or bare paths).
  std::vector<DataSourceSpec> read_data(const YAML::Node& v, const std::string& where,
                                        const std::string& name) const {
    std::vector<DataSourceSpec> data;
    if (v.IsNull()) return data;
    if (!v.IsSequence())
      throw Error(where, name, "a list of {path, type, weight, text_key} entries", describe(v));
    for (size_t i = 0; i < v.size(); ++i) {
      const YAML::Node& e = v[i];
      const std::string at = entry_where(where, e);
      const std::string prefix = name + "." + std::to_string(i);
      DataSourceSpec spec;
      bool has_type = false;
      if (e.IsScalar()) {
        spec.path = e.Scalar();
      } else if (e.IsMap()) {
        std::set<std::string> seen;
        for (const auto& kv : e) {
          if (!kv.first.IsScalar()) throw Error(at, prefix, "plain keys", describe(kv.first));
          const std::string k = kv.first.Scalar();
          const std::string field = prefix + "." + k;
          const std::string kat = entry_where(where, kv.first);
          if (!seen.insert(k).second) throw Error(kat, field, "each key once", "both");
          if (k == "path") {
            spec.path = read_string(kv.second, kat, field);
          } else if (k == "type") {
            spec.type = read_string(kv.second, kat, field);
            has_type = true;
          } else if (k == "weight") {
            spec.weight = read_double(kv.second, kat, field);
          } else if (k == "text_key") {
            spec.text_key = read_string(kv.second, kat, field);
          } else {
            throw Error(kat, field, known_key_text(k, kDataKeys, "data entry"), "an unknown key");
          }
        }
      } else {
        throw Error(at, prefix, "a {path, type, weight, text_key} map or a path", describe(e));
      }
      check_source(spec, has_type, at, prefix);
      data.push_back(spec);
    }
    return data;
  }

  void check_source(DataSourceSpec& spec, bool has_type, const std::string& at,
                    const std::string& prefix) const {
    if (spec.path.empty()) throw Error(at, prefix + ".path", "a data path", "none");
    if (!has_type) {
      spec.type = spec.path.ends_with(".jsonl") ? "text" : "megatron";
    }
    const std::array<const char*, 3> types = {"megatron", "text", "chat"};
    if (!contains(types, spec.type))
      throw Error(at, prefix + ".type", one_of(types), in_quotes(spec.type));
    if (!(spec.weight > 0))
      throw Error(at, prefix + ".weight", "a number > 0", format_double(spec.weight));
    if (spec.text_key.empty()) throw Error(at, prefix + ".text_key", "a field name", "\"\"");
  }

  // Megatron's --data-path: "PREFIX", [PREFIX, ...] or [WEIGHT, PREFIX, WEIGHT, PREFIX, ...]
  // (as a list or one whitespace-separated string).
  std::vector<DataSourceSpec> read_data_path(const YAML::Node& v, const std::string& where,
                                             const std::string& name) const {
    std::vector<std::string> items;
    if (v.IsScalar()) {
      std::stringstream ss(v.Scalar());
      for (std::string item; ss >> item;) items.push_back(item);
    } else if (v.IsSequence()) {
      for (size_t i = 0; i < v.size(); ++i)
        items.push_back(read_string(v[i], where, name + "." + std::to_string(i)));
    }
    if (items.empty())
      throw Error(where, name, "a prefix, or a list of prefixes or of weight, prefix pairs",
                  describe(v));
    auto weight_of = [](const std::string& s, double* w) {
      const auto res = std::from_chars(s.data(), s.data() + s.size(), *w);
      return res.ec == std::errc() && res.ptr == s.data() + s.size();
    };
    double w = 0;
    size_t numeric = 0;
    for (size_t i = 0; i < items.size(); i += 2) numeric += weight_of(items[i], &w) ? 1 : 0;
    const bool weighted = items.size() % 2 == 0 && numeric == items.size() / 2;
    if (!weighted && numeric > 0 && items.size() > 1)
      throw Error(where, name, "weight, prefix pairs (an even count, weights first)",
                  std::to_string(items.size()) + " items");
    std::vector<DataSourceSpec> data;
    for (size_t i = 0; i < items.size(); i += weighted ? 2 : 1) {
      DataSourceSpec spec;
      spec.type = "megatron";
      if (weighted) {
        weight_of(items[i], &spec.weight);
        spec.path = items[i + 1];
      } else {
        spec.path = items[i];
      }
      check_source(spec, true, where, name + "." + std::to_string(weighted ? i / 2 : i));
      data.push_back(spec);
    }
    return data;
  }

  // full: every layer (Megatron recomputes whole layers); selective: the listed kinds, or
  // attention alone as Megatron's default recompute_modules ([core_attn]) does.
  void apply_granularity(Recipe& r, const std::string& g, const std::string& where) const {
    if (g.empty() || g == "none") return;
    if (g == "full") {
      r.recompute = {"all"};
    } else if (g == "selective") {
      if (r.recompute.empty()) r.recompute = {"attention"};
    } else {
      throw Error(where, name(kGranularity), "one of full, selective, none", in_quotes(g));
    }
  }

  std::string file_;
  std::set<std::string> from_set_;
  std::map<std::string, std::string> spelled_;  // key -> spelling used
  std::map<std::string, std::string> where_;    // key -> where it was given
};

YAML::Node parse_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "recipe", "a readable YAML file", std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  YAML::Node root;
  try {
    root = YAML::Load(text.str());
  } catch (const YAML::Exception& e) {
    throw Error(path + ":" + std::to_string(e.mark.line + 1), "YAML", "valid YAML syntax", e.msg);
  }
  if (root.IsNull()) return YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw Error(path, "recipe", "a map of recipe keys", describe(root));
  return root;
}

bool is_index(const std::string& s) {
  return !s.empty() && s.size() < 10 &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

// Sets parts[i..] under `node`, creating maps and lists on the way; a list index may be one
// past the end to append.
void set_path(YAML::Node node, const std::vector<std::string>& parts, size_t i,
              const YAML::Node& value, const std::string& key) {
  const std::string& part = parts[i];
  const bool last = i + 1 == parts.size();
  const std::string at = [&] {
    std::string s = parts[0];
    for (size_t j = 1; j <= i; ++j) s += "." + parts[j];
    return s;
  }();
  if (node.IsSequence()) {
    if (!is_index(part) || std::stoul(part) > node.size())
      throw Error(kSet, key,
                  "a list index <= " + std::to_string(node.size()) + " at " + in_quotes(at),
                  in_quotes(part));
    const size_t idx = std::stoul(part);
    if (idx == node.size()) node.push_back(YAML::Node(YAML::NodeType::Map));
    if (last) {
      node[idx] = value;
    } else {
      set_path(node[idx], parts, i + 1, value, key);
    }
    return;
  }
  if (!node.IsMap() && !node.IsNull())
    throw Error(kSet, key, "a list or map at " + in_quotes(at.substr(0, at.rfind('.'))),
                describe(node));
  if (last) {
    node[part] = value;
    return;
  }
  YAML::Node child = node[part];
  if (!child.IsDefined() || child.IsNull())
    node[part] =
        YAML::Node(is_index(parts[i + 1]) ? YAML::NodeType::Sequence : YAML::NodeType::Map);
  set_path(node[part], parts, i + 1, value, key);
}

// Applies one "key=value" to the tree; `from_set` gets the top-level key.
void apply_override(YAML::Node& root, const std::string& text, std::set<std::string>& from_set) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw Error(kSet, "override", "key=value", in_quotes(text));
  const std::string key = text.substr(0, eq);
  const std::string value_text = text.substr(eq + 1);
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string p; std::getline(ss, p, '.');) {
    if (p.empty()) throw Error(kSet, key, "a key path such as data.0.weight", in_quotes(key));
    parts.push_back(p);
  }
  if (key.back() == '.') throw Error(kSet, key, "a key path such as data.0.weight", in_quotes(key));
  const std::string canonical = canonical_key(parts[0]);
  if (canonical.empty())
    throw Error(kSet, parts[0], known_key_text(parts[0], top_level_names(), "recipe"),
                "an unknown key");
  if (parts.size() > 1 && canonical != "data" && canonical != "recompute")
    throw Error(kSet, key, "a path only into data or recompute (the keys that hold lists)",
                in_quotes(key));
  YAML::Node value;
  try {
    value = YAML::Load(value_text);
  } catch (const YAML::Exception& e) {
    throw Error(kSet, key, "a YAML value", in_quotes(value_text) + " (" + e.msg + ")");
  }
  if (parts.size() == 1) {
    // The override replaces the file's key in whatever spelling the file used.
    for (const std::string_view other : top_level_names())
      if (other != parts[0] && canonical_key(other) == canonical) root.remove(std::string(other));
  }
  set_path(root, parts, 0, value, key);
  from_set.insert(parts[0]);
}

}  // namespace

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  YAML::Node root = path.empty() ? YAML::Node(YAML::NodeType::Map) : parse_file(path);
  std::set<std::string> from_set;
  for (const std::string& o : overrides) apply_override(root, o, from_set);
  RecipeReader reader(path.empty() ? kBuiltIn : path, std::move(from_set));
  const Recipe recipe = reader.read(root);
  reader.validate(recipe);
  return recipe;
}

std::string recipe_to_yaml(const Recipe& recipe) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  for (const Field& f : kFields) {
    if (recipe.adapter.empty() && contains(kAdapterKeys, f.key)) continue;
    out << YAML::Key << f.key << YAML::Value;
    std::visit(
        [&](auto member) {
          const auto& v = recipe.*member;
          using T = std::remove_cvref_t<decltype(v)>;
          if constexpr (std::is_same_v<T, double>) {
            // Shortest text that reads back to the same double.
            out << format_double(v);
          } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
            if (std::string_view(f.key) == "lora_target_modules" &&
                !recipe.lora_target_modules_regex.empty()) {
              out << recipe.lora_target_modules_regex;
              return;
            }
            out << YAML::Flow << YAML::BeginSeq;
            for (const std::string& s : v) out << s;
            out << YAML::EndSeq;
          } else if constexpr (std::is_same_v<T, std::vector<DataSourceSpec>>) {
            if (v.empty()) out << YAML::Flow;
            out << YAML::BeginSeq;
            for (const DataSourceSpec& d : v) {
              out << YAML::BeginMap << YAML::Key << "path" << YAML::Value << d.path << YAML::Key
                  << "type" << YAML::Value << d.type << YAML::Key << "weight" << YAML::Value
                  << format_double(d.weight) << YAML::Key << "text_key" << YAML::Value << d.text_key
                  << YAML::EndMap;
            }
            out << YAML::EndSeq;
          } else {
            out << v;
          }
        },
        f.member);
  }
  out << YAML::EndMap;
  NH_CHECK(out.good(), "recipe_to_yaml: " + out.GetLastError());
  return std::string(out.c_str()) + "\n";
}

}  // namespace nh
