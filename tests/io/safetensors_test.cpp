#include "io/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "io/io_test_util.h"

namespace nh {
namespace {

using test::random_bits;
using test::read_bytes;
using test::same_bits;
using test::write_bytes;
using Named = std::vector<std::pair<std::string, Tensor>>;

constexpr DType kAllDtypes[] = {DType::F64, DType::F32, DType::F16, DType::BF16,
                                DType::I64, DType::I32, DType::U8};

// The raw bytes of a safetensors file: length field (the header's size unless
// given), header, data.
std::string file_bytes(const std::string& header, const std::string& data = "",
                       uint64_t length = ~uint64_t(0)) {
  if (length == ~uint64_t(0)) length = header.size();
  std::string out(8, '\0');
  for (int b = 0; b < 8; ++b) out[b] = char(uint8_t(length >> (8 * b)));
  return out + header + data;
}

class SafetensorsTest : public test::TempDirTest {
 protected:
  // The message of the Error both readers raise on these bytes; the file
  // reader's must name the path.
  std::string rejection(const std::string& bytes) {
    const std::string p = path("bad.safetensors");
    write_bytes(p, bytes);
    std::string message;
    try {
      SafetensorsFile f(p);
      ADD_FAILURE() << "the file was accepted";
    } catch (const Error& e) {
      message = e.what();
      EXPECT_NE(message.find(p), std::string::npos) << message;
    }
    EXPECT_THROW(parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()),
                                          bytes.size(), "buffer"),
                 Error);
    return message;
  }
};

TEST_F(SafetensorsTest, RoundTripsEveryDtypeBitIdentically) {
  Named tensors;
  uint64_t seed = 1;
  for (DType d : kAllDtypes) {
    tensors.emplace_back(std::string("w.") + dtype_name(d), random_bits({3, 7}, d, seed++));
    tensors.emplace_back(std::string("v.") + dtype_name(d), random_bits({5}, d, seed++));
  }
  tensors.emplace_back("scalar", random_bits({}, DType::F32, seed++));
  tensors.emplace_back("empty", random_bits({2, 0, 3}, DType::BF16, seed++));
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "x y"}};
  write_safetensors(path("a.safetensors"), tensors, meta);

  SafetensorsFile f(path("a.safetensors"));
  ASSERT_EQ(f.names().size(), tensors.size());
  EXPECT_EQ(f.metadata(), meta);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    EXPECT_EQ(f.names()[i], name);  // header order is the caller's order
    EXPECT_TRUE(f.has(name));
    EXPECT_EQ(f.info(name).dtype, t.dtype());
    EXPECT_EQ(f.info(name).shape, t.shape());
    EXPECT_TRUE(same_bits(f.get(name), t)) << name;
  }
  EXPECT_FALSE(f.has("missing"));
}

TEST_F(SafetensorsTest, HeaderIsPaddedAndEveryTensorAlignedToItsElementSize) {
  // Odd sizes in an order that would misalign F64/F32 if the data were stored as given.
  const Named tensors = {{"u8", random_bits({3}, DType::U8, 1)},
                         {"bf16", random_bits({5}, DType::BF16, 2)},
                         {"f64", random_bits({3}, DType::F64, 3)},
                         {"f32", random_bits({7}, DType::F32, 4)}};
  write_safetensors(path("a.safetensors"), tensors);
  const std::string bytes = read_bytes(path("a.safetensors"));
  const SafetensorsHeader h =
      parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "a");
  EXPECT_EQ(h.data_start % 8, 0u);
  EXPECT_EQ(bytes[h.data_start - 1], ' ');  // padding is spaces, as the reference writer's
  uint64_t data_bytes = 0;
  for (const auto& [name, t] : tensors) {
    EXPECT_EQ(h.tensors.at(name).begin % dtype_size(t.dtype()), 0u) << name;
    data_bytes += t.nbytes();
  }
  EXPECT_EQ(bytes.size(), h.data_start + data_bytes);  // no gaps: the reference reader needs that
  SafetensorsFile f(path("a.safetensors"));
  // Zero-copy: two views of a tensor share the mapped bytes.
  EXPECT_EQ(f.get("f64").raw(), f.get("f64").raw());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.get("f64").raw()) % 8, 0u);
}

TEST_F(SafetensorsTest, MisalignedTensorOfAnotherWriterIsCopiedAligned) {
  // A 1-byte U8 tensor first pushes the F32 tensor to data offset 1; header unpadded.
  const std::string header = R"({"u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                             R"("f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  const float values[2] = {1.5f, -2.25f};
  std::string data(1, '\7');
  data.append(reinterpret_cast<const char*>(values), 8);
  write_bytes(path("m.safetensors"), file_bytes(header, data));
  SafetensorsFile f(path("m.safetensors"));
  const Tensor t = f.get("f");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 4, 0u);
  EXPECT_EQ(t.data<float>()[0], 1.5f);
  EXPECT_EQ(t.data<float>()[1], -2.25f);
  EXPECT_EQ(f.get("u").data<uint8_t>()[0], 7);
}

TEST_F(SafetensorsTest, ViewOutlivesTheFileObjectAndAReplacedFile) {
  const Tensor t = random_bits({4, 3}, DType::F32, 5);
  write_safetensors(path("a.safetensors"), {{"t", t}});
  Tensor view;
  {
    SafetensorsFile f(path("a.safetensors"));
    view = f.get("t");
  }
  // The writer renames a new file over the old one, so the old mapping stays valid.
  write_safetensors(path("a.safetensors"), {{"t", random_bits({4, 3}, DType::F32, 6)}});
  std::filesystem::remove(path("a.safetensors"));
  EXPECT_TRUE(same_bits(view, t));
}

TEST_F(SafetensorsTest, EmptyFileHasNoTensorsAndMetadataIsOptional) {
  write_safetensors(path("e.safetensors"), {});
  SafetensorsFile f(path("e.safetensors"));
  EXPECT_TRUE(f.names().empty());
  EXPECT_TRUE(f.metadata().empty());
}

TEST_F(SafetensorsTest, UnknownTensorNameThrowsNamingFileAndTensor) {
  write_safetensors(path("a.safetensors"), {{"t", random_bits({2}, DType::F32, 7)}});
  SafetensorsFile f(path("a.safetensors"));
  try {
    f.get("nope");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path("a.safetensors")), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("\"nope\""), std::string::npos);
  }
}

TEST_F(SafetensorsTest, MissingFileAndDirectoryThrowNamingThePath) {
  EXPECT_THROW(SafetensorsFile(path("none.safetensors")), Error);
  EXPECT_THROW(SafetensorsFile{dir_}, Error);
}

struct BadCase {
  const char* what;
  std::string bytes;
  const char* needle;  // must appear in the message
};

TEST_F(SafetensorsTest, EveryMalformedHeaderThrowsNamingFileAndField) {
  const std::string f32x2 = R"("dtype":"F32","shape":[2])";
  const std::string ok = R"({"a":{)" + f32x2 + R"(,"data_offsets":[0,8]}})";
  const std::string eight(8, 'x');
  const std::string deep = std::string(5000, '[') + std::string(5000, ']');
  const std::string valid = file_bytes(ok, eight);
  auto one = [&](const std::string& entry, const std::string& data = std::string(8, 'x')) {
    return file_bytes(R"({"a":)" + entry + "}", data);
  };
  const std::vector<BadCase> cases = {
      {"empty file", "", "at least 8 bytes"},
      {"7 bytes", "1234567", "at least 8 bytes"},
      {"length beyond the file", file_bytes("{}", "", 100), "header length"},
      {"absurd length", file_bytes("{}", "", 200'000'000), "at most 100000000"},
      {"length 2^64-1", file_bytes("{}", "", ~uint64_t(0) - 1), "header length"},
      {"truncated header", valid.substr(0, 20), "header length"},
      {"truncated data", valid.substr(0, valid.size() - 3), "size of the data section"},
      {"not JSON", file_bytes("{not json"), "valid JSON"},
      {"invalid UTF-8", file_bytes("{\"\xff\":1}"), "valid JSON"},
      {"not an object", file_bytes("[1,2]"), "a JSON object"},
      {"entry not an object", one("5"), "tensor \"a\""},
      {"deeply nested entry", one(deep), "nested at most 16 deep"},
      {"no dtype", one(R"({"shape":[2],"data_offsets":[0,8]})"), "\"a\": dtype"},
      {"no shape", one(R"({"dtype":"F32","data_offsets":[0,8]})"), "\"a\": shape"},
      {"no data_offsets", one("{" + f32x2 + "}"), "\"a\": data_offsets"},
      {"unknown dtype", one(R"({"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]})"), "F8_E4M3"},
      {"dtype not a string", one(R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})"), "dtype"},
      {"shape not a list", one(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"), "shape"},
      {"negative dimension", one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), "[-2]"},
      {"fractional dimension", one(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})"),
       "shape"},
      {"string dimension", one(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})"), "shape"},
      {"dimension of 2^64-1",
       one(R"({"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,8]})"), "shape"},
      {"element count overflows",
       one(R"({"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,8]})"),
       "2^63 elements"},
      {"overflow before a zero dimension",
       one(R"({"dtype":"U8","shape":[1099511627776,1099511627776,0],"data_offsets":[0,0]})"),
       "2^63 elements"},
      {"byte count overflows",
       one(R"({"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]})"), "2^63 bytes"},
      {"one offset", one("{" + f32x2 + R"(,"data_offsets":[0]})"), "data_offsets"},
      {"negative offset", one("{" + f32x2 + R"(,"data_offsets":[-8,0]})"), "data_offsets"},
      {"begin after end", one("{" + f32x2 + R"(,"data_offsets":[8,0]})"), "begin <= end"},
      {"fractional offset", one("{" + f32x2 + R"(,"data_offsets":[0,8.0]})"), "data_offsets"},
      {"offsets not a list", one("{" + f32x2 + R"(,"data_offsets":"0-8"})"), "data_offsets"},
      {"end beyond the data", one("{" + f32x2 + R"(,"data_offsets":[0,16]})"),
       "size of the data section"},
      {"size does not match shape", one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"),
       "end - begin = 12 bytes"},
      {"overlapping tensors",
       file_bytes(R"({"a":{)" + f32x2 + R"(,"data_offsets":[0,8]},"b":{)" + f32x2 +
                      R"(,"data_offsets":[4,12]}})",
                  std::string(12, 'x')),
       "overlap"},
      {"duplicate name",
       file_bytes(R"({"a":{)" + f32x2 + R"(,"data_offsets":[0,8]},"a":{)" + f32x2 +
                      R"(,"data_offsets":[8,16]}})",
                  std::string(16, 'x')),
       "tensor \"a\""},
      {"metadata not an object", file_bytes(R"({"__metadata__":3})"), "__metadata__"},
      {"metadata value not a string", file_bytes(R"({"__metadata__":{"k":1}})"),
       "__metadata__: \"k\""},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string message = rejection(c.bytes);
    EXPECT_NE(message.find(c.needle), std::string::npos) << message;
  }
  // The well-formed base of these cases is accepted, so each case fails for its own reason.
  write_bytes(path("ok.safetensors"), valid);
  EXPECT_EQ(SafetensorsFile(path("ok.safetensors")).names().size(), 1u);
}

TEST_F(SafetensorsTest, FailedWritesLeaveTheExistingFileIntact) {
  const std::string p = path("a.safetensors");
  write_safetensors(p, {{"t", random_bits({3}, DType::F32, 8)}});
  const std::string before = read_bytes(p);
  const Named other = {{"t", random_bits({4}, DType::F32, 9)}};

  // The temporary cannot be created: its name is taken by a directory.
  std::filesystem::create_directory(p + ".tmp-" + std::to_string(::getpid()));
  try {
    write_safetensors(p, other);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_bytes(p), before);
  std::filesystem::remove(p + ".tmp-" + std::to_string(::getpid()));

  // Bad input is refused before anything is written.
  EXPECT_THROW(write_safetensors(p, {{"t", Tensor()}}), Error);
  EXPECT_THROW(write_safetensors(p, {{"t", other[0].second}, {"t", other[0].second}}), Error);
  EXPECT_EQ(read_bytes(p), before);

  // A directory that does not exist.
  EXPECT_THROW(write_safetensors(path("no/such/dir/a.safetensors"), other), Error);

  // The rename fails (the target is a non-empty directory): the temporary is removed.
  std::filesystem::create_directories(path("d/x"));
  EXPECT_THROW(write_safetensors(path("d"), other), Error);
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) files += e.is_regular_file();
  EXPECT_EQ(files, 1u);  // only a.safetensors: no temporary left behind
}

TEST_F(SafetensorsTest, InteroperatesWithThePythonSafetensorsLibrary) {
  if (std::system("python3 -c 'import safetensors.numpy, numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 with safetensors and numpy is not available";
  // numpy has no bfloat16, so BF16 is left out here.
  Named tensors;
  uint64_t seed = 20;
  for (DType d : kAllDtypes)
    if (d != DType::BF16)
      tensors.emplace_back(std::string("t.") + dtype_name(d), random_bits({3, 5}, d, seed++));
  write_safetensors(path("ours.safetensors"), tensors, {{"format", "pt"}});
  // Python reads our file and writes its own copy, which we read back.
  const std::string script =
      "import sys\n"
      "from safetensors import safe_open\n"
      "from safetensors.numpy import save_file\n"
      "with safe_open(sys.argv[1], framework='np') as f:\n"
      "    assert f.metadata() == {'format': 'pt'}, f.metadata()\n"
      "    d = {k: f.get_tensor(k) for k in f.keys()}\n"
      "save_file(d, sys.argv[2], metadata={'by': 'python'})\n";
  write_bytes(path("copy.py"), script);
  const std::string cmd = "python3 " + path("copy.py") + " " + path("ours.safetensors") + " " +
                          path("theirs.safetensors");
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  SafetensorsFile theirs(path("theirs.safetensors"));
  EXPECT_EQ(theirs.metadata().at("by"), "python");
  ASSERT_EQ(theirs.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) EXPECT_TRUE(same_bits(theirs.get(name), t)) << name;
}

}  // namespace
}  // namespace nh
