// The streamed text of a token sequence, piece by piece, equals decoding the whole sequence at
// once, for the byte-level and the Metaspace/byte-fallback tokenizers of tests/data/tokenizer
// (spaces, multi-byte characters split over tokens), and pieces are whole UTF-8 characters.
#include "infer/text_stream.h"

#include <gtest/gtest.h>

#include "core/rng.h"

namespace nh {
namespace {

bool whole_chars(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    i += n;
  }
  return true;
}

class TextStreamOf : public ::testing::TestWithParam<std::string> {};

TEST_P(TextStreamOf, PiecesJoinToTheWholeDecoding) {
  const Tokenizer tok =
      Tokenizer::load(std::string(NH_SOURCE_DIR) + "/tests/data/tokenizer/" + GetParam());
  const std::string text =
      "Hello world, this is a test.  Ünïcödé — 東京 and emoji 🙂 plus\nnew lines\tand tabs.";
  const std::vector<int32_t> ids = tok.encode(text, false);
  ASSERT_GT(ids.size(), 10u);
  const std::string whole = tok.decode(ids, true);
  // Also random ids: byte tokens that do not form characters until later ones arrive.
  Rng rng(3);
  std::vector<int32_t> noisy = ids;
  for (int i = 0; i < 40; ++i)
    noisy.insert(noisy.begin() + std::ptrdiff_t(rng.uniform() * double(noisy.size())),
                 int32_t(rng.uniform() * double(tok.vocab_size() - 1)));
  for (const auto& seq : {ids, noisy}) {
    TextStream stream(&tok, {});
    std::vector<int32_t> so_far;
    std::string joined;
    for (int32_t id : seq) {
      so_far.push_back(id);
      const std::string piece = stream.update(so_far);
      EXPECT_TRUE(whole_chars(piece)) << piece;
      joined += piece;
    }
    joined += stream.flush(so_far);
    EXPECT_EQ(joined, tok.decode(seq, true));
  }
  EXPECT_EQ(whole, text);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, TextStreamOf,
                         ::testing::Values("bytelevel_gpt4", "metaspace_bytefallback"));

TEST(TextStream, StopStringsCutTheText) {
  const Tokenizer tok =
      Tokenizer::load(std::string(NH_SOURCE_DIR) + "/tests/data/tokenizer/bytelevel_gpt4");
  const std::vector<int32_t> ids = tok.encode("one two three four", false);
  TextStream stream(&tok, {" thr"});
  std::vector<int32_t> so_far;
  std::string joined;
  for (int32_t id : ids) {
    so_far.push_back(id);
    joined += stream.update(so_far);
    if (stream.stopped()) break;
  }
  joined += stream.flush(so_far);
  EXPECT_TRUE(stream.stopped());
  EXPECT_EQ(joined, "one two");
}

}  // namespace
}  // namespace nh
