// add_inplace, copy_columns and write_columns on the GPU against the CPU.
#include "ops/elementwise.h"

#include <string>

#include "cuda/harness.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;
using test::tolerance;

const DType kDtypes[] = {DType::F32, DType::BF16};

TEST(CudaAddInplace, MatchesCpuForOddAndLargeSizes) {
  uint64_t seed = 1;
  for (DType dtype : kDtypes)
    for (const Shape& shape :
         {Shape{1}, Shape{7, 3}, Shape{1000, 1}, Shape{3, 257, 129}, Shape{1 << 21}}) {
      Tensor a = random_cpu(shape, seed++), b = random_cpu(shape, seed++);
      Tensor ga = to_gpu(a, dtype);
      cuda::add_inplace(ga, to_gpu(b, dtype));
      cpu::add_inplace(a, b);
      expect_close("add_inplace " + shape_str(shape) + " " + dtype_name(dtype), ga, a,
                   tolerance(dtype));
    }
}

// Slices one element into a buffer: the arrays are not 16-byte aligned, whatever their length.
TEST(CudaAddInplace, MatchesCpuOnUnalignedSlices) {
  for (DType dtype : kDtypes) {
    Tensor a = random_cpu({4097}, 11), b = random_cpu({4097}, 12);
    Tensor ga = to_gpu(a, dtype).slice0(1, 4097), gb = to_gpu(b, dtype).slice0(1, 4097);
    cuda::add_inplace(ga, gb);
    Tensor ca = a.slice0(1, 4097).clone();
    cpu::add_inplace(ca, b.slice0(1, 4097).clone());
    expect_close(std::string("add_inplace unaligned ") + dtype_name(dtype), ga, ca,
                 tolerance(dtype));
  }
}

// (rows, columns of the wide tensor, begin, width of the slice); the GPU copies in units of 1 to
// 16 bytes, whichever the sizes and offsets allow.
struct ColumnCase {
  int64_t rows, cols, begin, width;
};
const ColumnCase kColumnCases[] = {{1, 1, 0, 1},          {3, 7, 2, 4},
                                   {5, 9, 8, 1},          {129, 300, 0, 300},
                                   {70000, 5, 1, 3},      {17, 5000, 123, 4321},
                                   {64, 96, 32, 40},      {10, 18, 2, 8},
                                   {300, 1040, 1024, 16}, {2000, 2320, 1024, 1280}};

// A plain copy: the GPU result must equal the CPU's bit for bit (compared with tolerance 0).
TEST(CudaColumns, CopyColumnsMatchesCpuExactly) {
  uint64_t seed = 100;
  for (DType dtype : kDtypes)
    for (const ColumnCase& c : kColumnCases) {
      Tensor wide = random_cpu({c.rows, c.cols}, seed++).to(dtype);
      Tensor part = Tensor::empty({c.rows, c.width}, dtype);
      cpu::copy_columns(wide, c.begin, part);
      Tensor gpart = gpu_empty({c.rows, c.width}, dtype);
      cuda::copy_columns(to_gpu(wide, dtype), c.begin, gpart);
      expect_close("copy_columns " + shape_str(wide.shape()) + " begin " + std::to_string(c.begin) +
                       " " + dtype_name(dtype),
                   gpart, part.to(DType::F32), 0.0);
    }
}

// The columns outside the slice keep their values.
TEST(CudaColumns, WriteColumnsMatchesCpuExactlyAndLeavesOtherColumns) {
  uint64_t seed = 200;
  for (DType dtype : kDtypes)
    for (const ColumnCase& c : kColumnCases) {
      Tensor wide = random_cpu({c.rows, c.cols}, seed++).to(dtype);
      Tensor part = random_cpu({c.rows, c.width}, seed++).to(dtype);
      Tensor gwide = to_gpu(wide, dtype);
      cpu::write_columns(part, wide, c.begin);
      cuda::write_columns(to_gpu(part, dtype), gwide, c.begin);
      expect_close("write_columns " + shape_str(wide.shape()) + " begin " +
                       std::to_string(c.begin) + " " + dtype_name(dtype),
                   gwide, wide.to(DType::F32), 0.0);
    }
}

TEST(CudaColumns, LeadingDimensionsAreRows) {
  Tensor wide = random_cpu({2, 3, 10}, 300), part = Tensor::empty({2, 3, 4}, DType::F32);
  cpu::copy_columns(wide, 5, part);
  Tensor gpart = gpu_empty({2, 3, 4}, DType::F32);
  cuda::copy_columns(to_gpu(wide), 5, gpart);
  expect_close("copy_columns [2, 3, 10]", gpart, part, 0.0);
}

TEST(CudaColumns, OutOfRangeSlicesAndMismatchesThrow) {
  Tensor wide = test::gpu_zeros({3, 7}, DType::F32), part = test::gpu_zeros({3, 4}, DType::F32);
  EXPECT_THROW(cuda::copy_columns(wide, 4, part), Error);
  EXPECT_THROW(cuda::copy_columns(wide, -1, part), Error);
  Tensor rows = test::gpu_zeros({2, 4}, DType::F32);
  EXPECT_THROW(cuda::write_columns(rows, wide, 0), Error);
  Tensor part_bf16 = test::gpu_zeros({3, 4}, DType::BF16);
  EXPECT_THROW(cuda::write_columns(part_bf16, wide, 0), Error);
  Tensor b = test::gpu_zeros({5}, DType::F32);
  EXPECT_THROW(cuda::add_inplace(wide, b), Error);
}

}  // namespace
}  // namespace nh
