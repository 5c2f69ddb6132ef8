#include "io/tokenizer/post_processor.h"

#include <map>
#include <string>

namespace nh::tok {

namespace {

// The ids around the sequence: prefix + ids + suffix.
class Wrap : public PostProcessor {
 public:
  Wrap(std::vector<int32_t> prefix, std::vector<int32_t> suffix)
      : prefix_(std::move(prefix)), suffix_(std::move(suffix)) {}
  void process(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), prefix_.begin(), prefix_.end());
    ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  }

 private:
  std::vector<int32_t> prefix_, suffix_;
};

class NoChange : public PostProcessor {
 public:
  void process(std::vector<int32_t>&) const override {}
};

class SequencePost : public PostProcessor {
 public:
  explicit SequencePost(std::vector<std::unique_ptr<PostProcessor>> parts)
      : parts_(std::move(parts)) {}
  void process(std::vector<int32_t>& ids) const override {
    for (const auto& p : parts_) p->process(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

// One template item: a sequence ($A / $B) or the name of a special token.
struct Item {
  bool sequence = false;
  std::string special;
};

// An item of a template: {"Sequence": {"id": "A"}}, {"SpecialToken": {"id": "<s>"}}, or the
// string form "$A", "$B:1", "<s>", "<s>:0".
Item parse_item(const json& v, const JsonPath& at) {
  if (v.is_string()) {
    std::string s = v.get<std::string>();
    if (const size_t colon = s.rfind(':'); colon != std::string::npos && colon > 0)
      s = s.substr(0, colon);
    if (s.starts_with("$")) return {true, ""};
    return {false, s};
  }
  if (optional(v, "Sequence")) return {true, ""};
  if (const json* sp = optional(v, "SpecialToken"))
    return {false, get_string(*sp, "id", at / "SpecialToken")};
  at.fail("{\"Sequence\": ...} or {\"SpecialToken\": ...}", describe(v));
}

std::unique_ptr<PostProcessor> template_processing(const json& v, const JsonPath& at) {
  std::map<std::string, std::vector<int32_t>> specials;
  if (const json* list = optional(v, "special_tokens")) {
    if (!list->is_object()) (at / "special_tokens").fail("an object", describe(*list));
    for (const auto& [name, tok] : list->items()) {
      const JsonPath sat = at / "special_tokens" / name;
      const json& ids = require(tok, "ids", sat);
      if (!ids.is_array()) (sat / "ids").fail("a list of ids", describe(ids));
      std::vector<int32_t> out;
      for (size_t i = 0; i < ids.size(); ++i) {
        if (!ids[i].is_number_integer() || ids[i].get<int64_t>() < 0)
          (sat / "ids")[i].fail("a token id", describe(ids[i]));
        out.push_back(static_cast<int32_t>(ids[i].get<int64_t>()));
      }
      specials[name] = std::move(out);
    }
  }
  // Both templates must name only known special tokens, as the library checks on load.
  std::vector<int32_t> prefix, suffix;
  for (const char* which : {"single", "pair"}) {
    const json* items = optional(v, which);
    if (!items) continue;
    const JsonPath tat = at / which;
    if (!items->is_array()) tat.fail("a list of template items", describe(*items));
    bool seen_sequence = false;
    for (size_t i = 0; i < items->size(); ++i) {
      const Item item = parse_item((*items)[i], tat[i]);
      if (item.sequence) {
        seen_sequence = true;
        continue;
      }
      const auto it = specials.find(item.special);
      if (it == specials.end())
        tat[i].fail("a token of special_tokens", "\"" + item.special + "\"");
      if (std::string(which) == "single")
        (seen_sequence ? suffix : prefix)
            .insert((seen_sequence ? suffix : prefix).end(), it->second.begin(), it->second.end());
    }
  }
  return std::make_unique<Wrap>(std::move(prefix), std::move(suffix));
}

// RobertaProcessing / BertProcessing: {"cls": ["<s>", 0], "sep": ["</s>", 2]}.
std::unique_ptr<PostProcessor> cls_sep(const json& v, const JsonPath& at) {
  const auto id_of = [&](const char* key) {
    const json& pair = require(v, key, at);
    if (!pair.is_array() || pair.size() != 2 || !pair[1].is_number_integer())
      (at / key).fail("[token, id]", describe(pair));
    return static_cast<int32_t>(pair[1].get<int64_t>());
  };
  return std::make_unique<Wrap>(std::vector<int32_t>{id_of("cls")},
                                std::vector<int32_t>{id_of("sep")});
}

}  // namespace

std::unique_ptr<PostProcessor> parse_post_processor(const json& value, const JsonPath& at) {
  if (value.is_null()) return nullptr;
  const std::string type = get_type(value, at);
  if (type == "TemplateProcessing") return template_processing(value, at);
  if (type == "RobertaProcessing" || type == "BertProcessing") return cls_sep(value, at);
  if (type == "ByteLevel") return std::make_unique<NoChange>();
  if (type == "Sequence") {
    const json& list = require(value, "processors", at);
    if (!list.is_array()) (at / "processors").fail("a list", describe(list));
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      auto part = parse_post_processor(list[i], (at / "processors")[i]);
      if (part) parts.push_back(std::move(part));
    }
    return std::make_unique<SequencePost>(std::move(parts));
  }
  unsupported(at, type,
              "TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence");
}

}  // namespace nh::tok
