#include "ops/dropout.h"

#include <string>

#include "ops/cpu/parallel.h"

namespace nh::cpu {

void dropout_forward(const Tensor& x, double p, uint64_t seed, Tensor& y) {
  if (x.numel() != y.numel() || x.dtype() != y.dtype())
    throw Error("dropout", "y", "x's size and dtype",
                shape_str(y.shape()) + " " + dtype_name(y.dtype()));
  if (!(p >= 0 && p < 1)) throw Error("dropout", "p", "in [0, 1)", std::to_string(p));
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* in = x.data<T>();
    T* out = y.data<T>();
    const int64_t n = x.numel();
    const T scale = T(1) / T(1 - p);
#pragma omp parallel for if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) out[i] = dropout_keep(seed, i, float(p)) ? in[i] * scale : T(0);
  });
}

}  // namespace nh::cpu
