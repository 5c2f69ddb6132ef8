// safetensors files (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON
//   {"__metadata__": {"k": "v"}, "name": {"dtype": "F32", "shape": [2, 3],
//    "data_offsets": [begin, end]}, ...}
// then the data section; offsets are relative to its start (byte 8 + N).
// Reading maps the file and hands out zero-copy tensor views; every header
// field is checked first, so a bad file gives an nh::Error naming the file,
// the tensor and the field, never a crash or an out-of-bounds read.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace nh {

struct SafetensorsTensorInfo {
  DType dtype;
  Shape shape;
  // [begin, end) in bytes, relative to the start of the data section.
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct SafetensorsHeader {
  uint64_t data_start = 0;         // 8 + N: file offset of the data section
  std::vector<std::string> names;  // in the order the header lists them
  std::unordered_map<std::string, SafetensorsTensorInfo> tensors;
  std::map<std::string, std::string> metadata;  // "__metadata__", empty when absent
};

// Parses and validates the header of a whole safetensors file held in
// data[0, size). `where` (the path) starts every error message.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size,
                                           const std::string& where);

// A read-only safetensors file, memory-mapped. Copies share the mapping; it is
// released when the last copy and the last tensor viewing it are gone.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<std::string>& names() const { return header_.names; }
  bool has(const std::string& name) const { return header_.tensors.count(name) != 0; }
  const SafetensorsTensorInfo& info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // A CPU view of the tensor's bytes in the file's dtype. The mapping is
  // read-only (so a checkpoint larger than RAM can still be mapped): clone()
  // a tensor before writing into it.
  // A tensor whose offset is not a multiple of its element size (possible only
  // in files from other writers) is copied instead, so typed access stays aligned.
  Tensor get(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<void> mapping_;
  SafetensorsHeader header_;
};

// Writes CPU tensors (unique names) and string metadata to `path` atomically
// (a temporary renamed over it; see io/atomic_file.h). The header lists the
// tensors in the given order and is padded with spaces to a multiple of 8
// bytes, like the reference writer; the data section stores tensors with
// larger elements first (stable otherwise), so every tensor is aligned to its
// element size with no gaps, which the reference reader requires.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace nh
