// The BPE model of tokenizer.json ("model": {"type": "BPE", ...}): vocab, merges (either
// "a b" strings or ["a", "b"] pairs), unk_token with fuse_unk, byte_fallback, ignore_merges,
// continuing_subword_prefix and end_of_word_suffix. dropout must be null or 0.
//
// A word becomes one symbol per character, then the pair of adjacent symbols with the lowest
// merge rank (leftmost on ties) is merged until no pair has a merge: a binary heap over a
// linked list of symbols, as the library does, so that stale heap entries are skipped the
// same way. Results are cached per thread (bounded) by word.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/tokenizer/json_fields.h"

namespace nh::tok {

// std::hash over string_view, usable for heterogeneous lookup of std::string keys.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  BpeModel(const json& model, const JsonPath& at);

  // Appends the ids of `word` (one pre-tokenized split, non-empty) to `out`.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;
  // Entries of the vocab (the library numbers new added tokens from here).
  size_t vocab_entries() const { return vocab_.size(); }
  int32_t max_id() const { return static_cast<int32_t>(tokens_.size()) - 1; }

 private:
  struct MergeTarget {
    uint32_t rank;
    int32_t id;
  };
  // Open addressing from a pair of ids to its merge: the hot lookup of the merge loop.
  class PairMap {
   public:
    void reserve(size_t n);
    void insert(int32_t a, int32_t b, MergeTarget m);
    const MergeTarget* find(int32_t a, int32_t b) const;

   private:
    static uint64_t key(int32_t a, int32_t b) {
      return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    }
    std::vector<uint64_t> keys_;
    std::vector<MergeTarget> values_;
    size_t mask_ = 0, size_ = 0;
  };

  void initial_symbols(std::string_view word, std::vector<int32_t>& ids) const;
  void merge(std::vector<int32_t>& ids) const;
  int32_t char_id(std::string_view ch) const;
  int32_t unk_id() const;

  StringMap vocab_;
  std::vector<std::string> tokens_;  // by id; empty where no token has the id
  std::vector<char> has_token_;
  PairMap merges_;
  std::vector<int32_t> small_char_ids_;  // code point (< 0x800) -> id of that 1-char token
  std::string where_;
  std::string unk_token_;  // empty when the model has none
  std::optional<int32_t> unk_id_;
  std::string prefix_, suffix_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::vector<int32_t> byte_ids_;  // <0xXX> tokens, -1 when absent
  bool all_byte_ids_ = false;
  uint64_t cache_owner_;  // identifies this model's entries in the per-thread word caches
};

}  // namespace nh::tok
