#include "io/tokenizer/bpe.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "io/tokenizer/unicode.h"

namespace nh::tok {

namespace {

constexpr int64_t kMaxId = 100'000'000;  // far above any real vocab; guards the id tables
constexpr size_t kCacheWords = 1 << 14;
constexpr size_t kMaxCachedWordBytes = 256;
constexpr uint32_t kSmallChars = 0x800;

// Recently tokenized words of one model on one thread: an open-addressing table whose keys
// and ids live in two arenas, emptied when it holds kCacheWords words.
class WordCache {
 public:
  uint64_t owner = 0;

  void clear() {
    slots_.assign(2 * kCacheWords, Slot{});
    keys_.clear();
    ids_.clear();
    count_ = 0;
  }
  // Appends the cached ids of `word` to `out`; false when it is not cached.
  bool get(std::string_view word, uint64_t hash, std::vector<int32_t>& out) const {
    for (size_t i = hash & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      const Slot& s = slots_[i];
      if (s.hash == 0) return false;
      if (s.hash == hash && s.key_len == word.size() &&
          std::memcmp(keys_.data() + s.key_at, word.data(), word.size()) == 0) {
        out.insert(out.end(), ids_.begin() + s.ids_at, ids_.begin() + s.ids_at + s.ids_len);
        return true;
      }
    }
  }
  void put(std::string_view word, uint64_t hash, const std::vector<int32_t>& ids) {
    if (count_ >= kCacheWords) clear();
    size_t i = hash & (slots_.size() - 1);
    while (slots_[i].hash != 0) i = (i + 1) & (slots_.size() - 1);
    slots_[i] = {hash, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(word.size()),
                 static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(ids.size())};
    keys_.append(word);
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    ++count_;
  }
  // A non-zero hash (0 marks empty slots).
  static uint64_t hash_of(std::string_view word) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char c : word) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
    h ^= h >> 29;
    return h | 1;
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_at = 0, key_len = 0, ids_at = 0, ids_len = 0;
  };
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t count_ = 0;
};

WordCache& cache_for(uint64_t owner) {
  thread_local std::array<WordCache, 4> caches;
  thread_local size_t next_slot = 0;
  for (WordCache& c : caches)
    if (c.owner == owner) return c;
  WordCache& c = caches[next_slot++ % caches.size()];
  c.owner = owner;
  c.clear();
  return c;
}

std::atomic<uint64_t> g_next_owner{1};

struct Symbol {
  int32_t id, prev, next;
  bool alive;
};

// A candidate merge of the symbol at `pos` with the next one; the heap pops the lowest rank
// first and, on equal ranks, the leftmost position.
struct Candidate {
  uint32_t rank;
  int32_t pos, new_id;
  bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

void BpeModel::PairMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  keys_.assign(cap, ~uint64_t{0});
  values_.assign(cap, {0, 0});
  mask_ = cap - 1;
  size_ = 0;
}

void BpeModel::PairMap::insert(int32_t a, int32_t b, MergeTarget m) {
  const uint64_t k = key(a, b);
  size_t i = (k * 0x9E3779B97F4A7C15ull) >> 20 & mask_;
  while (keys_[i] != ~uint64_t{0} && keys_[i] != k) i = (i + 1) & mask_;
  if (keys_[i] != k) ++size_;
  keys_[i] = k;
  values_[i] = m;  // a pair listed twice keeps its last rank, as the library's map does
}

const BpeModel::MergeTarget* BpeModel::PairMap::find(int32_t a, int32_t b) const {
  const uint64_t k = key(a, b);
  size_t i = (k * 0x9E3779B97F4A7C15ull) >> 20 & mask_;
  while (true) {
    if (keys_[i] == k) return &values_[i];
    if (keys_[i] == ~uint64_t{0}) return nullptr;
    i = (i + 1) & mask_;
  }
}

BpeModel::BpeModel(const json& model, const JsonPath& at)
    : where_(at.file), cache_owner_(g_next_owner++) {
  if (!model.is_object()) at.fail("an object", describe(model));
  if (const json* t = optional(model, "type"); t && *t != "BPE")
    unsupported(at, t->is_string() ? t->get<std::string>() : t->dump(), "BPE");
  if (const json* d = optional(model, "dropout"); d && (!d->is_number() || d->get<double>() != 0))
    (at / "dropout").fail("null or 0 (BPE dropout is not supported)", describe(*d));

  const json& vocab = require(model, "vocab", at);
  if (!vocab.is_object()) (at / "vocab").fail("an object of token: id", describe(vocab));
  vocab_.reserve(vocab.size());
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxId)
      (at / "vocab" / token).fail("an id in [0, 100000000]", describe(id));
    vocab_.emplace(token, static_cast<int32_t>(id.get<int64_t>()));
    max_id = std::max(max_id, id.get<int64_t>());
  }
  tokens_.assign(static_cast<size_t>(max_id + 1), std::string());
  has_token_.assign(tokens_.size(), 0);
  for (const auto& [token, id] : vocab_) {
    tokens_[id] = token;
    has_token_[id] = 1;
  }

  if (optional(model, "continuing_subword_prefix"))
    prefix_ = get_string(model, "continuing_subword_prefix", at);
  if (optional(model, "end_of_word_suffix")) suffix_ = get_string(model, "end_of_word_suffix", at);
  fuse_unk_ = get_bool(model, "fuse_unk", false, at);
  byte_fallback_ = get_bool(model, "byte_fallback", false, at);
  ignore_merges_ = get_bool(model, "ignore_merges", false, at);
  if (optional(model, "unk_token")) {
    // An unk_token missing from the vocab is only an error once a text needs it.
    unk_token_ = get_string(model, "unk_token", at);
    if (const auto it = vocab_.find(unk_token_); it != vocab_.end()) unk_id_ = it->second;
  }

  byte_ids_.assign(256, -1);
  all_byte_ids_ = true;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    const auto it = vocab_.find(std::string_view(name));
    if (it != vocab_.end()) byte_ids_[b] = it->second;
    all_byte_ids_ &= it != vocab_.end();
  }
  small_char_ids_.assign(kSmallChars, -1);
  for (const auto& [token, id] : vocab_) {
    if (token.empty() || utf8_length(token[0]) != token.size() || !is_valid_utf8(token)) continue;
    size_t i = 0;
    const uint32_t cp = next_code_point(token, i);
    if (cp < kSmallChars) small_char_ids_[cp] = id;
  }

  const json& merges = require(model, "merges", at);
  if (!merges.is_array()) (at / "merges").fail("a list", describe(merges));
  merges_.reserve(merges.size());
  uint32_t rank = 0;
  std::string merged;
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& m = merges[i];
    const JsonPath mat = (at / "merges")[i];
    std::string a, b;
    if (m.is_string()) {
      const std::string& line = m.get_ref<const std::string&>();
      if (line.starts_with("#version")) continue;
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
        mat.fail("\"<token> <token>\" (two tokens and one space)", describe(m));
      a = line.substr(0, space);
      b = line.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      mat.fail("\"a b\" or [\"a\", \"b\"]", describe(m));
    }
    const auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia == vocab_.end()) mat.fail("tokens of the vocab", "\"" + a + "\" (not in the vocab)");
    if (ib == vocab_.end()) mat.fail("tokens of the vocab", "\"" + b + "\" (not in the vocab)");
    if (b.size() < prefix_.size())
      mat.fail("a second token that starts with continuing_subword_prefix", "\"" + b + "\"");
    merged.assign(a).append(b, prefix_.size());
    const auto im = vocab_.find(merged);
    if (im == vocab_.end())
      mat.fail("a merge whose result is in the vocab", "\"" + merged + "\" (not in the vocab)");
    merges_.insert(ia->second, ib->second, {rank++, im->second});
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= tokens_.size() || !has_token_[id]) return nullptr;
  return &tokens_[id];
}

int32_t BpeModel::char_id(std::string_view ch) const {
  const auto it = vocab_.find(ch);
  return it == vocab_.end() ? -1 : it->second;
}

// The library's merge_word before merging: one symbol per character (with the subword
// prefix/suffix), byte tokens for characters missing from the vocab when byte_fallback is on,
// else the unk token (consecutive ones fused when fuse_unk), else nothing.
void BpeModel::initial_symbols(std::string_view word, std::vector<int32_t>& ids) const {
  const bool affixes = !prefix_.empty() || !suffix_.empty();
  bool unk_pending = false;
  std::string piece;
  size_t i = 0;
  while (i < word.size()) {
    const size_t start = i;
    const uint32_t cp = next_code_point(word, i);
    const std::string_view ch = word.substr(start, i - start);
    int32_t id;
    std::string_view s = ch;
    if (affixes) {
      piece.clear();
      if (start > 0) piece += prefix_;
      piece += ch;
      if (i == word.size()) piece += suffix_;
      s = piece;
      id = char_id(s);
    } else {
      id = cp < kSmallChars ? small_char_ids_[cp] : char_id(ch);
    }
    if (id >= 0) {
      if (unk_pending) ids.push_back(unk_id());
      unk_pending = false;
      ids.push_back(id);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (const char c : s) all &= byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        // Like the library, a pending unk is not flushed first: it lands after these bytes.
        for (const char c : s) ids.push_back(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (!unk_token_.empty()) {
      if (unk_pending && !fuse_unk_) ids.push_back(unk_id());
      unk_pending = true;
    }
  }
  if (unk_pending) ids.push_back(unk_id());
}

int32_t BpeModel::unk_id() const {
  if (!unk_id_)
    throw Error(where_, "model.unk_token", "a token of the vocab", "\"" + unk_token_ + "\"");
  return *unk_id_;
}

void BpeModel::merge(std::vector<int32_t>& ids) const {
  if (ids.size() < 2) return;
  thread_local std::vector<Symbol> sym;
  thread_local std::vector<Candidate> heap;
  const auto n = static_cast<int32_t>(ids.size());
  sym.resize(ids.size());
  heap.clear();
  for (int32_t k = 0; k < n; ++k) {
    sym[k] = {ids[k], k - 1, k + 1 < n ? k + 1 : -1, true};
    if (k + 1 < n)
      if (const MergeTarget* m = merges_.find(ids[k], ids[k + 1]))
        heap.push_back({m->rank, k, m->id});
  }
  std::make_heap(heap.begin(), heap.end());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& cur = sym[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    const int32_t next_pos = cur.next;
    const Symbol right = sym[next_pos];
    // Skip entries made stale by an earlier merge of either symbol.
    const MergeTarget* now = merges_.find(cur.id, right.id);
    if (!now || now->id != top.new_id) continue;
    cur.id = top.new_id;
    cur.next = right.next;
    sym[next_pos].alive = false;
    if (right.next >= 0) sym[right.next].prev = top.pos;
    if (cur.prev >= 0) {
      if (const MergeTarget* m = merges_.find(sym[cur.prev].id, cur.id)) {
        heap.push_back({m->rank, cur.prev, m->id});
        std::push_heap(heap.begin(), heap.end());
      }
    }
    if (cur.next >= 0) {
      if (const MergeTarget* m = merges_.find(cur.id, sym[cur.next].id)) {
        heap.push_back({m->rank, top.pos, m->id});
        std::push_heap(heap.begin(), heap.end());
      }
    }
  }
  ids.clear();
  for (int32_t k = 0; k < n; ++k)
    if (sym[k].alive) ids.push_back(sym[k].id);
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() < kMaxCachedWordBytes;
  WordCache* cache = cacheable ? &cache_for(cache_owner_) : nullptr;
  const uint64_t hash = cacheable ? WordCache::hash_of(word) : 0;
  if (cache && cache->get(word, hash, out)) return;
  thread_local std::vector<int32_t> ids;
  ids.clear();
  initial_symbols(word, ids);
  merge(ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cache) cache->put(word, hash, ids);
}

}  // namespace nh::tok
