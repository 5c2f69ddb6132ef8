// The linear layer's few-row path (ops/cuda/gemv.cuh: up to kGemvMaxRows rows of x) against the
// CPU: every kernel it picks (tensor cores for BF16, 16-byte loads for F32, element by element
// for other sizes and alignments), an 8B model's decode shapes, and the GEMM just past the limit.
#include "ops/cuda/gemv.cuh"

#include <gtest/gtest.h>

#include <string>

#include "core/cuda_graph.h"
#include "cuda/harness.h"
#include "ops/linear.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;

const DType kDtypes[] = {DType::F32, DType::BF16};

// Rounded to bf16 and back: the BF16 run then sees exactly the CPU's inputs.
Tensor bf16_exact(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }

Tensor random_input(const Shape& shape, uint64_t seed) {
  return bf16_exact(random_cpu(shape, seed));
}

// With bf16-exact inputs a BF16 y differs from the CPU's by its own rounding (at most 2^-8
// relative) and the summation order: far below test::tolerance's 2e-2, which would let a
// dropped piece of a long sum through.
double tolerance(DType dtype) { return dtype == DType::BF16 ? 5e-3 : test::tolerance(dtype); }

// A GPU view of `shape` at element `offset` of t (misaligned for an odd offset).
Tensor gpu_view_at(const Tensor& t, int64_t offset, const Shape& shape) {
  return Tensor::view(static_cast<char*>(t.raw()) + offset * int64_t(dtype_size(t.dtype())), shape,
                      t.dtype(), nullptr, Device::CUDA);
}

struct GemvShape {
  int64_t k, n;
};
const GemvShape kShapes[] = {
    // An 8B model's decode projections: blocks of 32, 16 and 8 columns.
    {4096, 18560},
    {8192, 4096},
    {4096, 1024},
    // k % 8 == 0 with a partial last step: tensor cores (BF16), 16-byte loads (F32).
    {1000, 333},
    {1000, 7},
    // k % 8 == 4: BF16 element by element, F32 16-byte loads.
    {20, 333},
    // Odd k: element by element.
    {13, 7},
    {4097, 1},
    {13, 1},
};
// Up to kGemvMaxRows take the few-row kernels; 9 the GEMM.
const int64_t kRows[] = {1, 2, 3, 5, 8, 9};
constexpr int64_t kMostRows = 9;

TEST(CudaGemv, LinearForwardMatchesCpuForFewRowsAndJustPastThem) {
  static_assert(cuda::kGemvMaxRows == 8, "kRows straddles the limit");
  uint64_t seed = 7000;
  for (const GemvShape& s : kShapes) {
    const Tensor x = random_input({kMostRows, s.k}, seed++);
    const Tensor w = random_input({s.n, s.k}, seed++);
    const Tensor b = random_input({s.n}, seed++);
    // Rows are independent: the references for fewer rows are the first rows of these.
    Tensor y_plain = Tensor::empty({kMostRows, s.n}, DType::F32), y_bias = y_plain.clone();
    cpu::linear_forward(x, w, Tensor(), y_plain);
    cpu::linear_forward(x, w, b, y_bias);
    for (DType dtype : kDtypes) {
      const Tensor gw = to_gpu(w, dtype), gb = to_gpu(b, dtype);
      for (int64_t rows : kRows) {
        const Tensor gx = to_gpu(x.slice0(0, rows), dtype);
        for (bool with_bias : {false, true}) {
          Tensor gy = to_gpu(random_cpu({rows, s.n}, seed++), dtype);  // overwritten
          cuda::linear_forward(gx, gw, with_bias ? gb : Tensor(), gy);
          const Tensor& ref = with_bias ? y_bias : y_plain;
          expect_close("gemv rows " + std::to_string(rows) + " k " + std::to_string(s.k) + " n " +
                           std::to_string(s.n) + (with_bias ? " bias " : " ") + dtype_name(dtype),
                       gy, ref.slice0(0, rows), tolerance(dtype));
        }
      }
    }
  }
}

// x, w, b and y at odd element offsets (2- or 4-byte aligned), with k a multiple of 8: the
// element-by-element kernel, where the aligned case would take the vectorised one.
TEST(CudaGemv, MisalignedOperandsMatchCpu) {
  const int64_t rows = 3, k = 1024, n = 37;
  const Tensor x = random_input({rows, k}, 7100), w = random_input({n, k}, 7101);
  const Tensor b = random_input({n}, 7102);
  Tensor y = Tensor::empty({rows, n}, DType::F32);
  cpu::linear_forward(x, w, b, y);
  for (DType dtype : kDtypes) {
    Tensor gx = to_gpu(random_input({rows * k + 1}, 7103), dtype);
    Tensor gw = to_gpu(random_input({n * k + 1}, 7104), dtype);
    Tensor gb = to_gpu(random_input({n + 1}, 7105), dtype);
    Tensor gy = to_gpu(random_input({rows * n + 1}, 7106), dtype);
    Tensor vx = gpu_view_at(gx, 1, {rows, k}), vw = gpu_view_at(gw, 1, {n, k});
    Tensor vb = gpu_view_at(gb, 1, {n}), vy = gpu_view_at(gy, 1, {rows, n});
    vx.copy_from(x);
    vw.copy_from(w);
    vb.copy_from(b);
    cuda::linear_forward(vx, vw, vb, vy);
    expect_close(std::string("gemv misaligned ") + dtype_name(dtype), vy, y, tolerance(dtype));
  }
}

// k = 0: y = b (or 0), x and w never read.
TEST(CudaGemv, EmptySumGivesTheBias) {
  const int64_t rows = 4, n = 21;
  const Tensor b = random_input({n}, 7200);
  Tensor y_bias = Tensor::empty({rows, n}, DType::F32);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; ++c) y_bias.data<float>()[r * n + c] = b.data<float>()[c];
  const Tensor y_zero = Tensor::zeros({rows, n}, DType::F32);
  for (DType dtype : kDtypes) {
    const Tensor gb = to_gpu(b, dtype);
    Tensor gy = to_gpu(random_cpu({rows, n}, 7201), dtype);
    cuda::gemv(rows, n, 0, nullptr, nullptr, gb.raw(), gy.raw(), dtype);
    expect_close(std::string("gemv k 0 bias ") + dtype_name(dtype), gy, y_bias, 0);
    cuda::gemv(rows, n, 0, nullptr, nullptr, nullptr, gy.raw(), dtype);
    expect_close(std::string("gemv k 0 ") + dtype_name(dtype), gy, y_zero, 0);
  }
}

// The K split over warps is summed in a fixed order: two runs give the same bits.
TEST(CudaGemv, RepeatedRunsGiveTheSameBits) {
  const int64_t rows = 8, k = 8192, n = 4096;
  const Tensor x = random_input({rows, k}, 7300), w = random_input({n, k}, 7301);
  for (DType dtype : kDtypes) {
    const Tensor gx = to_gpu(x, dtype), gw = to_gpu(w, dtype);
    Tensor y1 = gpu_empty({rows, n}, dtype), y2 = gpu_empty({rows, n}, dtype);
    cuda::linear_forward(gx, gw, Tensor(), y1);
    cuda::linear_forward(gx, gw, Tensor(), y2);
    const Tensor h1 = to_cpu(y1), h2 = to_cpu(y2);
    int64_t differ = 0;
    for (int64_t i = 0; i < h1.numel(); ++i) differ += h1.data<float>()[i] != h2.data<float>()[i];
    EXPECT_EQ(differ, 0) << dtype_name(dtype);
  }
}

// Captured once and replayed, as decoding runs it.
TEST(CudaGemv, RunsInACudaGraph) {
  const int64_t rows = 2, k = 4096, n = 1024;
  const Tensor x = random_input({rows, k}, 7400), w = random_input({n, k}, 7401);
  const Tensor b = random_input({n}, 7402);
  Tensor y = Tensor::empty({rows, n}, DType::F32);
  cpu::linear_forward(x, w, b, y);
  for (DType dtype : kDtypes) {
    const Tensor gx = to_gpu(x, dtype), gw = to_gpu(w, dtype), gb = to_gpu(b, dtype);
    Tensor gy = test::gpu_zeros({rows, n}, dtype);
    const CudaGraph graph([&] { cuda::linear_forward(gx, gw, gb, gy); });
    graph.launch();
    expect_close(std::string("gemv in a graph ") + dtype_name(dtype), gy, y, tolerance(dtype));
  }
}

TEST(CudaGemv, MoreRowsThanTheLimitOrOtherDtypesThrow) {
  Tensor y = gpu_empty({9, 4}, DType::F32);
  EXPECT_THROW(
      cuda::gemv(cuda::kGemvMaxRows + 1, 4, 0, nullptr, nullptr, nullptr, y.raw(), DType::F32),
      Error);
  EXPECT_THROW(cuda::gemv(1, 4, 0, nullptr, nullptr, nullptr, y.raw(), DType::F64), Error);
}

}  // namespace
}  // namespace nh
