#include "io/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "io/atomic_file.h"
#include "io/io_test_util.h"

namespace nh {
namespace {

namespace fs = std::filesystem;
using test::random_bits;
using test::read_bytes;
using test::same_bits;
using test::write_bytes;
using Named = std::vector<std::pair<std::string, Tensor>>;

// A small model's worth of tensors of mixed dtypes and sizes (bytes: 60, 84,
// 18, 6, 300, 8, 26).
Named model_tensors() {
  return {{"backbone.embeddings.weight", random_bits({3, 5}, DType::F32, 1)},
          {"backbone.layers.0.mixer.in_proj.weight", random_bits({7, 3}, DType::F32, 2)},
          {"backbone.layers.0.norm.weight", random_bits({9}, DType::BF16, 3)},
          {"backbone.layers.1.norm.weight", random_bits({3}, DType::F16, 4)},
          {"backbone.layers.1.mixer.big", random_bits({5, 15}, DType::F32, 5)},
          {"backbone.norm_f.weight", random_bits({1}, DType::F64, 6)},
          {"lm_head.weight", random_bits({13}, DType::BF16, 7)}};
}

void expect_same_weights(const WeightSet& w, const Named& tensors) {
  ASSERT_EQ(w.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(w.has(name)) << name;
    EXPECT_EQ(w.shape(name), t.shape());
    EXPECT_EQ(w.dtype(name), t.dtype());
    EXPECT_TRUE(same_bits(w.get(name), t)) << name;
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

class CheckpointTest : public test::TempDirTest {};

TEST_F(CheckpointTest, SmallModelIsOneFileWithPtFormatMetadata) {
  const Named tensors = model_tensors();
  write_weights(dir_, tensors);
  EXPECT_TRUE(fs::exists(path(kWeightsFile)));
  EXPECT_FALSE(fs::exists(path(kWeightsIndexFile)));
  EXPECT_EQ(SafetensorsFile(path(kWeightsFile)).metadata().at("format"), "pt");
  const WeightSet w(dir_);
  expect_same_weights(w, tensors);
  for (size_t i = 0; i < tensors.size(); ++i) EXPECT_EQ(w.names()[i], tensors[i].first);
}

TEST_F(CheckpointTest, ShardedWriteMakesShardsAndIndexAndReadsBackIdentically) {
  const Named tensors = model_tensors();
  // 100 bytes: 60 and 84 do not fit together, 18+6 share a shard, 300 gets one of its own.
  write_weights(dir_, tensors, 100);
  const std::vector<std::string> shards = {
      "model-00001-of-00005.safetensors", "model-00002-of-00005.safetensors",
      "model-00003-of-00005.safetensors", "model-00004-of-00005.safetensors",
      "model-00005-of-00005.safetensors"};
  for (const std::string& s : shards) EXPECT_TRUE(fs::exists(path(s))) << s;
  EXPECT_FALSE(fs::exists(path(kWeightsFile)));

  const auto index = nlohmann::json::parse(read_bytes(path(kWeightsIndexFile)));
  EXPECT_EQ(index["metadata"]["total_size"], 60 + 84 + 18 + 6 + 300 + 8 + 26);
  EXPECT_EQ(index["weight_map"].size(), tensors.size());
  EXPECT_EQ(index["weight_map"]["backbone.embeddings.weight"], shards[0]);
  EXPECT_EQ(index["weight_map"]["backbone.layers.1.norm.weight"], shards[2]);
  EXPECT_EQ(index["weight_map"]["backbone.layers.1.mixer.big"], shards[3]);
  EXPECT_EQ(index["weight_map"]["lm_head.weight"], shards[4]);
  for (const std::string& s : shards)
    EXPECT_EQ(SafetensorsFile(path(s)).metadata().at("format"), "pt");
  expect_same_weights(WeightSet(dir_), tensors);
}

TEST_F(CheckpointTest, RewritingRemovesTheFilesOfTheEarlierLayout) {
  const Named first = model_tensors();
  write_weights(dir_, first, 100);
  Named second = {{"only.weight", random_bits({4, 3}, DType::F32, 11)}};
  write_weights(dir_, second);
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(dir_)) files.insert(e.path().filename().string());
  EXPECT_EQ(files, std::set<std::string>{kWeightsFile});
  expect_same_weights(WeightSet(dir_), second);

  write_weights(dir_, first, 200);
  EXPECT_FALSE(fs::exists(path(kWeightsFile)));
  expect_same_weights(WeightSet(dir_), first);
}

TEST_F(CheckpointTest, IndexNamingAMissingTensorOrShardThrows) {
  write_weights(dir_, model_tensors(), 100);
  const std::string index_path = path(kWeightsIndexFile);
  const auto index = nlohmann::json::parse(read_bytes(index_path));

  auto ghost = index;
  ghost["weight_map"]["ghost.weight"] = "model-00001-of-00005.safetensors";
  write_file_atomic(index_path, ghost.dump());
  std::string message = error_of([&] { WeightSet w(dir_); });
  EXPECT_NE(message.find(index_path), std::string::npos) << message;
  EXPECT_NE(message.find("ghost.weight"), std::string::npos) << message;

  auto escape = index;
  escape["weight_map"]["lm_head.weight"] = "../model-00005-of-00005.safetensors";
  write_file_atomic(index_path, escape.dump());
  message = error_of([&] { WeightSet w(dir_); });
  EXPECT_NE(message.find("lm_head.weight"), std::string::npos) << message;

  write_file_atomic(index_path, index.dump());
  fs::remove(path("model-00003-of-00005.safetensors"));
  message = error_of([&] { WeightSet w(dir_); });
  EXPECT_NE(message.find(index_path), std::string::npos) << message;
  EXPECT_NE(message.find("model-00003-of-00005.safetensors"), std::string::npos) << message;

  write_file_atomic(index_path, "{\"weight_map\": ");
  message = error_of([&] { WeightSet w(dir_); });
  EXPECT_NE(message.find(index_path), std::string::npos) << message;
  write_file_atomic(index_path, "{\"metadata\": {}}");
  message = error_of([&] { WeightSet w(dir_); });
  EXPECT_NE(message.find("weight_map"), std::string::npos) << message;
}

TEST_F(CheckpointTest, DirectoryWithoutWeightsSaysWhichFilesWereExpected) {
  std::string message = error_of([&] { WeightSet w(dir_); });
  EXPECT_NE(message.find(dir_), std::string::npos) << message;
  EXPECT_NE(message.find(kWeightsFile), std::string::npos) << message;
  EXPECT_NE(message.find(kWeightsIndexFile), std::string::npos) << message;

  write_bytes(path("pytorch_model.bin"), "not really");
  message = error_of([&] { WeightSet w(dir_); });
  EXPECT_NE(message.find("tools/convert_bin_to_safetensors.py"), std::string::npos) << message;

  message = error_of([&] { WeightSet w(path("absent")); });
  EXPECT_NE(message.find(path("absent")), std::string::npos) << message;
}

TEST_F(CheckpointTest, UnknownTensorNameThrows) {
  write_weights(dir_, model_tensors());
  const WeightSet w(dir_);
  EXPECT_FALSE(w.has("nope"));
  EXPECT_THROW(w.get("nope"), Error);
  EXPECT_THROW(w.shape("nope"), Error);
}

TEST_F(CheckpointTest, DuplicateNamesAreRefused) {
  const Tensor t = random_bits({2}, DType::F32, 12);
  EXPECT_THROW(write_weights(dir_, {{"a", t}, {"b", t}, {"a", t}}, 8), Error);
}

TEST_F(CheckpointTest, AtomicFileReplacesContentsOrLeavesThemAlone) {
  const std::string p = path("config.json");
  write_file_atomic(p, "{\"a\": 1}\n");
  write_file_atomic(p, "{\"a\": 2}\n");
  EXPECT_EQ(read_bytes(p), "{\"a\": 2}\n");
  const std::string message = error_of([&] { write_file_atomic(path("no/dir/config.json"), "x"); });
  EXPECT_NE(message.find(path("no/dir/config.json")), std::string::npos) << message;
  EXPECT_EQ(read_bytes(p), "{\"a\": 2}\n");
}

}  // namespace
}  // namespace nh
