#include "ops/embedding.h"

#include <algorithm>
#include <string>
#include "ops/cpu/parallel.h"

namespace nh::cpu {

namespace {

// Checks every id before anything is written, so a bad id leaves the outputs untouched
// (and no exception has to leave an OpenMP region).
void check_ids(const Tensor& ids, int64_t vocab) {
  if (ids.dtype() != DType::I64)
    throw Error("embedding", "ids dtype", "I64", dtype_name(ids.dtype()));
  const int64_t* id = ids.data<int64_t>();
  for (int64_t t = 0; t < ids.numel(); ++t)
    if (id[t] < 0 || id[t] >= vocab)
      throw Error("embedding", "ids[" + std::to_string(t) + "]",
                  "an id in [0, " + std::to_string(vocab) + ")", std::to_string(id[t]));
}

// out and dout may have any leading shape, as long as they hold `count` rows of `dim`.
void check_rows(const Tensor& rows, int64_t count, int64_t dim, DType dtype,
                const std::string& what) {
  if (rows.ndim() < 1 || rows.size(-1) != dim || rows.numel() != count * dim)
    throw Error("embedding", what + " shape",
                std::to_string(count) + " rows of " + std::to_string(dim), shape_str(rows.shape()));
  if (rows.dtype() != dtype)
    throw Error("embedding", what + " dtype", dtype_name(dtype), dtype_name(rows.dtype()));
}

void check_weight(const Tensor& weight, const std::string& what) {
  if (weight.ndim() != 2)
    throw Error("embedding", what + " shape", "[V, D]", shape_str(weight.shape()));
}

}  // namespace

// ids I64 [T] (any shape), weight [V, D] -> out [T, D] (any shape of T rows of D).
// The host check is cheap, so it runs whether or not the caller checked.
void embedding_forward(const Tensor& ids, const Tensor& weight, Tensor& out, bool) {
  check_weight(weight, "weight");
  const int64_t vocab = weight.size(0), dim = weight.size(1), n = ids.numel();
  check_rows(out, n, dim, weight.dtype(), "out");
  check_ids(ids, vocab);
  with_float_type(weight.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const int64_t* id = ids.data<int64_t>();
    const T* w = weight.data<T>();
    T* o = out.data<T>();
#pragma omp parallel for if (n * dim >= kMinParallelWork)
    for (int64_t t = 0; t < n; ++t) std::copy_n(w + id[t] * dim, dim, o + t * dim);
  });
}

// ids I64 [T], dout [T, D] -> dweight [V, D] += scatter of dout by id.
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dweight) {
  check_weight(dweight, "dweight");
  const int64_t vocab = dweight.size(0), dim = dweight.size(1), n = ids.numel();
  check_rows(dout, n, dim, dweight.dtype(), "dout");
  check_ids(ids, vocab);
  with_float_type(dweight.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const int64_t* id = ids.data<int64_t>();
    const T* g = dout.data<T>();
    T* dw = dweight.data<T>();
    // Repeated ids add into the same row, so threads split the columns, not the tokens: each
    // element then receives its terms in token order, the same on every run.
    constexpr int64_t block = 64;
    const int64_t blocks = (dim + block - 1) / block;
#pragma omp parallel for if (n * dim >= kMinParallelWork)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t d0 = b * block, d1 = std::min(dim, d0 + block);
      for (int64_t t = 0; t < n; ++t) {
        T* row = dw + id[t] * dim;
        const T* src = g + t * dim;
        for (int64_t d = d0; d < d1; ++d) row[d] += src[d];
      }
    }
  });
}

}  // namespace nh::cpu
