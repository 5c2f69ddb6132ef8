// A tokenizer read from Hugging Face's tokenizer.json: normalizer, pre-tokenizer, BPE model,
// added/special tokens, post-processor and decoder, giving the same ids as the `tokenizers`
// library. Components the file uses but this reader does not support are an Error naming them.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace nh {

class Tokenizer {
 public:
  // `path` is a tokenizer.json file or a directory holding one.
  static Tokenizer load(const std::string& path);
  static Tokenizer from_json_text(std::string_view text, const std::string& where);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Ids of `text` (UTF-8; invalid bytes are handled as the tokenizers library does on a
  // Python str made with errors="replace": each maximal invalid subsequence, which is often
  // a single byte, becomes U+FFFD).
  // add_special_tokens applies the post-processor (BOS/EOS templates).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Many texts on all cores; results in input order.
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string>& texts,
                                                 bool add_special_tokens = true,
                                                 int threads = 0) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  int64_t vocab_size() const;  // largest id + 1, added tokens included
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  // The end-of-document token for packing: eos from tokenizer_config.json when present,
  // else the first of "</s>", "<|endoftext|>", "<|im_end|>", "<eos>" that exists.
  std::optional<int32_t> eos_id() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace nh
