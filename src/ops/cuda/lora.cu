// The LoRA path on the GPU (ops/lora.h): the same products as the CPU through cuBLASLt. The
// [M, r] intermediates are in x's dtype, as PEFT computes them.
#include <algorithm>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.cuh"
#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "ops/lora.h"

namespace nh::cuda {

namespace {

Tensor dropped(const Tensor& x, const LoraPath& path) {
  if (path.dropout == 0) return x;
  Tensor out = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  cuda::dropout_forward(x, path.dropout, path.seed, out);
  return out;
}

void require_all_cuda(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) require_cuda(*t, "lora", "operand");
}

}  // namespace

void lora_forward(const Tensor& x, const Tensor& a, const Tensor& b, const LoraPath& path,
                  Tensor& y) {
  check_lora_shapes(x, a, b, y);
  require_all_cuda({&x, &a, &b, &y});
  const int64_t k = a.size(1), r = a.size(0), n = b.size(0),
                m = y.numel() / std::max<int64_t>(1, n);
  const DType dt = x.dtype();
  const Tensor xd = dropped(x, path);
  Tensor xa = Tensor::empty({m, r}, dt, Device::CUDA);
  gemm(false, true, m, r, k, 1.f, xd.raw(), k, a.raw(), k, 0.f, xa.raw(), r, dt);
  gemm(false, true, m, n, r, float(path.scale), xa.raw(), r, b.raw(), r, 1.f, y.raw(), n, dt);
}

void lora_backward(const Tensor& x, const Tensor& a, const Tensor& b, const LoraPath& path,
                   const Tensor& dy, Tensor& dx, Tensor& da, Tensor& db) {
  check_lora_shapes(x, a, b, dy);
  require_all_cuda({&x, &a, &b, &dy, &dx, &da, &db});
  expect_shape(da, a.shape(), "lora da");
  expect_shape(db, b.shape(), "lora db");
  if (dx.defined() && dx.numel() != x.numel())
    throw Error("lora", "dx", shape_str(x.shape()), shape_str(dx.shape()));
  const int64_t k = a.size(1), r = a.size(0), n = b.size(0),
                m = dy.numel() / std::max<int64_t>(1, n);
  const DType dt = x.dtype();
  const float s = float(path.scale);
  const Tensor xd = dropped(x, path);
  Tensor xa = Tensor::empty({m, r}, dt, Device::CUDA), g = Tensor::empty({m, r}, dt, Device::CUDA);
  gemm(false, true, m, r, k, 1.f, xd.raw(), k, a.raw(), k, 0.f, xa.raw(), r, dt);
  gemm(false, false, m, r, n, 1.f, dy.raw(), n, b.raw(), r, 0.f, g.raw(), r, dt);
  gemm(true, false, n, r, m, s, dy.raw(), n, xa.raw(), r, 1.f, db.raw(), r, dt);
  gemm(true, false, r, k, m, s, g.raw(), r, xd.raw(), k, 1.f, da.raw(), k, dt);
  if (!dx.defined()) return;
  if (path.dropout == 0) {
    gemm(false, false, m, k, r, s, g.raw(), r, a.raw(), k, 1.f, dx.raw(), k, dt);
    return;
  }
  Tensor t = Tensor::empty(x.shape(), dt, Device::CUDA);
  gemm(false, false, m, k, r, s, g.raw(), r, a.raw(), k, 0.f, t.raw(), k, dt);
  cuda::dropout_forward(t, path.dropout, path.seed, t);
  cuda::add_inplace(dx, t);
}

}  // namespace nh::cuda
