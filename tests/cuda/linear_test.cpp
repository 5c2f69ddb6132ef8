// nh::cuda::gemm and the linear layer against the CPU (BLAS) in fp32, on the GPU in F32 and BF16.
#include "ops/linear.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cuda/harness.h"
#include "ops/cpu/gemm.h"
#include "ops/cuda/gemm.cuh"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;
using test::tolerance;

const DType kDtypes[] = {DType::F32, DType::BF16};

struct GemmShape {
  int64_t m, n, k;
};
const GemmShape kGemmShapes[] = {{1, 1, 1},       {3, 5, 7},    {129, 65, 33},
                                 {512, 256, 384}, {64, 1, 200}, {1, 300, 17}};

std::string gemm_name(const char* what, bool ta, bool tb, const GemmShape& s, DType dtype) {
  return std::string(what) + (ta ? " T" : " N") + (tb ? "T " : "N ") + std::to_string(s.m) + "x" +
         std::to_string(s.n) + "x" + std::to_string(s.k) + " " + dtype_name(dtype);
}

// One gemm on the CPU (F32) and the GPU (dtype) from the same inputs, with row strides `pad`
// elements wider than the matrices (the padding must come back untouched), compared over the
// whole C buffer.
void check_gemm(bool ta, bool tb, const GemmShape& s, DType dtype, float alpha, float beta,
                int64_t pad, uint64_t seed) {
  const int64_t a_rows = ta ? s.k : s.m, a_cols = ta ? s.m : s.k;
  const int64_t b_rows = tb ? s.n : s.k, b_cols = tb ? s.k : s.n;
  const int64_t lda = a_cols + pad, ldb = b_cols + pad, ldc = s.n + pad;
  Tensor a = random_cpu({a_rows, lda}, seed), b = random_cpu({b_rows, ldb}, seed + 1);
  Tensor c = random_cpu({s.m, ldc}, seed + 2);
  Tensor ga = to_gpu(a, dtype), gb = to_gpu(b, dtype), gc = to_gpu(c, dtype);
  cpu::gemm<float>(ta, tb, s.m, s.n, s.k, alpha, a.data<float>(), lda, b.data<float>(), ldb, beta,
                   c.data<float>(), ldc);
  cuda::gemm(ta, tb, s.m, s.n, s.k, alpha, ga.raw(), lda, gb.raw(), ldb, beta, gc.raw(), ldc,
             dtype);
  expect_close(gemm_name("gemm", ta, tb, s, dtype), gc, c, tolerance(dtype));
}

// The F32 tolerance (1e-4) is far below TF32's error (~1e-3 relative for these k), so these
// also show that F32 products are not computed in TF32.
TEST(CudaGemm, MatchesCpuForAllTransposesAndOddSizes) {
  uint64_t seed = 100;
  for (DType dtype : kDtypes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (const GemmShape& s : kGemmShapes) check_gemm(ta, tb, s, dtype, 0.75f, 0.5f, 0, seed++);
}

TEST(CudaGemm, RowStridesWiderThanTheMatrixLeaveThePaddingUntouched) {
  uint64_t seed = 200;
  for (DType dtype : kDtypes)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) check_gemm(ta, tb, {37, 19, 23}, dtype, 1.f, 1.f, 3, seed++);
}

TEST(CudaGemm, BetaZeroOverwritesCWithoutReadingIt) {
  for (DType dtype : kDtypes) {
    const GemmShape s{33, 17, 9};
    Tensor a = random_cpu({s.m, s.k}, 300), b = random_cpu({s.k, s.n}, 301);
    Tensor c = Tensor::zeros({s.m, s.n}, DType::F32);
    Tensor nan = Tensor::empty({s.m, s.n}, DType::F32);
    nan.fill(std::numeric_limits<double>::quiet_NaN());
    Tensor ga = to_gpu(a, dtype), gb = to_gpu(b, dtype), gc = to_gpu(nan, dtype);
    cpu::gemm<float>(false, false, s.m, s.n, s.k, 1.f, a.data<float>(), s.k, b.data<float>(), s.n,
                     0.f, c.data<float>(), s.n);
    cuda::gemm(false, false, s.m, s.n, s.k, 1.f, ga.raw(), s.k, gb.raw(), s.n, 0.f, gc.raw(), s.n,
               dtype);
    expect_close(std::string("gemm beta 0 over NaN ") + dtype_name(dtype), gc, c, tolerance(dtype));
  }
}

TEST(CudaGemm, EmptySumScalesC) {
  for (DType dtype : kDtypes)
    for (float beta : {0.f, 0.5f}) {
      Tensor c = random_cpu({5, 6}, 400);
      Tensor gc = to_gpu(c, dtype);
      // k = 0: A and B are never read.
      cuda::gemm(false, false, 5, 6, 0, 1.f, nullptr, 1, nullptr, 6, beta, gc.raw(), 6, dtype);
      for (int64_t i = 0; i < c.numel(); ++i) c.data<float>()[i] *= beta;
      expect_close(std::string("gemm k 0 ") + dtype_name(dtype), gc, c, tolerance(dtype));
    }
}

// Sub-matrices at odd element offsets: pointers only 2- or 4-byte aligned.
TEST(CudaGemm, MisalignedPointersWork) {
  for (DType dtype : kDtypes) {
    const GemmShape s{31, 29, 27};
    Tensor a = random_cpu({s.m * s.k + 1}, 500), b = random_cpu({s.n * s.k + 1}, 501);
    Tensor c = random_cpu({s.m * s.n + 1}, 502);
    Tensor ga = to_gpu(a, dtype), gb = to_gpu(b, dtype), gc = to_gpu(c, dtype);
    const size_t es = dtype_size(dtype);
    cpu::gemm<float>(false, true, s.m, s.n, s.k, 1.f, a.data<float>() + 1, s.k, b.data<float>() + 1,
                     s.k, 1.f, c.data<float>() + 1, s.n);
    cuda::gemm(false, true, s.m, s.n, s.k, 1.f, static_cast<char*>(ga.raw()) + es, s.k,
               static_cast<char*>(gb.raw()) + es, s.k, 1.f, static_cast<char*>(gc.raw()) + es, s.n,
               dtype);
    expect_close(std::string("gemm misaligned ") + dtype_name(dtype), gc, c, tolerance(dtype));
  }
}

TEST(CudaGemm, StridedBatchedMatchesOneGemmPerMatrixAndSharesAZeroStrideB) {
  const int64_t batch = 3, m = 21, n = 13, k = 17;
  for (DType dtype : kDtypes)
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        Tensor a = random_cpu({batch, m * k}, 600), b = random_cpu({n * k}, 601);
        Tensor c = random_cpu({batch, m * n}, 602);
        Tensor ga = to_gpu(a, dtype), gb = to_gpu(b, dtype), gc = to_gpu(c, dtype);
        const int64_t lda = ta ? m : k, ldb = tb ? k : n;
        for (int64_t i = 0; i < batch; ++i)
          cpu::gemm<float>(ta, tb, m, n, k, 1.5f, a.data<float>() + i * m * k, lda, b.data<float>(),
                           ldb, 0.25f, c.data<float>() + i * m * n, n);
        cuda::gemm_strided_batched(ta, tb, m, n, k, 1.5f, ga.raw(), lda, m * k, gb.raw(), ldb, 0,
                                   0.25f, gc.raw(), n, m * n, batch, dtype);
        expect_close(gemm_name("batched gemm", ta, tb, {m, n, k}, dtype), gc, c, tolerance(dtype));
      }
}

TEST(CudaGemm, BadArgumentsThrow) {
  Tensor a = test::gpu_zeros({4, 4}, DType::F32);
  EXPECT_THROW(
      cuda::gemm(false, false, 4, 4, 4, 1.f, a.raw(), 4, a.raw(), 4, 0.f, a.raw(), 4, DType::F64),
      Error);
  EXPECT_THROW(
      cuda::gemm(false, false, 4, 4, 4, 1.f, a.raw(), 3, a.raw(), 4, 0.f, a.raw(), 4, DType::F32),
      Error);
}

// --- linear ---------------------------------------------------------------------------------

struct LinearShape {
  Shape x;  // [..., K]
  int64_t n;
};
const LinearShape kLinearShapes[] = {{{1, 1}, 1},       {{3, 7}, 5},     {{129, 33}, 65},
                                     {{512, 384}, 256}, {{2, 3, 17}, 9}, {{300, 64}, 1}};

TEST(CudaLinear, ForwardMatchesCpuWithAndWithoutBias) {
  uint64_t seed = 1000;
  for (DType dtype : kDtypes)
    for (const LinearShape& s : kLinearShapes)
      for (bool with_bias : {true, false}) {
        const int64_t k = s.x.back();
        Shape y_shape = s.x;
        y_shape.back() = s.n;
        Tensor x = random_cpu(s.x, seed++), w = random_cpu({s.n, k}, seed++, 0.2);
        Tensor b = with_bias ? random_cpu({s.n}, seed++) : Tensor();
        Tensor y = Tensor::empty(y_shape, DType::F32);
        cpu::linear_forward(x, w, b, y);
        Tensor gy = to_gpu(random_cpu(y_shape, seed++), dtype);  // overwritten
        cuda::linear_forward(to_gpu(x, dtype), to_gpu(w, dtype),
                             with_bias ? to_gpu(b, dtype) : Tensor(), gy);
        expect_close("linear y " + shape_str(s.x) + " n " + std::to_string(s.n) +
                         (with_bias ? " bias " : " ") + dtype_name(dtype),
                     gy, y, tolerance(dtype));
      }
}

TEST(CudaLinear, BackwardOverwritesDxAndAccumulatesDwDb) {
  uint64_t seed = 2000;
  for (DType dtype : kDtypes)
    for (const LinearShape& s : kLinearShapes) {
      const int64_t k = s.x.back();
      Shape y_shape = s.x;
      y_shape.back() = s.n;
      Tensor x = random_cpu(s.x, seed++), w = random_cpu({s.n, k}, seed++, 0.2);
      Tensor dy = random_cpu(y_shape, seed++);
      Tensor dx = random_cpu(s.x, seed++);  // garbage: overwritten
      Tensor dw0 = random_cpu({s.n, k}, seed++), db0 = random_cpu({s.n}, seed++);
      Tensor dw = dw0.clone(), db = db0.clone();
      cpu::linear_backward(x, w, dy, dx, dw, db);
      Tensor gdx = to_gpu(random_cpu(s.x, seed++), dtype);
      Tensor gdw = to_gpu(dw0, dtype), gdb = to_gpu(db0, dtype);
      cuda::linear_backward(to_gpu(x, dtype), to_gpu(w, dtype), to_gpu(dy, dtype), gdx, gdw, gdb);
      const std::string what =
          shape_str(s.x) + " n " + std::to_string(s.n) + " " + dtype_name(dtype);
      expect_close("linear dx " + what, gdx, dx, tolerance(dtype));
      expect_close("linear dw " + what, gdw, dw, tolerance(dtype));
      expect_close("linear db " + what, gdb, db, tolerance(dtype));
    }
}

TEST(CudaLinear, BackwardSkipsUndefinedOutputs) {
  for (DType dtype : kDtypes) {
    Tensor x = random_cpu({70, 24}, 3000), w = random_cpu({11, 24}, 3001);
    Tensor dy = random_cpu({70, 11}, 3002);
    Tensor dx = Tensor::empty({70, 24}, DType::F32), dw = Tensor::zeros({11, 24}, DType::F32);
    Tensor db = Tensor::zeros({11}, DType::F32), none;
    cpu::linear_backward(x, w, dy, dx, dw, db);
    Tensor gx = to_gpu(x, dtype), gw = to_gpu(w, dtype), gdy = to_gpu(dy, dtype);
    Tensor gdx = gpu_empty({70, 24}, dtype), gdw = test::gpu_zeros({11, 24}, dtype);
    Tensor gdb = test::gpu_zeros({11}, dtype);
    cuda::linear_backward(gx, gw, gdy, gdx, none, none);
    cuda::linear_backward(gx, gw, gdy, none, gdw, none);
    cuda::linear_backward(gx, gw, gdy, none, none, gdb);
    const std::string d = dtype_name(dtype);
    expect_close("linear dx alone " + d, gdx, dx, tolerance(dtype));
    expect_close("linear dw alone " + d, gdw, dw, tolerance(dtype));
    expect_close("linear db alone " + d, gdb, db, tolerance(dtype));
  }
}

// The bias gradient sums over more rows than one block takes (256), in a fixed order: two
// runs give the same bits.
TEST(CudaLinear, BiasGradientOverManyRowsIsDeterministic) {
  Tensor x = random_cpu({1000, 8}, 4000), w = random_cpu({45, 8}, 4001);
  Tensor dy = random_cpu({1000, 45}, 4002);
  Tensor gx = to_gpu(x), gw = to_gpu(w), gdy = to_gpu(dy), none;
  Tensor db1 = test::gpu_zeros({45}, DType::F32), db2 = test::gpu_zeros({45}, DType::F32);
  cuda::linear_backward(gx, gw, gdy, none, none, db1);
  cuda::linear_backward(gx, gw, gdy, none, none, db2);
  const Tensor h1 = to_cpu(db1), h2 = to_cpu(db2);
  for (int64_t i = 0; i < 45; ++i) EXPECT_EQ(h1.data<float>()[i], h2.data<float>()[i]) << i;
}

TEST(CudaLinear, MismatchedShapesDtypesAndDevicesThrow) {
  Tensor x = to_gpu(random_cpu({3, 7}, 5000)), w = to_gpu(random_cpu({4, 7}, 5001));
  Tensor y = gpu_empty({3, 4}, DType::F32);
  Tensor w_bad = to_gpu(random_cpu({4, 6}, 5002)), b_bad = to_gpu(random_cpu({5}, 5003));
  Tensor y_bad = gpu_empty({3, 5}, DType::F32), y_bf16 = gpu_empty({3, 4}, DType::BF16);
  Tensor w_cpu = random_cpu({4, 7}, 5004);
  EXPECT_THROW(cuda::linear_forward(x, w_bad, Tensor(), y), Error);
  EXPECT_THROW(cuda::linear_forward(x, w, b_bad, y), Error);
  EXPECT_THROW(cuda::linear_forward(x, w, Tensor(), y_bad), Error);
  EXPECT_THROW(cuda::linear_forward(x, w, Tensor(), y_bf16), Error);
  EXPECT_THROW(cuda::linear_forward(x, w_cpu, Tensor(), y), Error);
  Tensor dy_bad = gpu_empty({3, 5}, DType::F32), dx = gpu_empty({3, 7}, DType::F32), none;
  EXPECT_THROW(cuda::linear_backward(x, w, dy_bad, dx, none, none), Error);
}

}  // namespace
}  // namespace nh
