// The tokenizer pipeline, as the `tokenizers` library runs it for one text:
//   1. invalid UTF-8 -> U+FFFD;
//   2. cut on the added tokens that match raw text (normalized=false);
//   3. normalize each remaining piece, cut it on the normalized added tokens;
//   4. pre-tokenize each remaining piece into splits; 5. BPE each split;
//   6. with special tokens, the post-processor (BOS/EOS).
#include "io/tokenizer.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "io/text_file.h"
#include "io/tokenizer/added_tokens.h"
#include "io/tokenizer/bpe.h"
#include "io/tokenizer/decoders.h"
#include "io/tokenizer/json_fields.h"
#include "io/tokenizer/normalizers.h"
#include "io/tokenizer/post_processor.h"
#include "io/tokenizer/pre_tokenizers.h"
#include "io/tokenizer/unicode.h"

namespace nh {

using tok::json;
using tok::JsonPath;

struct Tokenizer::Impl {
  std::string where;
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::BpeModel> model;
  std::unique_ptr<tok::AddedVocabulary> added;
  std::unique_ptr<tok::PostProcessor> post_processor;
  std::unique_ptr<tok::Decoder> decoder;
  std::optional<int32_t> eos;

  void encode(std::string_view text, bool add_special_tokens, std::vector<int32_t>& ids) const;
  void encode_piece(std::string_view raw, bool at_origin, std::vector<int32_t>& ids) const;
};

namespace {

std::string read_file(const std::string& path) {
  return read_text_file(path, "file", "a readable tokenizer file");
}

json parse_json(std::string_view text, const std::string& where) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    throw Error(where, "JSON", "valid JSON", e.what());
  }
}

// tokenizer_config.json's eos_token: a string or {"content": string}.
std::optional<std::string> configured_eos(const std::string& config_path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(config_path, ec)) return std::nullopt;
  const json config = parse_json(read_file(config_path), config_path);
  const json* eos = tok::optional(config, "eos_token");
  if (!eos) return std::nullopt;
  if (eos->is_string()) return eos->get<std::string>();
  if (const json* content = tok::optional(*eos, "content"); content && content->is_string())
    return content->get<std::string>();
  throw Error(config_path, "eos_token", "a string or {\"content\": string}", tok::describe(*eos));
}

}  // namespace

void Tokenizer::Impl::encode_piece(std::string_view raw, bool at_origin,
                                   std::vector<int32_t>& ids) const {
  std::string owned;
  std::string_view normalized = raw;
  if (normalizer) {
    owned.assign(raw);
    normalizer->normalize(owned);
    normalized = owned;
  }
  std::vector<tok::TextPart> parts;
  added->split(normalized, true, parts);
  std::vector<tok::Split> splits;
  for (const tok::TextPart& part : parts) {
    if (part.id >= 0) {
      ids.push_back(part.id);
      continue;
    }
    splits.clear();
    splits.push_back({std::string(normalized.substr(part.start, part.end - part.start)),
                      at_origin && part.start == 0});
    if (pre_tokenizer) pre_tokenizer->pre_tokenize(splits);
    for (const tok::Split& s : splits) model->tokenize(s.text, ids);
  }
}

void Tokenizer::Impl::encode(std::string_view text, bool add_special_tokens,
                             std::vector<int32_t>& ids) const {
  std::string repaired;
  if (!tok::is_valid_utf8(text)) {
    repaired = tok::to_valid_utf8(text);
    text = repaired;
  }
  std::vector<tok::TextPart> parts;
  added->split(text, false, parts);
  for (const tok::TextPart& part : parts) {
    if (part.id >= 0)
      ids.push_back(part.id);
    else
      encode_piece(text.substr(part.start, part.end - part.start), part.start == 0, ids);
  }
  if (add_special_tokens && post_processor) post_processor->process(ids);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_json_text(std::string_view text, const std::string& where) {
  const json j = parse_json(text, where);
  const JsonPath root{where, ""};
  if (!j.is_object()) root.fail("a JSON object", tok::describe(j));
  // "truncation" and "padding" are ignored on purpose: the engine packs whole documents.
  auto impl = std::make_unique<Impl>();
  impl->where = where;
  const json null;
  const auto member = [&](const char* key) -> const json& {
    const json* v = tok::optional(j, key);
    return v ? *v : null;
  };
  impl->normalizer = tok::parse_normalizer(member("normalizer"), root / "normalizer");
  impl->pre_tokenizer = tok::parse_pre_tokenizer(member("pre_tokenizer"), root / "pre_tokenizer");
  impl->model = std::make_unique<tok::BpeModel>(tok::require(j, "model", root), root / "model");
  impl->added = std::make_unique<tok::AddedVocabulary>(
      member("added_tokens"), *impl->model, impl->normalizer.get(), root / "added_tokens");
  impl->post_processor =
      tok::parse_post_processor(member("post_processor"), root / "post_processor");
  impl->decoder = tok::parse_decoder(member("decoder"), root / "decoder");
  Tokenizer t(std::move(impl));
  for (const char* name : {"</s>", "<|endoftext|>", "<|im_end|>", "<eos>"}) {
    if (const auto id = t.token_to_id(name)) {
      t.impl_->eos = id;
      break;
    }
  }
  return t;
}

Tokenizer Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool dir = fs::is_directory(path, ec);
  const std::string file = dir ? (fs::path(path) / "tokenizer.json").string() : path;
  if (!fs::is_regular_file(file, ec))
    throw Error(file, "file", "a tokenizer.json file (or a directory holding one)", "no such file");
  Tokenizer t = from_json_text(read_file(file), file);
  const std::string config = (fs::path(file).parent_path() / "tokenizer_config.json").string();
  if (const auto eos = configured_eos(config)) {
    const auto id = t.token_to_id(*eos);
    if (!id) throw Error(config, "eos_token", "a token of " + file, "\"" + *eos + "\"");
    t.impl_->eos = id;
  }
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  impl_->encode(text, add_special_tokens, ids);
  return ids;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                                          bool add_special_tokens,
                                                          int threads) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t n_threads = std::min(texts.size(), threads > 0 ? static_cast<size_t>(threads) : hw);
  constexpr size_t kChunk = 16;  // texts per grab: balances long and short texts
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  const auto work = [&] {
    try {
      for (size_t begin = next.fetch_add(kChunk); begin < texts.size() && !failed;
           begin = next.fetch_add(kChunk))
        for (size_t i = begin; i < std::min(texts.size(), begin + kChunk); ++i)
          impl_->encode(texts[i], add_special_tokens, out[i]);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  if (n_threads <= 1) {
    work();
  } else {
    std::vector<std::thread> pool;
    for (size_t t = 1; t < n_threads; ++t) pool.emplace_back(work);
    work();
    for (std::thread& th : pool) th.join();
  }
  if (error) std::rethrow_exception(error);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    const std::string* text = nullptr;
    if (const tok::AddedToken* a = impl_->added->find(id))
      text = a->normalized ? &a->normalized_form : &a->content;
    else
      text = impl_->model->id_to_token(id);
    if (!text || (skip_special_tokens && impl_->added->is_special(*text))) continue;
    tokens.push_back(*text);
  }
  if (impl_->decoder) {
    impl_->decoder->decode_chain(tokens);
    std::string out;
    for (const std::string& t : tokens) out += t;
    return out;
  }
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
  return out;
}

int64_t Tokenizer::vocab_size() const {
  return std::max(impl_->model->max_id(), impl_->added->max_id()) + int64_t{1};
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const auto id = impl_->added->token_to_id(token)) return id;
  return impl_->model->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (const tok::AddedToken* a = impl_->added->find(id)) return a->content;
  if (const std::string* t = impl_->model->id_to_token(id)) return *t;
  return std::nullopt;
}

std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }

}  // namespace nh
