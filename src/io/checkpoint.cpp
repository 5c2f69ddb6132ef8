#include "io/checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "io/atomic_file.h"

namespace nh {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

std::string in_quotes(const std::string& s) {
  std::string q = "\"";
  q += s.size() > 80 ? s.substr(0, 80) + "..." : s;
  q += '"';
  return q;
}

ojson read_index(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "file", "a readable index file", "cannot open it");
  ojson j;
  try {
    j = ojson::parse(in);
  } catch (const ojson::exception& e) {
    throw Error(path, "index", "valid JSON", e.what());
  }
  const bool has_map = j.is_object() && j.contains("weight_map");
  if (!has_map || !j["weight_map"].is_object())
    throw Error(path, "weight_map", "an object of tensor name -> shard file",
                has_map ? j["weight_map"].type_name() : "none");
  return j;
}

// A shard must be a plain file name inside the model directory.
bool plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos;
}

std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i, n);
  return buf;
}

}  // namespace

WeightSet::WeightSet(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw Error(dir, "model directory", "an existing directory", "no such directory");
  const fs::path index_path = fs::path(dir) / kWeightsIndexFile;
  const fs::path single_path = fs::path(dir) / kWeightsFile;
  if (fs::exists(index_path, ec)) {
    const std::string index = index_path.string();
    const ojson j = read_index(index);
    std::unordered_map<std::string, size_t> shard_index;
    for (const auto& [name, shard] : j.at("weight_map").items()) {
      const std::string field = "weight_map: " + in_quotes(name);
      if (!shard.is_string() || !plain_file_name(shard.get<std::string>()))
        throw Error(index, field, "a shard file name in the directory",
                    shard.is_string() ? in_quotes(shard.get<std::string>()) : shard.type_name());
      const std::string file = shard.get<std::string>();
      auto it = shard_index.find(file);
      if (it == shard_index.end()) {
        const fs::path shard_path = fs::path(dir) / file;
        if (!fs::exists(shard_path, ec))
          throw Error(index, field, "shard " + in_quotes(file) + " in " + dir, "no such file");
        files_.emplace_back(shard_path.string());
        it = shard_index.emplace(file, files_.size() - 1).first;
      }
      if (!files_[it->second].has(name))
        throw Error(index, field, "a tensor of shard " + in_quotes(file), "no such tensor in it");
      names_.push_back(name);
      where_.emplace(name, it->second);
    }
  } else if (fs::exists(single_path, ec)) {
    files_.emplace_back(single_path.string());
    names_ = files_[0].names();
    for (const std::string& n : names_) where_.emplace(n, 0);
  } else {
    std::string found = "neither";
    for (const char* bin : {"pytorch_model.bin", "pytorch_model.bin.index.json"})
      if (fs::exists(fs::path(dir) / bin, ec))
        found =
            std::string("only ") + bin + ": convert it with tools/convert_bin_to_safetensors.py";
    throw Error(dir, "weights", std::string(kWeightsIndexFile) + " or " + kWeightsFile, found);
  }
}

const SafetensorsFile& WeightSet::file_of(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end())
    throw Error(dir_, "tensor " + in_quotes(name), "a tensor of the model's weights",
                "no such name");
  return files_[it->second];
}

Tensor WeightSet::get(const std::string& name) const { return file_of(name).get(name); }
const Shape& WeightSet::shape(const std::string& name) const {
  return file_of(name).info(name).shape;
}
DType WeightSet::dtype(const std::string& name) const { return file_of(name).info(name).dtype; }

void write_weights(const std::string& dir,
                   const std::vector<std::pair<std::string, Tensor>>& tensors,
                   size_t max_shard_bytes) {
  std::set<std::string> unique;
  for (const auto& nt : tensors)
    if (!unique.insert(nt.first).second)
      throw Error(dir, "tensor " + in_quotes(nt.first), "a unique name", "a repeated one");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir, "model directory", "a directory that can be created", ec.message());
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};

  // transformers' greedy split: a shard is closed when the next tensor would overflow it.
  std::vector<std::vector<std::pair<std::string, Tensor>>> shards(1);
  size_t shard_bytes = 0;
  uint64_t total = 0;
  for (const auto& nt : tensors) {
    const size_t b = nt.second.defined() ? nt.second.nbytes() : 0;
    if (!shards.back().empty() && shard_bytes + b > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(nt);
    shard_bytes += b;
    total += b;
  }

  std::set<std::string> written;
  if (shards.size() == 1) {
    write_safetensors((fs::path(dir) / kWeightsFile).string(), tensors, metadata);
    written.insert(kWeightsFile);
  } else {
    nlohmann::json weight_map = nlohmann::json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string name = shard_name(i + 1, shards.size());
      write_safetensors((fs::path(dir) / name).string(), shards[i], metadata);
      written.insert(name);
      for (const auto& nt : shards[i]) weight_map[nt.first] = name;
    }
    // Sorted keys and two-space indent, as transformers' json.dumps(..., sort_keys=True).
    nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomic((fs::path(dir) / kWeightsIndexFile).string(), index.dump(2) + "\n");
    written.insert(kWeightsIndexFile);
  }

  // The index is removed first: it is what makes a reader look for shards.
  static const std::regex kShard(R"(model-\d+-of-\d+\.safetensors)");
  std::vector<std::string> stale;
  if (!written.count(kWeightsIndexFile)) stale.push_back(kWeightsIndexFile);
  if (!written.count(kWeightsFile)) stale.push_back(kWeightsFile);
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, kShard) && !written.count(name)) stale.push_back(name);
  }
  for (const std::string& name : stale)
    if (!fs::remove(fs::path(dir) / name, ec) && ec)
      throw Error(dir, "stale file " + in_quotes(name), "removed", ec.message());
}

}  // namespace nh
