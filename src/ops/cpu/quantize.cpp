#include "ops/quantize.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>
#include <vector>

#include "ops/cpu/parallel.h"

namespace nh {

namespace {

void check_tensor(const Tensor& t, DType dtype, int64_t numel, Device device, const char* what) {
  if (!t.defined()) throw Error("dequantize", what, "a tensor", "none");
  if (t.dtype() != dtype)
    throw Error("dequantize", std::string(what) + " dtype", dtype_name(dtype),
                dtype_name(t.dtype()));
  if (t.numel() != numel)
    throw Error("dequantize", std::string(what) + " size", std::to_string(numel) + " elements",
                shape_str(t.shape()));
  if (t.device() != device)
    throw Error("dequantize", std::string(what) + " device", device_name(device),
                device_name(t.device()));
}

}  // namespace

void quant::check_input(const Tensor& w) {
  if (!is_float(w.dtype()))
    throw Error("quantize", "w dtype", "F64, F32, F16 or BF16", dtype_name(w.dtype()));
  if (w.ndim() < 1 || w.numel() == 0)
    throw Error("quantize", "w shape", "at least one element in at least one dimension",
                shape_str(w.shape()));
}

void quant::check_quantized(const QuantizedTensor& q, const Tensor& out) {
  const int64_t n = shape_numel(q.shape);
  if (q.shape.empty() || n <= 0)
    throw Error("dequantize", "q.shape", "at least one element in at least one dimension",
                shape_str(q.shape));
  const Device device = q.device();
  if (q.kind == QuantKind::NF4) {
    const int64_t blocks = (n + kNf4Block - 1) / kNf4Block;
    check_tensor(q.data, DType::U8, (n + 1) / 2, device, "data");
    check_tensor(q.absmax_q, DType::U8, blocks, device, "absmax_q");
    check_tensor(q.absmax2, DType::F32, (blocks + kAbsmaxBlock - 1) / kAbsmaxBlock, device,
                 "absmax2");
  } else {
    check_tensor(q.data, DType::U8, n, device, "data");
    check_tensor(q.row_scale, DType::F32, n / q.shape.back(), device, "row_scale");
  }
  if (out.shape() != q.shape)
    throw Error("dequantize", "out shape", shape_str(q.shape), shape_str(out.shape()));
  if (!is_float(out.dtype()))
    throw Error("dequantize", "out dtype", "F64, F32, F16 or BF16", dtype_name(out.dtype()));
  if (out.device() != device)
    throw Error("dequantize", "out device", device_name(device), device_name(out.device()));
}

namespace cpu {

namespace {

using quant::CodeBook;

// The index of the code nearest s: the number of midpoints below s (a tie goes to the lower code).
template <int N>
int code_of(const CodeBook<N>& book, float s) {
  return int(std::lower_bound(book.mid, book.mid + N - 1, s) - book.mid);
}

// One block of blockwise quantisation (ops/quantize.h): its stored absmax and how its values are
// scaled into [-1, 1].
struct Block {
  float absmax, inv;
  bool partial;

  Block(const float* x, int64_t len, int64_t block_size) : partial(len < block_size) {
    float m = 0.f;
    for (int64_t i = 0; i < len; ++i) m = std::max(m, std::fabs(x[i]));
    absmax = partial ? std::max(m, quant::kMinAbsmax) : m;
    inv = 1.f / std::max(m, quant::kMinAbsmax);
  }
  float scaled(float x) const { return partial ? x / absmax : x * inv; }
};

// The 8-bit second level: offset = mean(absmax), then absmax − offset in blocks of 256.
void quantize_absmax(const std::vector<float>& absmax, QuantizedTensor& q) {
  const int64_t n = int64_t(absmax.size()),
                groups = (n + quant::kAbsmaxBlock - 1) / quant::kAbsmaxBlock;
  // Summed per block of 256, then over the blocks in order: the CUDA backend keeps this order,
  // so both round the same double to the same offset.
  std::vector<double> partial(size_t(groups), 0.0);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t i = g * quant::kAbsmaxBlock; i < std::min(n, (g + 1) * quant::kAbsmaxBlock); ++i)
      partial[size_t(g)] += absmax[size_t(i)];
  double total = 0;
  for (double p : partial) total += p;
  q.offset = float(total / double(n));

  std::vector<float> centred(absmax.size());
  for (size_t i = 0; i < absmax.size(); ++i) centred[i] = absmax[i] - q.offset;
  static const CodeBook<256> book = quant::dynamic_code_book();
  uint8_t* codes = q.absmax_q.data<uint8_t>();
  float* scales = q.absmax2.data<float>();
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t begin = g * quant::kAbsmaxBlock;
    const int64_t len = std::min(quant::kAbsmaxBlock, n - begin);
    const Block block(centred.data() + begin, len, quant::kAbsmaxBlock);
    scales[g] = block.absmax;
    for (int64_t i = begin; i < begin + len; ++i)
      codes[i] = uint8_t(code_of(book, block.scaled(centred[size_t(i)])));
  }
}

QuantizedTensor quantize_nf4(const float* x, const Shape& shape) {
  const int64_t n = shape_numel(shape), blocks = (n + quant::kNf4Block - 1) / quant::kNf4Block;
  QuantizedTensor q;
  q.kind = QuantKind::NF4;
  q.shape = shape;
  q.data = Tensor::empty({(n + 1) / 2}, DType::U8);
  q.absmax_q = Tensor::empty({blocks}, DType::U8);
  q.absmax2 = Tensor::empty({(blocks + quant::kAbsmaxBlock - 1) / quant::kAbsmaxBlock}, DType::F32);
  static const CodeBook<16> book = quant::nf4_code_book();
  std::vector<float> absmax(static_cast<size_t>(blocks));
  uint8_t* data = q.data.data<uint8_t>();
#pragma omp parallel for if (n >= kMinParallelWork)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * quant::kNf4Block, len = std::min(quant::kNf4Block, n - begin);
    const float* xb = x + begin;
    const Block block(xb, len, quant::kNf4Block);
    absmax[size_t(b)] = block.absmax;
    // Blocks have an even length but the last: only an odd numel leaves a nibble with no element,
    // which holds the code of 0.
    for (int64_t i = 0; i < len; i += 2) {
      const int hi = code_of(book, block.scaled(xb[i]));
      const int lo = code_of(book, i + 1 < len ? block.scaled(xb[i + 1]) : 0.f);
      data[(begin + i) / 2] = uint8_t(hi << 4 | lo);
    }
  }
  quantize_absmax(absmax, q);
  return q;
}

QuantizedTensor quantize_int8(const float* x, const Shape& shape) {
  const int64_t n = shape_numel(shape), cols = shape.back(), rows = n / cols;
  QuantizedTensor q;
  q.kind = QuantKind::Int8;
  q.shape = shape;
  q.data = Tensor::empty({n}, DType::U8);
  q.row_scale = Tensor::empty({rows}, DType::F32);
  uint8_t* data = q.data.data<uint8_t>();
  float* row_scale = q.row_scale.data<float>();
#pragma omp parallel for if (n >= kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float m = 0.f;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, std::fabs(xr[c]));
    // |x · scale| <= 127 up to one rounding, so the rounded code fits an int8. A row too small
    // for 127/m to be finite saturates instead of overflowing.
    const float scale = m > 0.f ? std::min(127.f / m, FLT_MAX) : 0.f;
    for (int64_t c = 0; c < cols; ++c)
      data[r * cols + c] = uint8_t(int8_t(std::nearbyint(xr[c] * scale)));
    row_scale[r] = m / 127.f;
  }
  return q;
}

// Calls f(store), store(i, v) writing fp32 v to element i of out rounded to out's dtype.
template <class F>
void with_float_store(Tensor& out, F&& f) {
  void* p = out.raw();
  switch (out.dtype()) {
    case DType::F64:
      f([p](int64_t i, float v) { static_cast<double*>(p)[i] = v; });
      return;
    case DType::F32:
      f([p](int64_t i, float v) { static_cast<float*>(p)[i] = v; });
      return;
    case DType::F16:
      f([p](int64_t i, float v) { static_cast<uint16_t*>(p)[i] = float_to_f16(v); });
      return;
    case DType::BF16:
      f([p](int64_t i, float v) { static_cast<uint16_t*>(p)[i] = float_to_bf16(v); });
      return;
    default:
      throw Error("dequantize", "out dtype", "F64, F32, F16 or BF16", dtype_name(out.dtype()));
  }
}

void dequantize_nf4(const QuantizedTensor& q, Tensor& out) {
  const int64_t n = out.numel(), blocks = q.absmax_q.numel();
  static const CodeBook<16> nf4 = quant::nf4_code_book();
  static const CodeBook<256> dynamic = quant::dynamic_code_book();
  const uint8_t* codes = q.absmax_q.data<uint8_t>();
  const float* scales = q.absmax2.data<float>();
  // Each step in double, then rounded to fp32: the same as one fp32 rounding (double has more
  // than 2·24 + 2 bits), and no compiler may fuse the product and the sum into an fma.
  std::vector<float> absmax(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) {
    const float scaled = float(double(dynamic.value[codes[b]]) * scales[b / quant::kAbsmaxBlock]);
    absmax[size_t(b)] = float(double(scaled) + double(q.offset));
  }
  const uint8_t* data = q.data.data<uint8_t>();
  with_float_store(out, [&](auto store) {
#pragma omp parallel for if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) {
      const int code = i % 2 ? data[i / 2] & 15 : data[i / 2] >> 4;
      store(i, nf4.value[code] * absmax[size_t(i / quant::kNf4Block)]);
    }
  });
}

void dequantize_int8(const QuantizedTensor& q, Tensor& out) {
  const int64_t n = out.numel(), cols = q.shape.back();
  const uint8_t* data = q.data.data<uint8_t>();
  const float* row_scale = q.row_scale.data<float>();
  with_float_store(out, [&](auto store) {
#pragma omp parallel for if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) store(i, float(int8_t(data[i])) * row_scale[i / cols]);
  });
}

}  // namespace

QuantizedTensor quantize(const Tensor& w, QuantKind kind) {
  quant::check_input(w);
  if (w.device() != Device::CPU)
    throw Error("quantize", "w device", "CPU", device_name(w.device()));
  const Tensor x = w.dtype() == DType::F32 ? w : w.to(DType::F32);
  return kind == QuantKind::NF4 ? quantize_nf4(x.data<float>(), w.shape())
                                : quantize_int8(x.data<float>(), w.shape());
}

void dequantize(const QuantizedTensor& q, Tensor& out) {
  quant::check_quantized(q, out);
  if (q.device() != Device::CPU)
    throw Error("dequantize", "q device", "CPU", device_name(q.device()));
  if (q.kind == QuantKind::NF4)
    dequantize_nf4(q, out);
  else
    dequantize_int8(q, out);
}

}  // namespace cpu

}  // namespace nh
