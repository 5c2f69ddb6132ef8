// What the benchmark programs share: the model they time, random token ids and the device's
// copy bandwidth.
#pragma once

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>

#include "core/cuda_memory.h"
#include "core/rng.h"
#include "model/model.h"
#include "model/presets.h"

namespace nh {

// The config of a preset name, a config.json or an HF directory, with `pattern` applied.
inline ModelConfig bench_config(const std::string& model, const std::string& pattern) {
  namespace fs = std::filesystem;
  const bool is_file = model.ends_with(".json") || fs::is_directory(fs::path(model));
  const ModelConfig c = is_file ? load_config(model) : preset_config(model);
  return with_layer_pattern(c, pattern, "--pattern");
}

// A model directory with weights is loaded in `dtype`; a config.json, a directory holding only
// one, or a preset name gets random weights from `seed` (fp32), its layers replaced by
// `pattern` when that is given.
inline Model bench_model(const std::string& model, const std::string& pattern, DType dtype,
                         uint64_t seed) {
  namespace fs = std::filesystem;
  const fs::path dir(model);
  if (fs::is_directory(dir) && (fs::exists(dir / "model.safetensors.index.json") ||
                                fs::exists(dir / "model.safetensors")))
    return Model::load(model, dtype);
  return Model::init(bench_config(model, pattern), seed);
}

// I64 ids drawn uniformly from [0, vocab).
inline Tensor random_token_ids(const Shape& shape, int64_t vocab, Rng& rng) {
  Tensor t = Tensor::empty(shape, DType::I64);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data<int64_t>()[i] = std::min<int64_t>(vocab - 1, int64_t(rng.uniform() * double(vocab)));
  return t;
}

inline double gib(int64_t bytes) { return double(bytes) / double(int64_t(1) << 30); }

// Device-to-device copy bandwidth (read + write bytes per second) of a 1 GiB buffer, copied
// 10 times back to back: the reference the bandwidth-bound benchmarks compare against.
inline double copy_bandwidth() {
  const int64_t n = int64_t(1) << 30;
  const Tensor a = Tensor::zeros({n}, DType::U8, Device::CUDA);
  Tensor b = Tensor::empty({n}, DType::U8, Device::CUDA);
  b.copy_from(a);
  cuda_synchronize();
  const auto t = std::chrono::steady_clock::now();
  for (int i = 0; i < 10; ++i) b.copy_from(a);
  cuda_synchronize();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  return 2.0 * double(n) * 10 / s;
}

}  // namespace nh
