// The LoRA path and dropout on the GPU against the CPU (ops/lora.h, ops/dropout.h).
#include "ops/lora.h"

#include <string>

#include "cuda/harness.h"
#include "ops/dropout.h"

namespace nh {
namespace {

using test::expect_close;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;
using test::tolerance;

TEST(DropoutCuda, DrawsTheCpuMask) {
  const Tensor x = random_cpu({3, 1000, 7}, 1);
  Tensor y = Tensor::empty(x.shape(), DType::F32);
  cpu::dropout_forward(x, 0.3, 42, y);
  Tensor yg = to_gpu(x);
  cuda::dropout_forward(yg, 0.3, 42, yg);  // in place
  const Tensor got = to_cpu(yg);
  for (int64_t i = 0; i < x.numel(); ++i) {
    ASSERT_EQ(got.data<float>()[i] == 0, y.data<float>()[i] == 0) << i;
    EXPECT_NEAR(got.data<float>()[i], y.data<float>()[i], 1e-6 * std::fabs(y.data<float>()[i]));
  }
}

void expect_lora_matches_cpu(int64_t m, int64_t k, int64_t n, int64_t r, double p, DType dtype) {
  const std::string what = "lora M " + std::to_string(m) + " K " + std::to_string(k) + " N " +
                           std::to_string(n) + " r " + std::to_string(r) + " p " +
                           std::to_string(p) + (dtype == DType::BF16 ? " bf16" : " f32");
  SCOPED_TRACE(what);
  const double tol = tolerance(dtype);
  const LoraPath path{1.75, p, 9};
  const Tensor x = random_cpu({m, k}, 2), a = random_cpu({r, k}, 3, 0.2),
               b = random_cpu({n, r}, 4, 0.2), dy = random_cpu({m, n}, 5);
  Tensor y = random_cpu({m, n}, 6), dx = random_cpu({m, k}, 7), da = random_cpu({r, k}, 8),
         db = random_cpu({n, r}, 9);
  Tensor yg = to_gpu(y, dtype), dxg = to_gpu(dx, dtype), dag = to_gpu(da, dtype),
         dbg = to_gpu(db, dtype);
  cpu::lora_forward(x, a, b, path, y);
  cpu::lora_backward(x, a, b, path, dy, dx, da, db);
  const Tensor xg = to_gpu(x, dtype), ag = to_gpu(a, dtype), bg = to_gpu(b, dtype);
  cuda::lora_forward(xg, ag, bg, path, yg);
  cuda::lora_backward(xg, ag, bg, path, to_gpu(dy, dtype), dxg, dag, dbg);
  expect_close(what + " y", yg, y, tol);
  expect_close(what + " dx", dxg, dx, tol);
  expect_close(what + " da", dag, da, tol);
  expect_close(what + " db", dbg, db, tol);
}

TEST(LoraCuda, ForwardAndBackwardMatchCpu) {
  for (const DType dtype : {DType::F32, DType::BF16})
    for (const double p : {0.0, 0.1}) {
      expect_lora_matches_cpu(64, 128, 96, 8, p, dtype);
      expect_lora_matches_cpu(333, 4096, 1024, 16, p, dtype);
      expect_lora_matches_cpu(7, 33, 5, 3, p, dtype);
    }
}

}  // namespace
}  // namespace nh
