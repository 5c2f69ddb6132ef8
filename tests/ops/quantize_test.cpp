#include "ops/quantize.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "io/safetensors.h"
#include "support/expect.h"

namespace nh {
namespace {

const std::string kData = std::string(NH_SOURCE_DIR) + "/tests/data/quant/";
// The cases of tools/make_quant_reference.py.
const char* const kNf4Cases[] = {"w48x32", "w100x33", "e3x20x16", "w7x9", "w96x171"};
const char* const kInt8Cases[] = {"w48x32", "w100x33", "e3x20x16"};

float ulp(float x) {
  x = std::fabs(x);
  return std::nextafter(x, INFINITY) - x;
}

void expect_same_bytes(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  const auto* a = static_cast<const uint8_t*>(got.raw());
  const auto* b = static_cast<const uint8_t*>(want.raw());
  for (size_t i = 0; i < got.nbytes(); ++i) ASSERT_EQ(a[i], b[i]) << what << " byte " << i;
}

// A normal tensor whose blocks of `block` elements have scales from 1e-3 to 10 (log-uniform),
// with the special blocks the round-trip bounds must hold for: all zeros, all negative, large
// (1e4) and tiny (1e-6).
Tensor random_blocks(const Shape& shape, int64_t block, uint64_t seed) {
  Rng rng(seed);
  Tensor t = Tensor::empty(shape, DType::F32);
  float* p = t.data<float>();
  for (int64_t b = 0; b * block < t.numel(); ++b) {
    double scale = std::pow(10.0, rng.uniform(-3, 1));
    if (b == 2) scale = 1e4;
    if (b == 3) scale = 1e-6;
    for (int64_t i = b * block; i < std::min(t.numel(), (b + 1) * block); ++i) {
      const double v = scale * rng.normal();
      p[i] = float(b == 0 ? 0.0 : b == 1 ? -std::fabs(v) - 1e-3 : v);
    }
  }
  return t;
}

TEST(QuantizeNf4, CodeBooksAreBitsandbytes) {
  const SafetensorsFile ref(kData + "nf4_reference.safetensors");
  const Tensor nf4 = ref.get("nf4_code"), dynamic = ref.get("dynamic_code");
  const auto ours4 = quant::nf4_code_book();
  const auto ours8 = quant::dynamic_code_book();
  for (int k = 0; k < 16; ++k) EXPECT_EQ(ours4.value[k], nf4.data<float>()[k]) << k;
  for (int k = 0; k < 256; ++k) EXPECT_EQ(ours8.value[k], dynamic.data<float>()[k]) << k;
}

// Codes and the quantised absmax byte for byte. The offset is bitsandbytes' fp32 mean, which can
// be an ulp from the correctly rounded one; absmax2 = max |absmax − offset| moves with it.
TEST(QuantizeNf4, ReproducesBitsandbytesBytes) {
  const SafetensorsFile ref(kData + "nf4_reference.safetensors");
  for (const std::string c : kNf4Cases) {
    const Tensor w = ref.get(c + ".input");
    const QuantizedTensor q = quantize(w, QuantKind::NF4);
    EXPECT_EQ(q.kind, QuantKind::NF4);
    EXPECT_EQ(q.shape, w.shape());
    expect_same_bytes(q.data, ref.get(c + ".data"), c + " data");
    expect_same_bytes(q.absmax_q, ref.get(c + ".absmax_q"), c + " absmax_q");
    const float offset = ref.get(c + ".offset").data<float>()[0];
    EXPECT_LE(std::fabs(q.offset - offset), ulp(offset)) << c;
    const Tensor absmax2 = ref.get(c + ".absmax2");
    ASSERT_EQ(q.absmax2.numel(), absmax2.numel()) << c;
    for (int64_t k = 0; k < absmax2.numel(); ++k) {
      const float want = absmax2.data<float>()[k];
      if (q.offset == offset)
        EXPECT_EQ(q.absmax2.data<float>()[k], want) << c << " absmax2 " << k;
      else
        EXPECT_LE(std::fabs(q.absmax2.data<float>()[k] - want), ulp(offset)) << c << " " << k;
    }
  }
}

// Dequantising bitsandbytes' own bytes gives its values bit for bit (fp32 and bf16 out); from our
// bytes, the same when the offsets agree, else within the offset's difference.
TEST(QuantizeNf4, DequantizesLikeBitsandbytes) {
  const SafetensorsFile ref(kData + "nf4_reference.safetensors");
  for (const std::string c : kNf4Cases) {
    const Tensor w = ref.get(c + ".input"), want = ref.get(c + ".dequantized");
    QuantizedTensor theirs;
    theirs.shape = w.shape();
    theirs.data = ref.get(c + ".data");
    theirs.absmax_q = ref.get(c + ".absmax_q");
    theirs.absmax2 = ref.get(c + ".absmax2");
    theirs.offset = ref.get(c + ".offset").data<float>()[0];
    Tensor out = Tensor::empty(w.shape(), want.dtype());
    dequantize(theirs, out);
    expect_same_bytes(out, want, c + " from bitsandbytes' bytes");

    const QuantizedTensor ours = quantize(w, QuantKind::NF4);
    dequantize(ours, out);
    if (ours.offset == theirs.offset) {
      expect_same_bytes(out, want, c + " from ours");
      continue;
    }
    const double tol = 2 * ulp(theirs.offset);
    for (int64_t i = 0; i < out.numel(); ++i)
      EXPECT_NEAR(read_float(out, i), read_float(want, i), tol) << c << " " << i;
  }
}

TEST(QuantizeInt8, ReproducesBitsandbytes) {
  const SafetensorsFile ref(kData + "int8_reference.safetensors");
  for (const std::string c : kInt8Cases) {
    const Tensor w = ref.get(c + ".input");
    const QuantizedTensor q = quantize(w, QuantKind::Int8);
    EXPECT_EQ(q.kind, QuantKind::Int8);
    expect_same_bytes(q.data, ref.get(c + ".data"), c + " data");
    const Tensor absmax = ref.get(c + ".row_absmax");
    ASSERT_EQ(q.row_scale.numel(), absmax.numel()) << c;
    for (int64_t r = 0; r < absmax.numel(); ++r)
      EXPECT_EQ(q.row_scale.data<float>()[r], absmax.data<float>()[r] / 127.f) << c << " " << r;
    // bitsandbytes rounds twice, fl(fl(q · absmax) · fl(1/127)), the engine once from a rounded
    // scale, fl(q · fl(absmax / 127)): each is within about an ulp of q · absmax / 127.
    const Tensor want = ref.get(c + ".dequantized");
    Tensor out = Tensor::empty(w.shape(), DType::F32);
    dequantize(q, out);
    for (int64_t i = 0; i < out.numel(); ++i) {
      const float b = want.data<float>()[i];
      EXPECT_LE(std::fabs(out.data<float>()[i] - b), 2 * ulp(b)) << c << " " << i;
    }
  }
}

template <int N>
float widest_gap(const quant::CodeBook<N>& book) {
  float gap = 0;
  for (int k = 0; k + 1 < N; ++k) gap = std::max(gap, book.value[k + 1] - book.value[k]);
  return gap;
}

// Per element, |w − ŵ| <= half the widest NF4 gap times the block's absmax, plus the error of
// the dequantised absmax: half the widest dynamic-map gap times absmax2, and its roundings.
TEST(QuantizeNf4, RoundTripStaysWithinTheCodeBookGaps) {
  const Shape shape = {130, 130};  // 265 blocks: two absmax2 blocks, a last block of 4
  const Tensor w = random_blocks(shape, quant::kNf4Block, 7);
  const QuantizedTensor q = quantize(w, QuantKind::NF4);
  ASSERT_EQ(q.absmax2.numel(), 2);
  Tensor out = Tensor::empty(shape, DType::F32);
  dequantize(q, out);
  const float nf4_gap = widest_gap(quant::nf4_code_book());
  const float dynamic_gap = widest_gap(quant::dynamic_code_book());
  const float* x = w.data<float>();
  const float* y = out.data<float>();
  for (int64_t b = 0; b * 64 < w.numel(); ++b) {
    const int64_t end = std::min(w.numel(), (b + 1) * 64);
    float absmax = 0;
    for (int64_t i = b * 64; i < end; ++i) absmax = std::max(absmax, std::fabs(x[i]));
    const double bound = nf4_gap / 2 * absmax + dynamic_gap / 2 * q.absmax2.data<float>()[b / 256] +
                         2 * ulp(q.offset) + ulp(absmax);
    for (int64_t i = b * 64; i < end; ++i) {
      if (b == 0) {
        EXPECT_EQ(y[i], 0.f) << i;  // an all-zero block comes back exactly
      }
      EXPECT_LE(std::fabs(y[i] - x[i]), bound) << "block " << b << " element " << i;
    }
  }
  // 0.5 byte a code, a byte per 64 and 4 per 64·256 for the scales, 4 for the offset.
  EXPECT_EQ(q.bytes(), 130 * 130 / 2 + 265 + 2 * 4 + 4);
}

// On N(0, 1) weights NF4 loses about a tenth of the signal's RMS.
TEST(QuantizeNf4, RoundTripErrorOfNormalWeights) {
  Rng rng(11);
  Tensor w = Tensor::empty({256, 512}, DType::F32);
  for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = float(rng.normal());
  Tensor out = Tensor::empty(w.shape(), DType::F32);
  dequantize(quantize(w, QuantKind::NF4), out);
  double err = 0, sig = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    const double d = out.data<float>()[i] - w.data<float>()[i];
    err += d * d;
    sig += double(w.data<float>()[i]) * w.data<float>()[i];
  }
  EXPECT_LT(std::sqrt(err / sig), 0.11);
}

// |w − ŵ| <= half a step, row_scale / 2, up to the roundings of the scale and the product.
TEST(QuantizeInt8, RoundTripWithinHalfAStep) {
  const Shape shape = {3, 5, 40};  // experts: 15 rows of 40
  const Tensor w = random_blocks(shape, 40, 9);
  const QuantizedTensor q = quantize(w, QuantKind::Int8);
  ASSERT_EQ(q.row_scale.numel(), 15);
  Tensor out = Tensor::empty(shape, DType::F32);
  dequantize(q, out);
  for (int64_t i = 0; i < w.numel(); ++i) {
    const float scale = q.row_scale.data<float>()[i / 40];
    const float x = w.data<float>()[i], y = out.data<float>()[i];
    EXPECT_LE(std::fabs(y - x), 0.5f * scale * (1 + 1e-6f) + ulp(x)) << i;
    if (i < 40) {
      EXPECT_EQ(y, 0.f) << i;  // the zero row
    }
  }
  EXPECT_EQ(q.row_scale.data<float>()[0], 0.f);
  EXPECT_EQ(q.bytes(), 3 * 5 * 40 + 15 * 4);
}

// Other float dtypes: quantised as their fp32 values (F64 rounded to fp32 first); dequantised
// through fp32, then rounded to out's dtype.
TEST(Quantize, OtherFloatDtypesGoThroughFp32) {
  const Tensor w = random_blocks({33, 17}, 64, 5);
  for (QuantKind kind : {QuantKind::NF4, QuantKind::Int8}) {
    const QuantizedTensor base = quantize(w, kind);
    Tensor base_out = Tensor::empty(w.shape(), DType::F32);
    dequantize(base, base_out);
    for (DType dtype : {DType::F64, DType::F16, DType::BF16}) {
      const std::string tag = dtype_name(dtype);
      const Tensor wd = w.to(dtype);
      const QuantizedTensor q = quantize(wd, kind);
      const QuantizedTensor q32 = quantize(wd.to(DType::F32), kind);
      expect_same_bytes(q.data, q32.data, tag + " data");
      Tensor out = Tensor::empty(w.shape(), dtype);
      dequantize(base, out);
      expect_same_bytes(out, base_out.to(dtype), tag + " out");
    }
  }
}

TEST(Quantize, BadInputIsAnError) {
  using test::expect_error;
  const Tensor w = random_blocks({8, 16}, 64, 3);
  expect_error(
      [&] {
        quantize(Tensor::zeros({8, 16}, DType::I32), QuantKind::NF4);
      },
      "quantize", "w dtype");
  expect_error(
      [&] {
        quantize(Tensor::zeros({8, 16}, DType::U8), QuantKind::Int8);
      },
      "quantize", "w dtype");
  expect_error(
      [&] {
        quantize(Tensor::empty({0, 16}, DType::F32), QuantKind::NF4);
      },
      "quantize", "w shape");
  for (QuantKind kind : {QuantKind::NF4, QuantKind::Int8}) {
    const QuantizedTensor q = quantize(w, kind);
    Tensor wrong_shape = Tensor::empty({16, 8}, DType::F32);
    expect_error([&] { dequantize(q, wrong_shape); }, "dequantize", "out shape");
    Tensor wrong_dtype = Tensor::empty({8, 16}, DType::I32);
    expect_error([&] { dequantize(q, wrong_dtype); }, "dequantize", "out dtype");
    QuantizedTensor short_data = q;
    short_data.data = q.data.slice0(0, q.data.numel() - 1);
    Tensor out = Tensor::empty({8, 16}, DType::F32);
    expect_error([&] { dequantize(short_data, out); }, "dequantize", "data size");
  }
  QuantizedTensor no_scales = quantize(w, QuantKind::NF4);
  no_scales.absmax2 = Tensor();
  Tensor out = Tensor::empty({8, 16}, DType::F32);
  expect_error([&] { dequantize(no_scales, out); }, "dequantize", "absmax2");
  QuantizedTensor int8_as_nf4 = quantize(w, QuantKind::Int8);
  int8_as_nf4.kind = QuantKind::NF4;
  expect_error([&] { dequantize(int8_as_nf4, out); }, "dequantize", "data size");
}

}  // namespace
}  // namespace nh
