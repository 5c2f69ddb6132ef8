// Frozen base weights stored quantised (QLoRA), in bitsandbytes' layouts and with the rules of
// its PyTorch implementation (backends/default/ops.py, release 0.50), so the bytes are the ones
// it writes.
//
// NF4 — quantize_4bit(quant_type="nf4", blocksize=64, compress_statistics=True). The tensor is
// quantised flat (MoE experts [E, rows, cols] too) in blocks of 64; a last partial block holds
// the numel % 64 elements left and is a block of its own. Per block, on fp32 values:
//   absmax = max |w|, at least 1e-38 in a partial last block (what bitsandbytes stores);
//   s = w · fl(1 / max(absmax, 1e-38)), but w / absmax in a partial last block;
//   code = the number of midpoints fl((c[k] + c[k+1]) / 2) of the NF4 code book below s: the
//          nearest c[k], a tie going to the lower code (s = 0 is code 7, exactly 0).
//   data[j] = code[2j] << 4 | code[2j+1]: the first of two elements in the high nibble; with an
//             odd numel the last low nibble is the code of 0.
// Double quantisation of the nb = ceil(numel / 64) absmax values:
//   offset = their mean (summed in double, rounded once to fp32; bitsandbytes' fp32 mean may be
//            an ulp away, as its summation order depends on the device);
//   a = fl(absmax − offset), quantised by the same rules in blocks of 256 with bitsandbytes'
//       signed 8-bit dynamic map: absmax2[k] = the block absmax, absmax_q[b] = the code index.
// Dequantisation, one fp32 rounding per step, then rounded to out's dtype:
//   A[b] = fl(fl(dynamic[absmax_q[b]] · absmax2[b / 256]) + offset);  w = fl(nf4[code] · A[b]).
// An all-zero block keeps codes 7 and comes back exactly 0.
//
// Int8 — int8_vectorwise_quant: per row of the last dimension (rows = numel / cols),
//   q = round-half-even(w · fl(127 / absmax_row)), row_scale = fl(absmax_row / 127),
//   dequantised w = fl(q · row_scale). A zero row has codes 0 and scale 0. (bitsandbytes keeps
//   the absmax and dequantises as fl(fl(q · absmax) · fl(1/127)): within 2 ulps of this.)
//
// bitsandbytes' CUDA kernels (and its PyTorch path before 0.50) differ only in corner cases: they
// scale a partial block by the reciprocal too, give an all-zero block code 0 (not 7) and an
// absmax of 0, and the CUDA kernel sends a value exactly between two dynamic-map codes to the
// even one. Weights must be finite.
#pragma once

#include <cstdint>

#include "ops/dispatch.h"

namespace nh {

enum class QuantKind { NF4, Int8 };

// A frozen weight [rows, cols] (rows = out features), or [E, rows, cols], stored quantised.
struct QuantizedTensor {
  QuantKind kind = QuantKind::NF4;
  Shape shape;       // the logical shape
  Tensor data;       // NF4: U8 [ceil(numel / 2)] packed codes; Int8: U8 [numel] int8 bits
  Tensor absmax_q;   // NF4: U8 [ceil(numel / 64)]
  Tensor absmax2;    // NF4: F32 [ceil(ceil(numel / 64) / 256)]
  float offset = 0;  // NF4
  Tensor row_scale;  // Int8: F32 [numel / cols]

  Device device() const { return data.device(); }
  // Storage bytes: codes and scales (the offset included), for bytes per parameter.
  int64_t bytes() const {
    return int64_t(data.nbytes() + absmax_q.nbytes() + absmax2.nbytes() + row_scale.nbytes()) +
           (kind == QuantKind::NF4 ? int64_t(sizeof offset) : 0);
  }
};

namespace quant {

inline constexpr int64_t kNf4Block = 64;      // elements per absmax
inline constexpr int64_t kAbsmaxBlock = 256;  // absmax values per absmax2
inline constexpr float kMinAbsmax = 1e-38f;   // the floor bitsandbytes puts under a divisor

// bitsandbytes' NF4 code book (normal-distribution quantiles, QLoRA), in code order.
inline constexpr float kNf4[16] = {-1.f,         -0.6961928f,  -0.52507305f,  -0.3949175f,
                                   -0.28444138f, -0.18477343f, -0.091050036f, 0.f,
                                   0.0795803f,   0.1609302f,   0.2461123f,    0.33791524f,
                                   0.44070983f,  0.562617f,    0.72295684f,   1.f};

// The positive entries of bitsandbytes' signed 8-bit dynamic map (create_dynamic_map() in fp32,
// as PyTorch computes it with AVX2 or AVX-512), ascending. The map, in code order, is their
// negatives in descending order (codes 0-126), 0 (127), them (128-254) and 1 (255).
inline constexpr float kDynamicPositive[127] = {
    5.5000004e-7f, 3.2500002e-6f, 7.75e-6f,      2.1249998e-5f, 4.375e-5f,     6.625e-5f,
    8.875e-5f,     1.5625001e-4f, 2.6875004e-4f, 3.8125002e-4f, 4.9375003e-4f, 6.062501e-4f,
    7.1875006e-4f, 8.3125e-4f,    9.437501e-4f,  0.0012812499f, 0.00184375f,   0.00240625f,
    0.00296875f,   0.0035312497f, 0.00409375f,   0.0046562497f, 0.0052187503f, 0.00578125f,
    0.00634375f,   0.00690625f,   0.00746875f,   0.00803125f,   0.00859375f,   0.009156249f,
    0.00971875f,   0.01140625f,   0.01421875f,   0.01703125f,   0.019843752f,  0.02265625f,
    0.02546875f,   0.028281251f,  0.03109375f,   0.03390625f,   0.036718752f,  0.03953125f,
    0.042343747f,  0.04515625f,   0.04796875f,   0.05078125f,   0.05359375f,   0.05640625f,
    0.059218753f,  0.06203125f,   0.06484375f,   0.067656256f,  0.070468746f,  0.07328125f,
    0.07609375f,   0.07890625f,   0.08171876f,   0.08453125f,   0.08734375f,   0.09015625f,
    0.092968754f,  0.09578126f,   0.09859375f,   0.107031256f,  0.12109375f,   0.13515624f,
    0.14921875f,   0.16328125f,   0.17734376f,   0.19140625f,   0.20546874f,   0.21953125f,
    0.23359375f,   0.24765624f,   0.26171875f,   0.27578127f,   0.28984374f,   0.30390626f,
    0.31796873f,   0.33203125f,   0.34609374f,   0.36015624f,   0.37421876f,   0.38828123f,
    0.40234375f,   0.41640624f,   0.43046874f,   0.44453126f,   0.45859373f,   0.47265625f,
    0.4867187f,    0.50078124f,   0.5148437f,    0.5289062f,    0.54296875f,   0.5570313f,
    0.5710938f,    0.58515626f,   0.5992187f,    0.61328125f,   0.6273438f,    0.6414063f,
    0.65546876f,   0.6695312f,    0.68359375f,   0.6976563f,    0.7117188f,    0.72578126f,
    0.7398437f,    0.75390625f,   0.7679688f,    0.78203124f,   0.79609376f,   0.8101562f,
    0.82421875f,   0.8382813f,    0.85234374f,   0.86640626f,   0.8804687f,    0.89453125f,
    0.9085938f,    0.92265624f,   0.93671876f,   0.9507812f,    0.96484375f,   0.9789063f,
    0.99296874f};

// A code book in code order (ascending) and the fp32 midpoints between neighbours.
template <int N>
struct CodeBook {
  float value[N];
  float mid[N - 1];
};

template <int N>
CodeBook<N> with_midpoints(CodeBook<N> book) {
  for (int k = 0; k + 1 < N; ++k) book.mid[k] = (book.value[k] + book.value[k + 1]) * 0.5f;
  return book;
}

inline CodeBook<16> nf4_code_book() {
  CodeBook<16> book{};
  for (int k = 0; k < 16; ++k) book.value[k] = kNf4[k];
  return with_midpoints(book);
}

inline CodeBook<256> dynamic_code_book() {
  CodeBook<256> book{};
  for (int k = 0; k < 127; ++k) {
    book.value[126 - k] = -kDynamicPositive[k];
    book.value[128 + k] = kDynamicPositive[k];
  }
  book.value[127] = 0.f;
  book.value[255] = 1.f;
  return with_midpoints(book);
}

// Errors for what neither backend takes: w not float or empty; q's tensors not of q.kind's
// dtypes and sizes for q.shape, or not all on one device; out not of q.shape, a float dtype and
// on q's device.
void check_input(const Tensor& w);
void check_quantized(const QuantizedTensor& q, const Tensor& out);

}  // namespace quant

namespace cpu {
QuantizedTensor quantize(const Tensor& w, QuantKind kind);
void dequantize(const QuantizedTensor& q, Tensor& out);
}  // namespace cpu
namespace cuda {
QuantizedTensor quantize(const Tensor& w, QuantKind kind);
void dequantize(const QuantizedTensor& q, Tensor& out);
}  // namespace cuda

// w: any float dtype and shape (numel > 0), on the CPU or the GPU; the result lives beside it.
inline QuantizedTensor quantize(const Tensor& w, QuantKind kind) {
  NH_DISPATCH_RETURN(w.device(), quantize(w, kind));
}
// out: shape q.shape, any float dtype, on q's device.
inline void dequantize(const QuantizedTensor& q, Tensor& out) {
  NH_DISPATCH(q.device(), dequantize(q, out));
}

}  // namespace nh
