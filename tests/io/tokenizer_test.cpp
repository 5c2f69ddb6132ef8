// The tokenizer against the `tokenizers` library: every case of tests/data/tokenizer/<name>/
// (made by tools/make_tokenizer_reference.py) must give the library's ids, with and without
// special tokens, and its decoded text; plus the errors for unsupported and malformed files.
#include "io/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/tokenizer/regex.h"
#include "io/tokenizer/unicode.h"
#include "support/temp_dir.h"

namespace nh {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

const std::string kDataDir = std::string(NH_SOURCE_DIR) + "/tests/data/tokenizer";

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string base64_decode(const std::string& in) {
  static const std::string kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (const char c : in) {
    const size_t v = kAlphabet.find(c);
    if (v == std::string::npos) continue;  // '=' padding
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

struct Case {
  std::string text;  // the bytes fed to encode (raw, possibly invalid UTF-8)
  std::vector<int32_t> ids, ids_no_special;
  std::string decoded, decoded_skip_special;
};

std::vector<Case> read_cases(const std::string& dir) {
  std::vector<Case> cases;
  std::ifstream in(dir + "/cases.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const json j = json::parse(line);
    Case c;
    c.text = j.contains("b64") ? base64_decode(j["b64"].get<std::string>())
                               : j["text"].get<std::string>();
    c.ids = j["ids"].get<std::vector<int32_t>>();
    c.ids_no_special = j["ids_no_special"].get<std::vector<int32_t>>();
    c.decoded = j["decoded"].get<std::string>();
    c.decoded_skip_special = j["decoded_skip_special"].get<std::string>();
    cases.push_back(std::move(c));
  }
  return cases;
}

std::vector<std::string> case_dirs() {
  std::vector<std::string> dirs;
  for (const auto& e : fs::directory_iterator(kDataDir))
    if (e.is_directory()) dirs.push_back(e.path().string());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

std::string show(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

TEST(Tokenizer, ReferenceDataHasEveryTokenizerKind) {
  EXPECT_GE(case_dirs().size(), 3u);
  for (const auto& dir : case_dirs()) EXPECT_GE(read_cases(dir).size(), 50u) << dir;
}

TEST(Tokenizer, EncodeAndDecodeMatchTheLibraryOnEveryCase) {
  for (const auto& dir : case_dirs()) {
    const Tokenizer tok = Tokenizer::load(dir);
    int failures = 0;
    for (const Case& c : read_cases(dir)) {
      const auto ids = tok.encode(c.text, true);
      const auto plain = tok.encode(c.text, false);
      const auto decoded = tok.decode(c.ids, false);
      const auto skipped = tok.decode(c.ids, true);
      const bool ok = ids == c.ids && plain == c.ids_no_special && decoded == c.decoded &&
                      skipped == c.decoded_skip_special;
      if (!ok && ++failures <= 5) {
        ADD_FAILURE() << dir << "\n  text: " << json(tok::to_valid_utf8(c.text)).dump()
                      << "\n  ids:  " << show(ids) << "\n  want: " << show(c.ids)
                      << "\n  no special: " << show(plain)
                      << "\n  want:       " << show(c.ids_no_special)
                      << "\n  decoded: " << json(decoded).dump()
                      << "\n  want:    " << json(c.decoded).dump()
                      << "\n  skip special: " << json(skipped).dump()
                      << "\n  want:         " << json(c.decoded_skip_special).dump();
      }
    }
    EXPECT_EQ(failures, 0) << dir;
  }
}

TEST(Tokenizer, EncodeBatchEqualsEncodeInOrder) {
  for (const auto& dir : case_dirs()) {
    const Tokenizer tok = Tokenizer::load(dir);
    std::vector<std::string> texts;
    for (const Case& c : read_cases(dir)) texts.push_back(c.text);
    for (const bool special : {true, false}) {
      const auto batch = tok.encode_batch(texts, special, 3);
      ASSERT_EQ(batch.size(), texts.size());
      for (size_t i = 0; i < texts.size(); ++i)
        EXPECT_EQ(batch[i], tok.encode(texts[i], special)) << dir << " case " << i;
    }
    EXPECT_TRUE(tok.encode_batch({}, true).empty());
  }
}

TEST(Tokenizer, VocabularyLookupsAgreeWithEachOther) {
  const Tokenizer tok = Tokenizer::load(kDataDir + "/bytelevel_gpt4/tokenizer.json");
  const auto eot = tok.token_to_id("<|endoftext|>");
  ASSERT_TRUE(eot.has_value());
  EXPECT_EQ(tok.id_to_token(*eot), "<|endoftext|>");
  EXPECT_EQ(tok.eos_id(), eot);
  EXPECT_FALSE(tok.token_to_id("no such token at all").has_value());
  EXPECT_FALSE(tok.id_to_token(-1).has_value());
  const json j = json::parse(read(kDataDir + "/bytelevel_gpt4/tokenizer.json"));
  int64_t max_id = 0;
  for (const auto& [t, id] : j["model"]["vocab"].items()) {
    max_id = std::max<int64_t>(max_id, id.get<int64_t>());
    ASSERT_EQ(tok.token_to_id(t), id.get<int32_t>()) << t;
  }
  EXPECT_EQ(tok.vocab_size(), max_id + 1);
}

TEST(Tokenizer, EosComesFromTokenizerConfigWhenPresent) {
  test::TempDir dir;
  fs::copy_file(kDataDir + "/metaspace_bytefallback/tokenizer.json", dir / "tokenizer.json");
  EXPECT_EQ(Tokenizer::load(dir.path()).eos_id(), Tokenizer::load(dir.path()).token_to_id("</s>"));
  write(dir / "tokenizer_config.json", R"({"eos_token": {"content": "<unk>"}})");
  EXPECT_EQ(Tokenizer::load(dir.path()).eos_id(), 0);
  write(dir / "tokenizer_config.json", R"({"eos_token": "<nope>"})");
  try {
    Tokenizer::load(dir.path());
    FAIL() << "an eos_token missing from the vocab must be an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("<nope>"), std::string::npos);
  }
}

// Expects from_json_text(json) to throw an Error whose message contains every word.
void expect_error(const json& j, const std::vector<std::string>& words) {
  try {
    Tokenizer::from_json_text(j.dump(), "my/tokenizer.json");
    ADD_FAILURE() << "no error for " << j.dump().substr(0, 200);
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("my/tokenizer.json"), std::string::npos) << what;
    for (const auto& w : words) EXPECT_NE(what.find(w), std::string::npos) << w << " in " << what;
  }
}

json base_json() { return json::parse(read(kDataDir + "/bytelevel_gpt4/tokenizer.json")); }

TEST(Tokenizer, UnsupportedComponentIsAnErrorNamingIt) {
  json j = base_json();
  j["normalizer"] = {{"type", "BertNormalizer"}};
  expect_error(j, {"normalizer.type", "BertNormalizer"});
  j = base_json();
  j["pre_tokenizer"]["pretokenizers"][1] = {{"type", "UnicodeScripts"}};
  expect_error(j, {"pre_tokenizer.pretokenizers[1].type", "UnicodeScripts"});
  j = base_json();
  j["model"]["type"] = "WordPiece";
  expect_error(j, {"model.type", "WordPiece"});
  j = base_json();
  j["decoder"] = {{"type", "CTC"}};
  expect_error(j, {"decoder.type", "CTC"});
  j = base_json();
  j["post_processor"] = {{"type", "Whatever"}};
  expect_error(j, {"post_processor.type", "Whatever"});
  j = base_json();
  j["model"]["dropout"] = 0.1;
  expect_error(j, {"model.dropout"});
}

TEST(Tokenizer, MalformedFileIsAnErrorNamingTheField) {
  json j = base_json();
  j.erase("model");
  expect_error(j, {"model", "missing"});
  j = base_json();
  j["model"]["merges"][0] = json::array({"zzz-not-a-token", "a"});
  expect_error(j, {"model.merges[0]", "zzz-not-a-token"});
  j = base_json();
  j["model"]["merges"][2] = "onlyone";
  expect_error(j, {"model.merges[2]"});
  j = base_json();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  expect_error(j, {"pre_tokenizer.pretokenizers[0].pattern.Regex", "(unclosed"});
  j = base_json();
  j["model"]["vocab"]["abc"] = "seven";
  expect_error(j, {"model.vocab.abc"});
  j = base_json();
  j["post_processor"]["single"][0]["SpecialToken"]["id"] = "<nope>";
  expect_error(j, {"post_processor.single[0]", "<nope>"});
  try {
    Tokenizer::from_json_text("{\"model\": ", "cut.json");
    ADD_FAILURE() << "truncated JSON accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cut.json"), std::string::npos);
  }
}

TEST(Tokenizer, MissingFileIsAnErrorNamingThePath) {
  test::TempDir dir;
  try {
    Tokenizer::load(dir.path());
    FAIL() << "a directory without tokenizer.json was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir / "tokenizer.json"), std::string::npos);
  }
}

TEST(TokenizerUnicode, InvalidUtf8IsReplacedPerMaximalSubpart) {
  EXPECT_EQ(tok::to_valid_utf8("a\xFF"
                               "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(tok::to_valid_utf8("\xE2\x82"), "\xEF\xBF\xBD");
  EXPECT_EQ(tok::to_valid_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(tok::to_valid_utf8("\xF0\x9F\x98"
                               "x"),
            "\xEF\xBF\xBD"
            "x");
  EXPECT_TRUE(tok::is_valid_utf8("\xE2\x82\xAC"));
  EXPECT_FALSE(tok::is_valid_utf8("\xC0\xAF"));
}

TEST(TokenizerRegex, OnigurumaClassesAndEmptyMatchesFollowTheLibrary) {
  const tok::JsonPath at{"test", "pattern"};
  std::vector<tok::Span> m;
  tok::Regex("x*", tok::Regex::Syntax::Oniguruma, at).find_all("ab", m);
  ASSERT_EQ(m.size(), 3u);  // empty matches at 0, 1 and 2
  m.clear();
  tok::Regex("a*", tok::Regex::Syntax::Oniguruma, at).find_all("baac", m);
  ASSERT_EQ(m.size(), 3u);  // "", "aa" at 1, and "" at 4 (the one at 3 follows "aa")
  EXPECT_EQ(m[1].start, 1u);
  EXPECT_EQ(m[1].end, 3u);
  EXPECT_EQ(m[2].start, 4u);
  // \s is White_Space (no U+180E), \h is a hex digit, $ ends every line.
  EXPECT_FALSE(
      tok::Regex(R"(\s)", tok::Regex::Syntax::Oniguruma, at).matches_whole("\xE1\xA0\x8E"));
  EXPECT_TRUE(tok::Regex(R"(\s)", tok::Regex::Syntax::Oniguruma, at).matches_whole("\xC2\x85"));
  EXPECT_TRUE(tok::Regex(R"(\h+)", tok::Regex::Syntax::Oniguruma, at).matches_whole("0aF"));
  EXPECT_TRUE(
      tok::Regex(R"(\w+)", tok::Regex::Syntax::Oniguruma, at).matches_whole("a\xCC\x81\xC2\xB2"));
  m.clear();
  tok::Regex("$", tok::Regex::Syntax::Oniguruma, at).find_all("ab\ncd", m);
  EXPECT_EQ(m.size(), 2u);
}

}  // namespace
}  // namespace nh
