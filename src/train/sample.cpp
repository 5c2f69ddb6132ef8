#include "train/sample.h"

#include <algorithm>
#include <cmath>

#include "core/rng.h"

namespace nh {

std::vector<int32_t> sample_continuation(Model& model, std::vector<int32_t> prompt,
                                         int64_t new_tokens, double temperature, uint64_t seed,
                                         int32_t stop_id) {
  Rng rng(seed);
  const int64_t v = model.config().vocab_size;
  std::vector<int32_t> out;
  for (int64_t n = 0; n < new_tokens; ++n) {
    const int64_t s = int64_t(prompt.size());
    Tensor ids = Tensor::empty({1, s}, DType::I64);
    for (int64_t i = 0; i < s; ++i) ids.data<int64_t>()[i] = prompt[size_t(i)];
    Tensor logits = Tensor::empty({s, v}, DType::F32), none;
    model.forward(ids, none, none, logits);
    const float* last = logits.data<float>() + (s - 1) * v;
    int32_t next = int32_t(std::max_element(last, last + v) - last);
    if (temperature > 0) {
      const double top = last[next];
      std::vector<double> p(static_cast<size_t>(v));
      double z = 0;
      for (int64_t i = 0; i < v; ++i) z += p[size_t(i)] = std::exp((last[i] - top) / temperature);
      double u = rng.uniform() * z;
      for (next = 0; next + 1 < v && (u -= p[size_t(next)]) > 0; ++next) {
      }
    }
    if (next == stop_id) break;
    out.push_back(next);
    prompt.push_back(next);
  }
  return out;
}

}  // namespace nh
