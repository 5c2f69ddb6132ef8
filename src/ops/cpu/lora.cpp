#include "ops/lora.h"

#include "ops/cpu/gemm.h"
#include "ops/cpu/low_rank.h"
#include "ops/dropout.h"
#include "ops/elementwise.h"

namespace nh {

void check_lora_shapes(const Tensor& x, const Tensor& a, const Tensor& b, const Tensor& y) {
  const bool ok = a.ndim() == 2 && b.ndim() == 2 && x.ndim() >= 1 && a.size(1) == x.size(-1) &&
                  b.size(1) == a.size(0) &&
                  y.numel() == x.numel() / std::max<int64_t>(1, x.size(-1)) * b.size(0);
  if (!ok)
    throw Error("lora", "shapes", "x [M, K], a [r, K], b [N, r], y of M·N elements",
                "x " + shape_str(x.shape()) + ", a " + shape_str(a.shape()) + ", b " +
                    shape_str(b.shape()) + ", y " + shape_str(y.shape()));
  for (const Tensor* t : {&a, &b, &y})
    if (t->dtype() != x.dtype())
      throw Error("lora", "dtype", dtype_name(x.dtype()), dtype_name(t->dtype()));
}

namespace cpu {

namespace {

// drop(x): x itself without dropout, else a masked copy.
Tensor dropped(const Tensor& x, const LoraPath& path) {
  if (path.dropout == 0) return x;
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  cpu::dropout_forward(x, path.dropout, path.seed, out);
  return out;
}

}  // namespace

void lora_forward(const Tensor& x, const Tensor& a, const Tensor& b, const LoraPath& path,
                  Tensor& y) {
  check_lora_shapes(x, a, b, y);
  const int64_t k = a.size(1), r = a.size(0), n = b.size(0),
                m = y.numel() / std::max<int64_t>(1, n);
  const Tensor xd = dropped(x, path);
  Tensor xa = Tensor::empty({m, r}, x.dtype());
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    add_low_rank(xd.data<T>(), a.data<T>(), b.data<T>(), T(path.scale), m, n, k, r, xa.data<T>(),
                 y.data<T>());
  });
}

void lora_backward(const Tensor& x, const Tensor& a, const Tensor& b, const LoraPath& path,
                   const Tensor& dy, Tensor& dx, Tensor& da, Tensor& db) {
  check_lora_shapes(x, a, b, dy);
  expect_shape(da, a.shape(), "lora da");
  expect_shape(db, b.shape(), "lora db");
  if (dx.defined() && dx.numel() != x.numel())
    throw Error("lora", "dx", shape_str(x.shape()), shape_str(dx.shape()));
  const int64_t k = a.size(1), r = a.size(0), n = b.size(0),
                m = dy.numel() / std::max<int64_t>(1, n);
  const Tensor xd = dropped(x, path);
  Tensor xa = Tensor::empty({m, r}, x.dtype()), g = Tensor::empty({m, r}, x.dtype());
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T s = T(path.scale);
    low_rank_grads(xd.data<T>(), a.data<T>(), b.data<T>(), dy.data<T>(), s, m, n, k, r,
                   xa.data<T>(), g.data<T>(), da.data<T>(), db.data<T>());
    if (!dx.defined()) return;
    if (path.dropout == 0) {
      gemm<T>(false, false, m, k, r, s, g.data<T>(), r, a.data<T>(), k, T(1), dx.data<T>(), k);
      return;
    }
    Tensor t = Tensor::empty(x.shape(), x.dtype());
    gemm<T>(false, false, m, k, r, s, g.data<T>(), r, a.data<T>(), k, T(0), t.data<T>(), k);
    cpu::dropout_forward(t, path.dropout, path.seed, t);
    cpu::add_inplace(dx, t);
  });
}

}  // namespace cpu
}  // namespace nh
