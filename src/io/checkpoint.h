// The weights of a Hugging Face model directory: either one model.safetensors
// or shards model-0000i-of-0000N.safetensors listed by
// model.safetensors.index.json ({"metadata": {"total_size": bytes},
// "weight_map": {tensor name: shard file}}), as transformers writes them.
#pragma once

#include <cstddef>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "io/safetensors.h"

namespace nh {

inline constexpr const char* kWeightsFile = "model.safetensors";
inline constexpr const char* kWeightsIndexFile = "model.safetensors.index.json";

class WeightSet {
 public:
  // Opens every shard once and checks that each name of the index is a tensor
  // of the shard it names; throws nh::Error naming the file and tensor otherwise.
  explicit WeightSet(const std::string& dir);

  // Index order for a sharded directory, file order for a single file.
  const std::vector<std::string>& names() const { return names_; }
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  // A zero-copy, read-only view (see SafetensorsFile::get).
  Tensor get(const std::string& name) const;
  const Shape& shape(const std::string& name) const;
  DType dtype(const std::string& name) const;

 private:
  const SafetensorsFile& file_of(const std::string& name) const;
  std::string dir_;
  std::vector<SafetensorsFile> files_;
  std::vector<std::string> names_;
  std::unordered_map<std::string, size_t> where_;  // name -> index into files_
};

// transformers' default max_shard_size "5GB".
inline constexpr size_t kDefaultMaxShardBytes = 5'000'000'000;

// Writes CPU tensors into `dir` (created if missing): one model.safetensors
// when their bytes fit max_shard_bytes, else shards of at most that size (a
// larger tensor gets a shard of its own) plus the index. Each file is written
// atomically and carries the metadata {"format": "pt"} transformers expects;
// weight files of an earlier, differently sharded save are removed afterwards,
// so the directory never mixes two checkpoints once this returns.
void write_weights(const std::string& dir,
                   const std::vector<std::pair<std::string, Tensor>>& tensors,
                   size_t max_shard_bytes = kDefaultMaxShardBytes);

}  // namespace nh
