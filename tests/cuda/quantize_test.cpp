#include "ops/quantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>

#include "core/rng.h"
#include "cuda/harness.h"

namespace nh {
namespace {

using test::to_gpu;

// A CPU copy in the tensor's own dtype (the harness's to_cpu converts floats to F32).
Tensor host_copy(const Tensor& gpu) {
  Tensor h = Tensor::empty(gpu.shape(), gpu.dtype());
  h.copy_from(gpu);
  return h;
}

void expect_same_bytes(const Tensor& gpu, const Tensor& cpu, const std::string& what) {
  ASSERT_EQ(gpu.device(), Device::CUDA) << what;
  ASSERT_EQ(gpu.shape(), cpu.shape()) << what;
  ASSERT_EQ(gpu.dtype(), cpu.dtype()) << what;
  const Tensor h = host_copy(gpu);
  EXPECT_EQ(std::memcmp(h.raw(), cpu.raw(), cpu.nbytes()), 0) << what;
}

// Normal values with a scale per block of 64 from 1e-3 to 10, the first block all zeros and the
// second all negative.
Tensor random_weight(const Shape& shape, uint64_t seed) {
  Rng rng(seed);
  Tensor t = Tensor::empty(shape, DType::F32);
  float* p = t.data<float>();
  double scale = 1;
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (i % 64 == 0) scale = std::pow(10.0, rng.uniform(-3, 1));
    const double v = scale * rng.normal();
    p[i] = float(i < 64 ? 0.0 : i < 128 ? -std::fabs(v) : v);
  }
  return t;
}

// cuda::quantize and cuda::dequantize equal the CPU's for every input and output dtype.
void expect_matches_cpu(const Shape& shape, QuantKind kind, uint64_t seed) {
  const Tensor w32 = random_weight(shape, seed);
  for (DType dtype : {DType::F32, DType::BF16, DType::F16, DType::F64}) {
    const std::string tag = std::string(kind == QuantKind::NF4 ? "NF4 " : "Int8 ") +
                            dtype_name(dtype) + " " + shape_str(shape) + " ";
    const Tensor w = w32.to(dtype);
    const QuantizedTensor c = cpu::quantize(w, kind);
    const QuantizedTensor g = cuda::quantize(to_gpu(w, dtype), kind);
    EXPECT_EQ(g.device(), Device::CUDA) << tag;
    EXPECT_EQ(g.shape, shape) << tag;
    EXPECT_EQ(g.bytes(), c.bytes()) << tag;
    expect_same_bytes(g.data, c.data, tag + "data");
    if (kind == QuantKind::NF4) {
      expect_same_bytes(g.absmax_q, c.absmax_q, tag + "absmax_q");
      expect_same_bytes(g.absmax2, c.absmax2, tag + "absmax2");
      EXPECT_EQ(g.offset, c.offset) << tag;
    } else {
      expect_same_bytes(g.row_scale, c.row_scale, tag + "row_scale");
    }
    for (DType out_dtype : {DType::F32, DType::BF16, DType::F16, DType::F64}) {
      Tensor out = Tensor::empty(shape, out_dtype);
      cpu::dequantize(c, out);
      Tensor gout = Tensor::empty(shape, out_dtype, Device::CUDA);
      cuda::dequantize(g, gout);
      expect_same_bytes(gout, out, tag + "dequantized to " + dtype_name(out_dtype));
    }
  }
}

// 7x9: one partial block, an odd count. 100x33: a last block of 36. 130x130: two absmax2
// blocks. 3x20x16: experts. 1024x4096: many blocks and threads.
TEST(CudaQuantize, Nf4MatchesCpuByteForByte) {
  uint64_t seed = 1;
  for (const Shape& shape :
       {Shape{7, 9}, Shape{100, 33}, Shape{130, 130}, Shape{3, 20, 16}, Shape{1024, 4096}})
    expect_matches_cpu(shape, QuantKind::NF4, seed++);
}

TEST(CudaQuantize, Int8MatchesCpuByteForByte) {
  uint64_t seed = 11;
  for (const Shape& shape :
       {Shape{7, 9}, Shape{100, 33}, Shape{3, 20, 16}, Shape{64, 5000}, Shape{1024, 4096}})
    expect_matches_cpu(shape, QuantKind::Int8, seed++);
}

TEST(CudaQuantize, RejectsCpuTensorsAndBadOutputs) {
  const Tensor w = random_weight({8, 64}, 21);
  EXPECT_THROW(cuda::quantize(w, QuantKind::NF4), Error);
  const QuantizedTensor g = cuda::quantize(to_gpu(w), QuantKind::NF4);
  Tensor cpu_out = Tensor::empty({8, 64}, DType::F32);
  EXPECT_THROW(cuda::dequantize(g, cpu_out), Error);
  Tensor wrong_shape = Tensor::empty({64, 8}, DType::F32, Device::CUDA);
  EXPECT_THROW(cuda::dequantize(g, wrong_shape), Error);
  EXPECT_THROW(cuda::quantize(to_gpu(Tensor::zeros({8, 64}, DType::I32)), QuantKind::Int8), Error);
}

}  // namespace
}  // namespace nh
