// The LoRA path on the GPU (ops/lora.h): the same products as the CPU through cuBLASLt. The
// [M, r] intermediates are in x's dtype, as PEFT computes them.
#include <algorithm>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.cuh"
#include "ops/cuda/low_rank.cuh"
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

void add_low_rank(const void* x, const void* a, const void* b, float s, int64_t m, int64_t n,
                  int64_t k, int64_t r, void* xa, void* y, DType dt) {
  gemm(false, true, m, r, k, 1.f, x, k, a, k, 0.f, xa, r, dt);
  gemm(false, true, m, n, r, s, xa, r, b, r, 1.f, y, n, dt);
}

void low_rank_grads(const void* x, const void* a, const void* b, const void* dy, float s,
                    int64_t m, int64_t n, int64_t k, int64_t r, void* xa, void* g, void* da,
                    void* db, DType dt) {
  gemm(false, true, m, r, k, 1.f, x, k, a, k, 0.f, xa, r, dt);
  gemm(false, false, m, r, n, 1.f, dy, n, b, r, 0.f, g, r, dt);
  gemm(true, false, n, r, m, s, dy, n, xa, r, 1.f, db, r, dt);
  gemm(true, false, r, k, m, s, g, r, x, k, 1.f, da, k, dt);
}

void lora_forward(const Tensor& x, const Tensor& a, const Tensor& b, const LoraPath& path,
                  Tensor& y) {
  check_lora_shapes(x, a, b, y);
  require_all_cuda({&x, &a, &b, &y});
  const int64_t k = a.size(1), r = a.size(0), n = b.size(0),
                m = y.numel() / std::max<int64_t>(1, n);
  const DType dt = x.dtype();
  const Tensor xd = dropped(x, path);
  Tensor xa = Tensor::empty({m, r}, dt, Device::CUDA);
  add_low_rank(xd.raw(), a.raw(), b.raw(), float(path.scale), m, n, k, r, xa.raw(), y.raw(), dt);
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
  low_rank_grads(xd.raw(), a.raw(), b.raw(), dy.raw(), s, m, n, k, r, xa.raw(), g.raw(), da.raw(),
                 db.raw(), dt);
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
