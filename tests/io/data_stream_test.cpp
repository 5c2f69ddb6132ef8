#include "io/data_stream.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "io/indexed_dataset.h"
#include "support/temp_dir.h"

namespace nh {

namespace {

constexpr int32_t kEod = 2, kPad = 0;
constexpr int64_t kVocab = 1000;

// Documents of random lengths in [min_len, max_len]; the first token of document k is
// first_tag + k, so each document can be recognised in a packed row, and no token is EOD.
std::vector<Document> random_docs(int n, int min_len, int max_len, int32_t first_tag, uint64_t seed,
                                  bool masked = false) {
  Rng rng(seed);
  std::vector<Document> docs(size_t(n), Document{});
  for (int k = 0; k < n; ++k) {
    const int len = min_len + int(rng.next() % uint64_t(max_len - min_len + 1));
    auto& d = docs[size_t(k)];
    d.tokens.push_back(first_tag + k);
    for (int t = 1; t < len; ++t) d.tokens.push_back(int32_t(10 + rng.next() % 90));
    if (masked) {
      // The prompt part (first half) is untrained, as in a chat example.
      for (int t = 0; t < len; ++t) d.mask.push_back(t >= len / 2 ? 1 : 0);
    }
  }
  return docs;
}

std::shared_ptr<DocumentSource> source(const std::string& name, std::vector<Document> docs) {
  return std::make_shared<InMemorySource>(name, std::move(docs));
}

DataStreamConfig pretrain_config(std::shared_ptr<DocumentSource> src, int64_t seq_length) {
  DataStreamConfig c;
  c.sources.push_back({std::move(src), 1.0, true});
  c.seq_length = seq_length;
  c.vocab_size = kVocab;
  c.eod_id = kEod;
  c.pad_id = kPad;
  return c;
}

DataStreamConfig sft_config(std::shared_ptr<DocumentSource> src, int64_t seq_length) {
  DataStreamConfig c = pretrain_config(std::move(src), seq_length);
  c.sources[0].append_eod = false;
  c.packing = Packing::Sft;
  return c;
}

struct Rows {
  std::vector<std::vector<int64_t>> ids, targets;
  std::vector<std::vector<int32_t>> seq_idx;
};

Rows take(DataStream& s, int batches, int64_t batch_rows) {
  Rows r;
  for (int b = 0; b < batches; ++b) {
    const MicroBatch mb = s.next_batch(batch_rows);
    const int64_t len = mb.ids.size(1);
    for (int64_t i = 0; i < batch_rows; ++i) {
      const int64_t* ids = mb.ids.data<int64_t>() + i * len;
      const int64_t* tg = mb.targets.data<int64_t>() + i * len;
      const int32_t* sq = mb.seq_idx.data<int32_t>() + i * len;
      r.ids.emplace_back(ids, ids + len);
      r.targets.emplace_back(tg, tg + len);
      r.seq_idx.emplace_back(sq, sq + len);
    }
  }
  return r;
}

// The documents of a pretraining stream, in stream order: the concatenated rows split after
// each EOD (documents never contain EOD themselves).
std::vector<std::vector<int32_t>> split_at_eod(const Rows& rows) {
  std::vector<std::vector<int32_t>> docs(1);
  for (const auto& row : rows.ids)
    for (const int64_t id : row) {
      if (id == kEod) {
        docs.emplace_back();
      } else {
        docs.back().push_back(int32_t(id));
      }
    }
  docs.pop_back();  // the unfinished last one
  return docs;
}

// The row segments (maximal runs of one seq_idx value): {row, begin, end}.
struct Segment {
  size_t row;
  size_t begin, end;
};
std::vector<Segment> segments(const Rows& rows) {
  std::vector<Segment> out;
  for (size_t r = 0; r < rows.seq_idx.size(); ++r) {
    const auto& s = rows.seq_idx[r];
    size_t b = 0;
    for (size_t t = 1; t <= s.size(); ++t)
      if (t == s.size() || s[t] != s[b]) {
        out.push_back({r, b, t});
        b = t;
      }
  }
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<std::vector<int32_t>> fake_encode_batch(const std::vector<std::string>& texts) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& t : texts) {
    out.emplace_back();
    const std::string end = "<|im_end|>";
    for (size_t i = 0; i < t.size();) {
      if (t.compare(i, end.size(), end) == 0) {
        out.back().push_back(kEod);
        i += end.size();
      } else {
        out.back().push_back(int32_t(uint8_t(t[i++])));
      }
    }
  }
  return out;
}

std::vector<Document> shifted(std::vector<Document> docs, int32_t by) {
  for (auto& d : docs)
    for (auto& t : d.tokens) t += by;
  return docs;
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

}  // namespace

// --- pretraining packing -------------------------------------------------------------------

TEST(DataStreamPretrain, RowsConcatenateToEachEpochsDocumentsWithEod) {
  const auto docs = random_docs(20, 1, 30, 100, 1);
  DataStream s(pretrain_config(source("mem", docs), 16));
  const Rows rows = take(s, 25, 4);  // 1600 tokens: more than three epochs
  for (const auto& r : rows.ids) ASSERT_EQ(r.size(), 16u);
  const auto seen = split_at_eod(rows);
  ASSERT_GE(seen.size(), 60u);
  for (size_t epoch = 0; epoch < 3; ++epoch) {
    std::set<int32_t> tags;
    for (size_t k = epoch * 20; k < epoch * 20 + 20; ++k) {
      const int32_t tag = seen[k].at(0);
      ASSERT_GE(tag, 100);
      ASSERT_LT(tag, 120);
      EXPECT_EQ(seen[k], docs[size_t(tag - 100)].tokens) << "document " << k;
      tags.insert(tag);
    }
    EXPECT_EQ(tags.size(), 20u) << "epoch " << epoch << " is not a permutation of the documents";
  }
}

TEST(DataStreamPretrain, TargetsAreTheNextTokenOfTheDocumentAndIgnoredAtDocumentAndRowEnds) {
  DataStream s(pretrain_config(source("mem", random_docs(15, 1, 40, 100, 2)), 32));
  const Rows rows = take(s, 10, 3);
  for (size_t r = 0; r < rows.ids.size(); ++r) {
    const auto &ids = rows.ids[r], &tg = rows.targets[r];
    for (size_t t = 0; t < ids.size(); ++t) {
      const bool last_of_row = t + 1 == ids.size();
      if (ids[t] == kEod || last_of_row) {
        EXPECT_EQ(tg[t], -100) << "row " << r << " position " << t;
      } else {
        EXPECT_EQ(tg[t], ids[t + 1]) << "row " << r << " position " << t;
      }
    }
  }
}

TEST(DataStreamPretrain, SeqIdxStartsAtZeroAndStepsAtEachDocumentStart) {
  DataStream s(pretrain_config(source("mem", random_docs(15, 1, 40, 100, 3)), 24));
  const Rows rows = take(s, 10, 3);
  bool saw_continuation = false;
  for (size_t r = 0; r < rows.ids.size(); ++r) {
    const auto& ids = rows.ids[r];
    const auto& sq = rows.seq_idx[r];
    EXPECT_EQ(sq[0], 0);
    for (size_t t = 1; t < ids.size(); ++t) EXPECT_EQ(sq[t], sq[t - 1] + (ids[t - 1] == kEod));
    // A row that does not start at a document's first token continues one: still seq_idx 0.
    if (r > 0 && rows.ids[r - 1].back() != kEod) saw_continuation = true;
  }
  EXPECT_TRUE(saw_continuation);
}

TEST(DataStreamPretrain, DocumentsLongerThanARowContinueInTheNextRows) {
  std::vector<Document> docs = random_docs(1, 50, 50, 100, 4);
  DataStream s(pretrain_config(source("mem", docs), 16));
  const Rows rows = take(s, 1, 4);  // 64 tokens: the document (51 with EOD) and a second copy
  std::vector<int64_t> flat;
  for (const auto& r : rows.ids) flat.insert(flat.end(), r.begin(), r.end());
  for (size_t t = 0; t < 50; ++t) EXPECT_EQ(flat[t], docs[0].tokens[t]);
  EXPECT_EQ(flat[50], kEod);
  EXPECT_EQ(flat[51], docs[0].tokens[0]);
  for (const auto& sq : rows.seq_idx) EXPECT_EQ(sq[0], 0);
}

TEST(DataStreamPretrain, AppendEodOffTakesDocumentsAsTheyAre) {
  std::vector<Document> docs = random_docs(6, 3, 9, 100, 5);
  for (auto& d : docs) d.tokens.push_back(kEod);  // a dataset whose documents end with EOD
  DataStreamConfig c = pretrain_config(source("mem", docs), 8);
  c.sources[0].append_eod = false;
  DataStream s(c);
  const auto seen = split_at_eod(take(s, 10, 2));
  ASSERT_GE(seen.size(), 6u);
  for (const auto& d : seen) {
    ASSERT_FALSE(d.empty()) << "an EOD was added to a document that had one";
    std::vector<int32_t> want = docs.at(size_t(d[0] - 100)).tokens;
    want.pop_back();
    EXPECT_EQ(d, want);
  }
}

TEST(DataStreamPretrain, SameSeedGivesSameRowsAndOtherSeedsOtherOrders) {
  const auto src = source("mem", random_docs(30, 2, 20, 100, 6));
  DataStreamConfig c = pretrain_config(src, 20);
  DataStream a(c), b(c);
  c.seed = 99;
  DataStream other(c);
  const Rows ra = take(a, 5, 4), rb = take(b, 5, 4), ro = take(other, 5, 4);
  EXPECT_EQ(ra.ids, rb.ids);
  EXPECT_EQ(ra.targets, rb.targets);
  EXPECT_EQ(ra.seq_idx, rb.seq_idx);
  EXPECT_NE(ra.ids, ro.ids);
}

TEST(DataStreamPretrain, EveryEpochHasItsOwnOrder) {
  DataStream s(pretrain_config(source("mem", random_docs(30, 2, 6, 100, 7)), 16));
  const auto seen = split_at_eod(take(s, 20, 4));
  ASSERT_GE(seen.size(), 60u);
  std::vector<int32_t> first, second;
  for (size_t k = 0; k < 30; ++k) {
    first.push_back(seen[k][0]);
    second.push_back(seen[30 + k][0]);
  }
  EXPECT_NE(first, second);
}

// --- blends ---------------------------------------------------------------------------------

TEST(DataStreamBlend, RealisedProportionsMatchTheWeightsAndAreDeterministic) {
  // Source j's tokens lie in [300j, 300j + 140): a row's tokens tell its source.
  DataStreamConfig c = pretrain_config(source("a", random_docs(40, 5, 50, 100, 8)), 16);
  c.sources[0].weight = 5;
  c.sources.push_back({source("b", shifted(random_docs(40, 5, 50, 100, 9), 300)), 3, true});
  c.sources.push_back({source("c", shifted(random_docs(40, 5, 50, 100, 10), 600)), 2, true});
  DataStream s(c), again(c);
  ASSERT_NEAR(s.stats()[0].weight, 0.5, 1e-12);
  ASSERT_NEAR(s.stats()[2].weight, 0.2, 1e-12);
  const Rows rows = take(s, 250, 4);
  EXPECT_EQ(take(again, 250, 4).ids, rows.ids);
  std::vector<int64_t> count(3, 0);
  for (size_t r = 0; r < rows.ids.size(); ++r) {
    std::set<int64_t> which;
    for (const int64_t id : rows.ids[r])
      if (id != kEod) which.insert(id / 300);
    ASSERT_EQ(which.size(), 1u) << "row " << r << " mixes sources";
    ++count[size_t(*which.begin())];
  }
  // The greedy choice keeps each source within one row of its share.
  const double w[3] = {0.5, 0.3, 0.2};
  for (int j = 0; j < 3; ++j) EXPECT_LE(std::abs(double(count[j]) - w[j] * 1000), 1.0) << j;
}

TEST(DataStreamBlend, ChoiceOfSourcePerRowIsWithinOneRowOfItsShareAfterEveryRow) {
  DataStreamConfig c = pretrain_config(source("a", random_docs(10, 1, 5, 100, 11)), 4);
  c.sources[0].weight = 0.7;
  c.sources.push_back({source("b", random_docs(10, 1, 5, 200, 12)), 0.25, true});
  c.sources.push_back({source("c", random_docs(10, 1, 5, 300, 13)), 0.05, true});
  DataStream s(c);
  for (int n = 1; n <= 400; ++n) {
    s.next_batch(1);
    const nlohmann::json st = s.state();
    for (int j = 0; j < 3; ++j)
      ASSERT_LE(std::abs(st["sources"][j]["rows"].get<double>() - s.stats()[j].weight * n), 1.0)
          << "after row " << n << ", source " << j;
  }
}

TEST(DataStreamBlend, WeightThatIsNotPositiveIsAnErrorNamingTheEntry) {
  DataStreamConfig c = pretrain_config(source("a.jsonl", random_docs(4, 1, 5, 100, 14)), 8);
  c.sources.push_back({source("b.jsonl", random_docs(4, 1, 5, 200, 15)), 0.0, true});
  std::string msg = error_of([&] { DataStream s(c); });
  EXPECT_NE(msg.find("data source 1 (b.jsonl): weight"), std::string::npos) << msg;
  c.sources[1].weight = -2;
  msg = error_of([&] { DataStream s(c); });
  EXPECT_NE(msg.find("b.jsonl"), std::string::npos) << msg;
}

// --- split ----------------------------------------------------------------------------------

TEST(DataStreamSplit, TrainAndValidationNeverShareADocument) {
  const auto src = source("mem", random_docs(50, 1, 6, 100, 16));
  DataStreamConfig c = pretrain_config(src, 8);
  c.split = "80,20";
  std::set<int32_t> parts[2];
  for (int part = 0; part < 2; ++part) {
    c.split_part = part;
    DataStream s(c);
    EXPECT_EQ(s.stats()[0].documents, part == 0 ? 40 : 10);
    for (const auto& d : split_at_eod(take(s, 30, 4))) parts[part].insert(d[0]);
  }
  EXPECT_EQ(parts[0].size(), 40u);
  EXPECT_EQ(parts[1].size(), 10u);
  for (const int32_t tag : parts[1]) EXPECT_EQ(parts[0].count(tag), 0u) << tag;
  // Megatron's split is by contiguous document ranges: validation is the last 20%.
  EXPECT_EQ(*parts[1].begin(), 140);
}

TEST(DataStreamSplit, FractionsAndPercentagesAreTheSameSplit) {
  EXPECT_EQ(parse_split("0.98,0.02"), parse_split("98,2"));
  EXPECT_EQ(parse_split("969,30,1").size(), 3u);
  EXPECT_DOUBLE_EQ(parse_split("1")[0], 1.0);
  for (const char* bad : {"", "a,b", "1,2,3,4", "-1,2", "0,0", "1;2", "1,,2"})
    EXPECT_THROW(parse_split(bad), Error) << bad;
}

TEST(DataStreamSplit, APartLeftEmptyIsAnErrorWhenItIsUsed) {
  DataStreamConfig c = pretrain_config(source("small.bin", random_docs(10, 1, 6, 100, 17)), 8);
  c.split = "98,2";
  EXPECT_NO_THROW(DataStream{c});
  c.split_part = 1;
  const std::string msg = error_of([&] { DataStream s(c); });
  EXPECT_NE(msg.find("small.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("validation"), std::string::npos) << msg;
}

// --- bad data -------------------------------------------------------------------------------

TEST(DataStreamErrors, TokenIdOutsideTheVocabularyNamesTheSourceAndDocument) {
  std::vector<Document> docs = random_docs(5, 3, 3, 100, 18);
  docs[3].tokens[1] = int32_t(kVocab);
  DataStream s(pretrain_config(source("corpus_text_document", docs), 64));
  const std::string msg = error_of([&] { s.next_batch(1); });
  EXPECT_NE(msg.find("corpus_text_document"), std::string::npos) << msg;
  EXPECT_NE(msg.find("document 3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1000"), std::string::npos) << msg;
}

TEST(DataStreamErrors, EmptyDocumentsAreSkippedAndCounted) {
  std::vector<Document> docs = random_docs(6, 2, 5, 100, 19);
  docs[1].tokens.clear();
  docs[4].tokens.clear();
  DataStream s(pretrain_config(source("mem", docs), 8));
  EXPECT_EQ(s.stats()[0].empty_documents, 2);
  EXPECT_EQ(s.stats()[0].documents, 4);
  EXPECT_NE(s.summary().find("2 empty skipped"), std::string::npos) << s.summary();
  for (const auto& d : split_at_eod(take(s, 10, 2))) EXPECT_FALSE(d.empty());
}

TEST(DataStreamErrors, BadConfigValuesAreErrorsNamingTheField) {
  const auto src = source("mem", random_docs(4, 1, 5, 100, 20));
  const std::pair<const char*, std::function<void(DataStreamConfig&)>> cases[] = {
      {"seq_length", [](DataStreamConfig& c) { c.seq_length = 0; }},
      {"vocab_size", [](DataStreamConfig& c) { c.vocab_size = 0; }},
      {"eod_id", [](DataStreamConfig& c) { c.eod_id = -1; }},
      {"eod_id", [](DataStreamConfig& c) { c.eod_id = int32_t(kVocab); }},
      {"sources", [](DataStreamConfig& c) { c.sources.clear(); }},
      {"documents", [](DataStreamConfig& c) { c.sources[0].documents = nullptr; }},
      {"split_part", [](DataStreamConfig& c) { c.split_part = 3; }},
      {"pad_id",
       [](DataStreamConfig& c) {
         c.packing = Packing::Sft;
         c.pad_id = -5;
       }},
  };
  for (const auto& [field, edit] : cases) {
    DataStreamConfig c = pretrain_config(src, 8);
    edit(c);
    const std::string msg = error_of([&] { DataStream s(c); });
    EXPECT_NE(msg.find(field), std::string::npos) << field << ": " << msg;
  }
  DataStream s(pretrain_config(src, 8));
  EXPECT_THROW(s.next_batch(0), Error);
}

TEST(DataStreamErrors, MaskOfTheWrongLengthIsAnError) {
  std::vector<Document> docs = random_docs(2, 4, 4, 100, 21);
  docs[1].mask = {1, 0};
  EXPECT_THROW(InMemorySource("mem", docs), Error);
}

// --- SFT packing ----------------------------------------------------------------------------

TEST(DataStreamSft, RowsHoldWholeExamplesWithAlignedMasksThenPadding) {
  const auto docs = random_docs(40, 3, 20, 100, 22, true);
  DataStream s(sft_config(source("sft", docs), 32));
  const Rows rows = take(s, 10, 4);
  std::set<int32_t> seen;
  for (const auto& seg : segments(rows)) {
    const auto& ids = rows.ids[seg.row];
    const auto& tg = rows.targets[seg.row];
    const bool padding = seg.end == ids.size() && ids[seg.begin] == kPad;
    if (padding) {
      for (size_t t = seg.begin; t < seg.end; ++t) {
        EXPECT_EQ(ids[t], kPad);
        EXPECT_EQ(tg[t], -100);
      }
      continue;
    }
    const int32_t tag = int32_t(ids[seg.begin]);
    ASSERT_GE(tag, 100);
    ASSERT_LT(tag, 140);
    const Document& d = docs[size_t(tag - 100)];
    seen.insert(tag);
    ASSERT_EQ(seg.end - seg.begin, d.tokens.size()) << "example " << tag << " is split";
    for (size_t k = 0; k < d.tokens.size(); ++k) {
      EXPECT_EQ(ids[seg.begin + k], d.tokens[k]);
      const bool trained = k + 1 < d.tokens.size() && d.mask[k + 1];
      EXPECT_EQ(tg[seg.begin + k], trained ? d.tokens[k + 1] : -100) << tag << " at " << k;
    }
  }
  EXPECT_EQ(seen.size(), 40u);
  for (const auto& sq : rows.seq_idx) EXPECT_EQ(sq[0], 0);
}

TEST(DataStreamSft, EachRowOpenerDidNotFitInAnyEarlierRowOfItsWindow) {
  // One window holds one epoch of 30 examples; its rows are those until all 30 are seen.
  const auto docs = random_docs(30, 2, 17, 100, 23, true);
  DataStreamConfig c = sft_config(source("sft", docs), 24);
  c.pack_window = 30;
  DataStream s(c);
  std::vector<int64_t> fill;  // tokens used per row of the window
  std::vector<int64_t> opener;
  int64_t examples = 0;
  while (examples < 30) {
    const Rows r = take(s, 1, 1);
    int64_t used = 0, first = -1;
    for (const auto& seg : segments(r)) {
      if (r.ids[0][seg.begin] == kPad && seg.end == 24) continue;
      used += int64_t(seg.end - seg.begin);
      if (first < 0) first = int64_t(seg.end - seg.begin);
      ++examples;
    }
    fill.push_back(used);
    opener.push_back(first);
  }
  EXPECT_EQ(examples, 30);
  for (size_t j = 1; j < fill.size(); ++j)
    for (size_t i = 0; i < j; ++i)
      EXPECT_GT(opener[j], 24 - fill[i]) << "row " << j << " would have fitted in row " << i;
  // First-fit fills rows well on these lengths.
  int64_t total = 0;
  for (const auto& d : docs) total += int64_t(d.tokens.size());
  EXPECT_LE(int64_t(fill.size()), total / 24 + 3);
}

// sample_packing: false is a window of one: every row holds one example, then padding.
TEST(DataStreamSft, WindowOfOneGivesOneExamplePerRow) {
  const auto docs = random_docs(20, 2, 12, 100, 24, true);
  DataStreamConfig c = sft_config(source("sft", docs), 32);
  c.pack_window = 1;
  DataStream s(c);
  const Rows rows = take(s, 5, 4);
  std::vector<int> examples(rows.ids.size(), 0);
  for (const auto& seg : segments(rows))
    if (!(rows.ids[seg.row][seg.begin] == kPad && seg.end == rows.ids[seg.row].size()))
      ++examples[seg.row];
  for (size_t r = 0; r < examples.size(); ++r) EXPECT_EQ(examples[r], 1) << "row " << r;
}

TEST(DataStreamSft, LongExampleIsTruncatedToARowAndCounted) {
  std::vector<Document> docs = random_docs(5, 3, 6, 100, 24, true);
  docs[2] = random_docs(1, 40, 40, 102, 25)[0];
  docs[2].mask.assign(40, 1);
  DataStream s(sft_config(source("sft", docs), 16));
  EXPECT_EQ(s.stats()[0].long_examples, 1);
  EXPECT_NE(s.summary().find("1 longer than a row truncated"), std::string::npos);
  const Rows rows = take(s, 5, 2);
  bool found = false;
  for (size_t r = 0; r < rows.ids.size(); ++r)
    if (rows.ids[r][0] == 102) {
      found = true;
      EXPECT_EQ(rows.seq_idx[r], std::vector<int32_t>(16, 0));
      for (size_t k = 0; k < 16; ++k) EXPECT_EQ(rows.ids[r][k], docs[2].tokens[k]);
      EXPECT_EQ(rows.targets[r][15], -100);
    }
  EXPECT_TRUE(found);
}

TEST(DataStreamSft, LongExampleIsDroppedWhenAsked) {
  std::vector<Document> docs = random_docs(5, 3, 6, 100, 26, true);
  docs[2] = random_docs(1, 40, 40, 102, 27, true)[0];
  DataStreamConfig c = sft_config(source("sft", docs), 16);
  c.long_examples = LongExamples::Drop;
  DataStream s(c);
  EXPECT_EQ(s.stats()[0].long_examples, 1);
  EXPECT_EQ(s.stats()[0].documents, 4);
  for (const auto& r : take(s, 5, 2).ids)
    for (const int64_t id : r) EXPECT_NE(id, 102);
}

TEST(DataStreamSft, ExamplesWithNothingTrainedAreSkippedAndCounted) {
  std::vector<Document> docs = random_docs(5, 3, 6, 100, 28, true);
  std::fill(docs[0].mask.begin(), docs[0].mask.end(), 0);
  // A prompt longer than the row: truncated, the example would train nothing.
  docs[3] = random_docs(1, 40, 40, 103, 29, true)[0];
  DataStream s(sft_config(source("sft", docs), 16));
  EXPECT_EQ(s.stats()[0].untrained_documents, 2);
  EXPECT_EQ(s.stats()[0].documents, 3);
  for (const auto& r : take(s, 5, 2).ids)
    for (const int64_t id : r) {
      EXPECT_NE(id, 100);
      EXPECT_NE(id, 103);
    }
}

// --- resume ---------------------------------------------------------------------------------

void expect_resume_is_exact(const DataStreamConfig& c, int n, int m, int64_t rows) {
  DataStream a(c);
  take(a, n, rows);
  const std::string saved = a.state().dump();
  const Rows want = take(a, m, rows);
  DataStream b(c);
  b.restore(nlohmann::json::parse(saved));
  const Rows got = take(b, m, rows);
  EXPECT_EQ(got.ids, want.ids);
  EXPECT_EQ(got.targets, want.targets);
  EXPECT_EQ(got.seq_idx, want.seq_idx);
  EXPECT_EQ(a.state(), b.state());
}

TEST(DataStreamResume, PretrainingBlendResumesAtTheExactRow) {
  DataStreamConfig c = pretrain_config(source("a", random_docs(12, 1, 40, 100, 29)), 16);
  c.sources.push_back({source("b", random_docs(7, 1, 40, 200, 30)), 0.4, true});
  for (const int n : {0, 1, 3, 17}) expect_resume_is_exact(c, n, 9, 3);  // 17: past an epoch
}

TEST(DataStreamResume, SftResumesInsideAPackingWindow) {
  DataStreamConfig c = sft_config(source("a", random_docs(25, 2, 12, 100, 31, true)), 16);
  c.pack_window = 8;
  c.sources.push_back({source("b", random_docs(9, 2, 12, 200, 32, true)), 0.5, false});
  for (const int n : {0, 1, 2, 5, 11}) expect_resume_is_exact(c, n, 7, 2);
}

TEST(DataStreamResume, StateOfAnotherConfigIsAnErrorAndLeavesTheStreamAsItWas) {
  DataStreamConfig c = pretrain_config(source("a", random_docs(12, 1, 40, 100, 33)), 16);
  DataStream a(c);
  take(a, 3, 2);
  nlohmann::json st = a.state();
  c.seed = 7;
  DataStream b(c);
  EXPECT_NE(error_of([&] { b.restore(st); }).find("seed"), std::string::npos);
  c.seed = 1234;
  DataStream d(c), fresh(c);
  st["sources"][0]["offset"] = 100000;
  EXPECT_NE(error_of([&] { d.restore(st); }).find("offset"), std::string::npos);
  EXPECT_EQ(take(d, 2, 2).ids, take(fresh, 2, 2).ids);
  EXPECT_THROW(d.restore(nlohmann::json::array()), Error);
}

// --- JSONL sources --------------------------------------------------------------------------

TEST(DataStreamJsonl, TextRecordsBecomeDocuments) {
  test::TempDir tmp;
  write_text(tmp / "t.jsonl", "{\"text\": \"ab\"}\n\n{\"text\": \"cde\", \"id\": 3}\n");
  const auto src = load_text_jsonl(tmp / "t.jsonl", fake_encode_batch);
  ASSERT_EQ(src->num_documents(), 2);
  EXPECT_EQ(src->document(1).tokens, (std::vector<int32_t>{'c', 'd', 'e'}));
  DataStream s(pretrain_config(src, 7));
  EXPECT_EQ(take(s, 1, 1).ids[0].size(), 7u);
}

TEST(DataStreamJsonl, ChatRecordsBecomeMaskedExamples) {
  test::TempDir tmp;
  write_text(
      tmp / "c.jsonl",
      R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}]})"
      "\n");
  const auto src =
      load_chat_jsonl(tmp / "c.jsonl", chat_template_by_name("chatml"), fake_encode_batch);
  ASSERT_EQ(src->num_documents(), 1);
  const Document d = src->document(0);
  std::string trained;
  for (size_t i = 0; i < d.tokens.size(); ++i)
    if (d.mask[i]) trained += d.tokens[i] == kEod ? '$' : char(d.tokens[i]);
  EXPECT_EQ(trained, "ok$");
  EXPECT_EQ(src->trained_tokens(0), 3);
}

TEST(DataStreamJsonl, BadLinesAreErrorsNamingTheFileAndLine) {
  test::TempDir tmp;
  const std::string text = tmp / "t.jsonl", chat = tmp / "c.jsonl";
  write_text(text, "{\"text\": \"ab\"}\n{\"text\": 5}\n");
  std::string msg = error_of([&] { load_text_jsonl(text, fake_encode_batch); });
  EXPECT_NE(msg.find(text + ":2: text"), std::string::npos) << msg;
  write_text(text, "{\"text\": \"ab\"}\n{\"body\": \"x\"}\n");
  msg = error_of([&] { load_text_jsonl(text, fake_encode_batch); });
  EXPECT_NE(msg.find(text + ":2: text"), std::string::npos) << msg;
  write_text(text, "{\"text\": \"ab\"\n");
  msg = error_of([&] { load_text_jsonl(text, fake_encode_batch); });
  EXPECT_NE(msg.find(text + ":1: record"), std::string::npos) << msg;
  write_text(chat,
             "{\"messages\": []}\n\n{\"messages\": [{\"role\": \"user\", \"content\": 1}]}\n");
  msg =
      error_of([&] { load_chat_jsonl(chat, chat_template_by_name("chatml"), fake_encode_batch); });
  EXPECT_NE(msg.find(chat + ":3: messages[0].content"), std::string::npos) << msg;
  msg = error_of([&] { load_text_jsonl(tmp / "missing.jsonl", fake_encode_batch); });
  EXPECT_NE(msg.find("missing.jsonl"), std::string::npos) << msg;
}

// --- Megatron indexed datasets -------------------------------------------------------------

// Writes the documents to PREFIX.bin/.idx, each split into two sequences when it has more
// than one token (as preprocess_data's sentence splitting does).
void write_indexed(const std::string& prefix, const std::vector<Document>& docs) {
  IndexedDatasetWriter w(prefix, TokenDType::U16);
  for (const auto& d : docs) {
    const size_t half = d.tokens.size() / 2;
    w.add_sequence({d.tokens.begin(), d.tokens.begin() + long(half)});
    if (half < d.tokens.size()) w.add_sequence({d.tokens.begin() + long(half), d.tokens.end()});
    w.end_document();
  }
  w.finalize();
}

TEST(DataStreamIndexed, DocumentsAreTheirSequencesBackToBackWithEod) {
  test::TempDir tmp;
  const auto docs = random_docs(12, 1, 20, 100, 40);
  write_indexed(tmp / "corpus_text_document", docs);
  const auto src = open_indexed_dataset(tmp / "corpus_text_document");
  ASSERT_EQ(src->num_documents(), 12);
  for (int64_t d = 0; d < 12; ++d) {
    EXPECT_EQ(src->document_length(d), int64_t(docs[size_t(d)].tokens.size()));
    EXPECT_EQ(src->document(d).tokens, docs[size_t(d)].tokens);
  }
  DataStream s(pretrain_config(src, 16));
  const auto seen = split_at_eod(take(s, 10, 2));
  ASSERT_GE(seen.size(), 12u);
  std::set<int32_t> tags;
  for (size_t k = 0; k < 12; ++k) {
    EXPECT_EQ(seen[k], docs.at(size_t(seen[k][0] - 100)).tokens);
    tags.insert(seen[k][0]);
  }
  EXPECT_EQ(tags.size(), 12u);
}

TEST(DataStreamIndexed, TokenOutsideTheVocabularyNamesTheDatasetAndDocument) {
  test::TempDir tmp;
  auto docs = random_docs(4, 2, 5, 100, 41);
  docs[2].tokens.back() = 1500;
  write_indexed(tmp / "ds", docs);
  DataStream s(pretrain_config(open_indexed_dataset(tmp / "ds"), 64));
  const std::string msg = error_of([&] { s.next_batch(1); });
  EXPECT_NE(msg.find(tmp / "ds"), std::string::npos) << msg;
  EXPECT_NE(msg.find("document 2"), std::string::npos) << msg;
}

TEST(DataStreamIndexed, EmptyDocumentsAreSkippedAndCounted) {
  test::TempDir tmp;
  auto docs = random_docs(5, 2, 5, 100, 42);
  docs[3].tokens.clear();
  write_indexed(tmp / "ds", docs);
  DataStream s(pretrain_config(open_indexed_dataset(tmp / "ds"), 8));
  EXPECT_EQ(s.stats()[0].empty_documents, 1);
  EXPECT_EQ(s.stats()[0].documents, 4);
}

}  // namespace nh
