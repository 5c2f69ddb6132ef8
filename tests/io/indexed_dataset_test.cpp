#include "io/indexed_dataset.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "io/indexed_dataset_format.h"
#include "io/io_test_util.h"

namespace nh {
namespace {

namespace fs = std::filesystem;
using test::read_bytes;
using test::write_bytes;
using Sequences = std::vector<std::vector<int32_t>>;

const std::string kFixtures = std::string(NH_SOURCE_DIR) + "/tests/data/megatron/";

constexpr TokenDType kAllDtypes[] = {TokenDType::U8,  TokenDType::I8,  TokenDType::I16,
                                     TokenDType::I32, TokenDType::I64, TokenDType::F64,
                                     TokenDType::F32, TokenDType::U16};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

// The ids each dtype holds exactly, as the writer checks them.
std::pair<int64_t, int64_t> id_range(TokenDType t) {
  switch (t) {
    case TokenDType::U8:
      return {0, 255};
    case TokenDType::I8:
      return {-128, 127};
    case TokenDType::I16:
      return {-32768, 32767};
    case TokenDType::U16:
      return {0, 65535};
    case TokenDType::F32:
      return {-(1 << 24), 1 << 24};
    default:
      return {INT32_MIN, INT32_MAX};
  }
}

// Random sequences with both ends of the dtype's range, and an empty sequence.
Sequences random_sequences(TokenDType t, uint64_t seed) {
  const auto [lo, hi] = id_range(t);
  Rng rng(seed);
  Sequences out;
  for (int s = 0; s < 9; ++s) {
    std::vector<int32_t> seq(s == 4 ? 0 : 1 + rng.next() % 40);
    for (auto& id : seq) id = int32_t(lo + int64_t(rng.next() % uint64_t(hi - lo + 1)));
    if (!seq.empty() && s == 1) seq.front() = int32_t(lo);
    if (!seq.empty() && s == 2) seq.back() = int32_t(hi);
    out.push_back(seq);
  }
  return out;
}

// Writes `sequences`, ending a document after each index in `ends` (exclusive sequence counts).
void write_dataset(const std::string& prefix, TokenDType t, const Sequences& sequences,
                   const std::vector<size_t>& ends) {
  IndexedDatasetWriter w(prefix, t);
  size_t next_end = 0;
  for (size_t i = 0; i < sequences.size(); ++i) {
    w.add_sequence(sequences[i]);
    while (next_end < ends.size() && ends[next_end] == i + 1) {
      w.end_document();
      ++next_end;
    }
  }
  w.finalize();
}

class IndexedDatasetTest : public test::TempDirTest {
 protected:
  // A valid dataset under `name` whose .idx bytes the corruption tests then edit.
  std::string make_valid(const std::string& name) {
    const std::string prefix = path(name);
    write_dataset(prefix, TokenDType::U16, {{1, 2, 3}, {4}, {5, 6}}, {1, 3});
    return prefix;
  }
  // Overwrites `n` bytes of PREFIX.idx at `offset` with the little-endian bytes of `value`.
  template <class T>
  void patch_idx(const std::string& prefix, size_t offset, T value) {
    std::string bytes = read_bytes(prefix + ".idx");
    ASSERT_LE(offset + sizeof(T), bytes.size());
    std::memcpy(bytes.data() + offset, &value, sizeof(T));
    write_bytes(prefix + ".idx", bytes);
  }
  // Opening PREFIX must fail with a message naming `file` and containing `field`.
  void expect_open_error(const std::string& prefix, const std::string& file,
                         const std::string& field) {
    const std::string msg = error_of([&] { IndexedDataset d(prefix); });
    EXPECT_NE(msg.find(file), std::string::npos) << msg;
    EXPECT_NE(msg.find(field), std::string::npos) << msg;
  }
};

// Offsets of the three arrays in the .idx made by make_valid (3 sequences, 3 document indices).
constexpr size_t kLengths = 34, kPointers = 34 + 3 * 4, kDocs = 34 + 3 * 12;

TEST_F(IndexedDatasetTest, RoundTripKeepsIdsAndDocumentsForEveryDtype) {
  uint64_t seed = 1;
  for (TokenDType t : kAllDtypes) {
    SCOPED_TRACE(token_dtype_name(t));
    const Sequences seqs = random_sequences(t, seed++);
    const std::string prefix = path(std::string("ds_") + token_dtype_name(t));
    write_dataset(prefix, t, seqs, {2, 3, 3, 7, 9});
    const IndexedDataset d(prefix);
    EXPECT_EQ(d.dtype(), t);
    ASSERT_EQ(d.num_sequences(), int64_t(seqs.size()));
    int64_t total = 0;
    for (size_t i = 0; i < seqs.size(); ++i) {
      EXPECT_EQ(d.sequence_length(int64_t(i)), int64_t(seqs[i].size()));
      EXPECT_EQ(d.get(int64_t(i)), seqs[i]) << "sequence " << i;
      total += int64_t(seqs[i].size());
    }
    EXPECT_EQ(d.total_tokens(), total);
    EXPECT_EQ(fs::file_size(prefix + ".bin"), uint64_t(total) * token_dtype_size(t));
    // An empty document (3..3) is kept: Megatron's builder writes them too.
    ASSERT_EQ(d.num_documents(), 5);
    EXPECT_EQ(d.document(0), std::make_pair(int64_t(0), int64_t(2)));
    EXPECT_EQ(d.document(2), std::make_pair(int64_t(3), int64_t(3)));
    EXPECT_EQ(d.document(4), std::make_pair(int64_t(7), int64_t(9)));
  }
}

TEST_F(IndexedDatasetTest, GetReturnsTheRequestedWindow) {
  const std::string prefix = path("w");
  write_dataset(prefix, TokenDType::I32, {{10, 11, 12, 13, 14}}, {1});
  const IndexedDataset d(prefix);
  EXPECT_EQ(d.get(0, 1, 3), (std::vector<int32_t>{11, 12, 13}));
  EXPECT_EQ(d.get(0, 3), (std::vector<int32_t>{13, 14}));
  EXPECT_EQ(d.get(0, 5), std::vector<int32_t>{});
  EXPECT_NE(error_of([&] { d.get(0, 6); }).find("offset"), std::string::npos);
  EXPECT_NE(error_of([&] { d.get(0, -1); }).find("offset"), std::string::npos);
  EXPECT_NE(error_of([&] { d.get(0, 2, 4); }).find("length"), std::string::npos);
  EXPECT_NE(error_of([&] { d.get(1); }).find("sequence index"), std::string::npos);
  EXPECT_NE(error_of([&] { d.sequence_length(-1); }).find("sequence index"), std::string::npos);
  EXPECT_NE(error_of([&] { d.document(1); }).find("document index"), std::string::npos);
}

TEST_F(IndexedDatasetTest, FinalizeEndsAnOpenDocumentAndEmptyDatasetsWork) {
  write_dataset(path("open"), TokenDType::U16, {{1}, {2}}, {1});
  const IndexedDataset open(path("open"));
  ASSERT_EQ(open.num_documents(), 2);
  EXPECT_EQ(open.document(1), std::make_pair(int64_t(1), int64_t(2)));

  write_dataset(path("empty"), TokenDType::U16, {}, {});
  const IndexedDataset empty(path("empty"));
  EXPECT_EQ(empty.num_sequences(), 0);
  EXPECT_EQ(empty.num_documents(), 0);
  EXPECT_EQ(empty.total_tokens(), 0);
  EXPECT_EQ(fs::file_size(path("empty.idx")), kMegatronIndexHeaderBytes + 8);
}

// tests/data/megatron/*.{bin,idx} were written by tools/make_megatron_fixture.py with numpy,
// following Megatron's layout; *.json holds what they contain.
struct Fixture {
  std::string name;
  TokenDType dtype;
  Sequences sequences;
  std::vector<int64_t> document_indices;
};

Fixture load_fixture(const std::string& name) {
  const auto j = nlohmann::json::parse(read_bytes(kFixtures + name + ".json"));
  return {name, TokenDType(j["dtype_code"].get<int>()), j["sequences"].get<Sequences>(),
          j["document_indices"].get<std::vector<int64_t>>()};
}

TEST_F(IndexedDatasetTest, ReadsFilesWrittenWithMegatronsLayout) {
  for (const std::string name : {"tiny", "tiny_int32"}) {
    SCOPED_TRACE(name);
    const Fixture f = load_fixture(name);
    const IndexedDataset d(kFixtures + name);
    EXPECT_EQ(d.dtype(), f.dtype);
    ASSERT_EQ(d.num_sequences(), int64_t(f.sequences.size()));
    for (size_t i = 0; i < f.sequences.size(); ++i) EXPECT_EQ(d.get(int64_t(i)), f.sequences[i]);
    ASSERT_EQ(d.num_documents(), int64_t(f.document_indices.size()) - 1);
    for (int64_t k = 0; k < d.num_documents(); ++k)
      EXPECT_EQ(d.document(k),
                std::make_pair(f.document_indices[size_t(k)], f.document_indices[size_t(k) + 1]));
  }
}

TEST_F(IndexedDatasetTest, WriterReproducesMegatronFilesByteForByte) {
  for (const std::string name : {"tiny", "tiny_int32"}) {
    SCOPED_TRACE(name);
    const Fixture f = load_fixture(name);
    std::vector<size_t> ends;
    for (size_t k = 1; k < f.document_indices.size(); ++k)
      ends.push_back(size_t(f.document_indices[k]));
    write_dataset(path(name), f.dtype, f.sequences, ends);
    EXPECT_EQ(read_bytes(path(name) + ".idx"), read_bytes(kFixtures + name + ".idx"));
    EXPECT_EQ(read_bytes(path(name) + ".bin"), read_bytes(kFixtures + name + ".bin"));
  }
}

TEST_F(IndexedDatasetTest, EveryTruncationOfTheIndexIsAnError) {
  const std::string idx = read_bytes(kFixtures + "tiny.idx");
  const std::string bin = read_bytes(kFixtures + "tiny.bin");
  write_bytes(path("t.bin"), bin);
  for (size_t n = 0; n < idx.size(); ++n) {
    write_bytes(path("t.idx"), idx.substr(0, n));
    const std::string msg = error_of([&] { IndexedDataset d(path("t")); });
    EXPECT_NE(msg.find(path("t.idx")), std::string::npos) << n << ": " << msg;
  }
}

TEST_F(IndexedDatasetTest, EveryTruncationOfTheDataIsAnError) {
  const std::string bin = read_bytes(kFixtures + "tiny.bin");
  write_bytes(path("t.idx"), read_bytes(kFixtures + "tiny.idx"));
  for (size_t n = 0; n < bin.size(); ++n) {
    write_bytes(path("t.bin"), bin.substr(0, n));
    expect_open_error(path("t"), path("t.bin"), "file size");
  }
  write_bytes(path("t.bin"), bin + "xx");
  expect_open_error(path("t"), path("t.bin"), "file size");
}

TEST_F(IndexedDatasetTest, BadHeaderFieldsAreErrorsNamingTheField) {
  std::string p = make_valid("magic");
  patch_idx<char>(p, 3, 'X');
  expect_open_error(p, p + ".idx", "magic");

  p = make_valid("version");
  patch_idx<uint64_t>(p, 9, 2);
  expect_open_error(p, p + ".idx", "version");

  for (uint8_t code : {uint8_t(0), uint8_t(9), uint8_t(255)}) {
    p = make_valid("code" + std::to_string(code));
    patch_idx<uint8_t>(p, 17, code);
    expect_open_error(p, p + ".idx", "dtype code");
  }
}

TEST_F(IndexedDatasetTest, CountsLargerThanTheFileAreErrors) {
  std::string p = make_valid("seqs");
  patch_idx<uint64_t>(p, 18, uint64_t(1) << 62);
  expect_open_error(p, p + ".idx", "sequence count");

  p = make_valid("docs");
  patch_idx<uint64_t>(p, 26, ~uint64_t(0));
  expect_open_error(p, p + ".idx", "document count");

  // Counts that fit but do not add up to the file's size.
  p = make_valid("size");
  patch_idx<uint64_t>(p, 26, 2);
  expect_open_error(p, p + ".idx", "file size");

  p = make_valid("nodocs");
  write_bytes(p + ".idx", serialize_megatron_index(TokenDType::U16, {3, 1, 2}, {}));
  expect_open_error(p, p + ".idx", "document count");
}

TEST_F(IndexedDatasetTest, MultimodalSequenceModesAreRejectedClearly) {
  const std::string p = make_valid("mm");
  write_bytes(p + ".idx", read_bytes(p + ".idx") + std::string(3, '\0'));
  expect_open_error(p, p + ".idx", "sequence modes");
}

TEST_F(IndexedDatasetTest, LengthsAndPointersMustMatchTheData) {
  std::string p = make_valid("neg");
  patch_idx<int32_t>(p, kLengths + 4, -1);
  expect_open_error(p, p + ".idx", "sequence_lengths[1]");

  // Lengths that no longer sum to the .bin's size.
  p = make_valid("long");
  patch_idx<int32_t>(p, kLengths, 4);
  expect_open_error(p, p + ".idx", "sequence_pointers[1]");
  p = make_valid("huge");
  patch_idx<int32_t>(p, kLengths + 8, INT32_MAX);
  expect_open_error(p, p + ".bin", "file size");

  p = make_valid("ptr");
  patch_idx<int64_t>(p, kPointers + 8, 4);
  expect_open_error(p, p + ".idx", "sequence_pointers[1]");
  p = make_valid("ptr0");
  patch_idx<int64_t>(p, kPointers, 2);
  expect_open_error(p, p + ".idx", "sequence_pointers[0]");
  p = make_valid("ptrneg");
  patch_idx<int64_t>(p, kPointers + 16, INT64_MIN);
  expect_open_error(p, p + ".idx", "sequence_pointers[2]");
}

TEST_F(IndexedDatasetTest, DocumentIndicesMustStartAtZeroRiseAndEndAtTheSequenceCount) {
  std::string p = make_valid("first");
  patch_idx<int64_t>(p, kDocs, 1);
  expect_open_error(p, p + ".idx", "document_indices[0]");
  p = make_valid("down");
  patch_idx<int64_t>(p, kDocs + 8, -1);
  expect_open_error(p, p + ".idx", "document_indices[1]");
  p = make_valid("beyond");
  patch_idx<int64_t>(p, kDocs + 8, 4);
  expect_open_error(p, p + ".idx", "document_indices[1]");
  p = make_valid("last");
  patch_idx<int64_t>(p, kDocs + 16, 2);
  expect_open_error(p, p + ".idx", "document_indices[2]");
}

TEST_F(IndexedDatasetTest, MissingFilesAreErrorsNamingThem) {
  std::string p = make_valid("nobin");
  fs::remove(p + ".bin");
  expect_open_error(p, p + ".bin", "file");
  p = make_valid("noidx");
  fs::remove(p + ".idx");
  expect_open_error(p, p + ".idx", "file");
}

TEST_F(IndexedDatasetTest, StoredTokensInt32CannotHoldAreErrorsWhenRead) {
  const std::string p = path("wide");
  write_bytes(p + ".idx", serialize_megatron_index(TokenDType::I64, {2}, {0, 1}));
  const int64_t i64[2] = {7, int64_t(1) << 40};
  write_bytes(p + ".bin", std::string(reinterpret_cast<const char*>(i64), sizeof i64));
  const IndexedDataset d(p);
  EXPECT_EQ(d.get(0, 0, 1), std::vector<int32_t>{7});
  EXPECT_NE(error_of([&] { d.get(0); }).find("sequence 0 token 1"), std::string::npos);

  const std::string q = path("frac");
  write_bytes(q + ".idx", serialize_megatron_index(TokenDType::F32, {2}, {0, 1}));
  const float f32[2] = {3.0f, 2.5f};
  write_bytes(q + ".bin", std::string(reinterpret_cast<const char*>(f32), sizeof f32));
  const IndexedDataset e(q);
  EXPECT_NE(error_of([&] { e.get(0); }).find("token 1"), std::string::npos);
}

TEST_F(IndexedDatasetTest, IdsOutsideTheDtypeAreErrorsAndLeaveTheWriterUsable) {
  for (TokenDType t : kAllDtypes) {
    const auto [lo, hi] = id_range(t);
    if (lo == INT32_MIN && hi == INT32_MAX) continue;  // int32 ids always fit
    SCOPED_TRACE(token_dtype_name(t));
    const std::string prefix = path(std::string("range_") + token_dtype_name(t));
    IndexedDatasetWriter w(prefix, t);
    w.add_sequence({int32_t(lo), int32_t(hi)});
    std::string msg = error_of([&] { w.add_sequence({1, int32_t(hi + 1)}); });
    EXPECT_NE(msg.find("sequence 1 token 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find(token_dtype_name(t)), std::string::npos) << msg;
    msg = error_of([&] { w.add_sequence({int32_t(lo - 1)}); });
    EXPECT_NE(msg.find("sequence 1 token 0"), std::string::npos) << msg;
    w.add_sequence({2});
    w.end_document();
    w.finalize();
    const IndexedDataset d(prefix);
    ASSERT_EQ(d.num_sequences(), 2);
    EXPECT_EQ(d.get(0), (std::vector<int32_t>{int32_t(lo), int32_t(hi)}));
    EXPECT_EQ(d.get(1), std::vector<int32_t>{2});
  }
}

TEST_F(IndexedDatasetTest, AWriteThatFailsOrIsAbandonedLeavesNoFiles) {
  {
    IndexedDatasetWriter w(path("abandoned"), TokenDType::U16);
    w.add_sequence(std::vector<int32_t>(300000, 5));  // past the write buffer: bytes on disk
    w.end_document();
    EXPECT_NE(error_of([&] { w.add_sequence({70000}); }).find("uint16"), std::string::npos);
  }
  EXPECT_TRUE(fs::is_empty(dir_)) << "files left in " << dir_;

  const std::string msg =
      error_of([&] { IndexedDatasetWriter w(path("no/such/dir/x"), TokenDType::U16); });
  EXPECT_NE(msg.find(path("no/such/dir/x.bin")), std::string::npos) << msg;
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST(TokenDtypeForVocab, PicksUint16BelowMegatronsThresholdElseInt32) {
  EXPECT_EQ(token_dtype_for_vocab(32000), TokenDType::U16);
  EXPECT_EQ(token_dtype_for_vocab(65499), TokenDType::U16);
  EXPECT_EQ(token_dtype_for_vocab(65500), TokenDType::I32);
  EXPECT_EQ(token_dtype_for_vocab(131072), TokenDType::I32);
}

}  // namespace
}  // namespace nh
