// Elementwise and layout ops on the GPU (ops/elementwise.h).
//   add_inplace: F32 or BF16, added in fp32 (one rounding to the dtype of a)
//   copy_columns / write_columns: any dtype; a copy of bytes, no conversion
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

#include "ops/cuda/common.cuh"
#include "ops/elementwise.h"

namespace nh::cuda {

namespace {

constexpr int kThreads = 256;
// Enough blocks of kThreads to fill an H100 several times over; the loops are grid-stride.
constexpr int64_t kMaxBlocks = 4096;

// a[i] += b[i] over n packs of kVec elements, grid-stride.
template <class T, int kVec>
__global__ void add_inplace_kernel(Pack<T, kVec>* a, const Pack<T, kVec>* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    Pack<T, kVec> x = a[i];
    const Pack<T, kVec> y = b[i];
#pragma unroll
    for (int k = 0; k < kVec; ++k) x.v[k] = from_f32<T>(to_f32(x.v[k]) + to_f32(y.v[k]));
    a[i] = x;
  }
}

// dst[r, dst_begin + j] = src[r, src_begin + j] for r < rows, j < width: blockIdx.y strides
// over rows, x threads over the row's columns (both grid-stride). E is a plain type of 1 to 16
// bytes (one element or several), so any dtype copies bit for bit.
template <class E>
__global__ void copy_row_block_kernel(const E* src, int64_t src_cols, int64_t src_begin, E* dst,
                                      int64_t dst_cols, int64_t dst_begin, int64_t rows,
                                      int64_t width) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const E* s = src + r * src_cols + src_begin;
    E* d = dst + r * dst_cols + dst_begin;
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < width;
         j += int64_t(gridDim.x) * blockDim.x)
      d[j] = s[j];
  }
}

// (rows, columns) of a tensor seen as a matrix over its last dimension.
std::pair<int64_t, int64_t> as_matrix(const Tensor& t) {
  const int64_t c = t.ndim() ? t.size(-1) : 1;
  return {c ? t.numel() / c : 0, c};
}

void check_columns(const Tensor& wide, const Tensor& narrow, int64_t begin, const char* op) {
  require_cuda(wide, op, "the [R, C] tensor");
  require_cuda(narrow, op, "the [R, w] tensor");
  const auto [r, c] = as_matrix(wide);
  const auto [nr, w] = as_matrix(narrow);
  if (nr != r || begin < 0 || begin + w > c || wide.dtype() != narrow.dtype())
    throw Error(op, "shapes", "[R, C] and [R, w] with begin + w <= C",
                shape_str(wide.shape()) + ", " + shape_str(narrow.shape()) + ", begin " +
                    std::to_string(begin));
}

// A copy of a [rows, width] block between two row-major matrices of one dtype, moved in the
// widest unit (up to 16 bytes) that the row lengths, offsets, width and both base addresses
// are multiples of: the Mamba layer's column blocks go 16 bytes at a time.
void copy_row_block(const Tensor& src, int64_t src_begin, Tensor& dst, int64_t dst_begin,
                    int64_t rows, int64_t width) {
  if (rows == 0 || width == 0) return;
  const int64_t e = int64_t(dtype_size(src.dtype()));
  const int64_t src_cols = as_matrix(src).second, dst_cols = as_matrix(dst).second;
  int64_t unit = 16;
  for (const int64_t bytes : {src_cols * e, dst_cols * e, src_begin * e, dst_begin * e, width * e,
                              int64_t(reinterpret_cast<uintptr_t>(src.raw())),
                              int64_t(reinterpret_cast<uintptr_t>(dst.raw()))})
    while (bytes % unit != 0) unit /= 2;
  const int64_t k = unit / e;  // elements per unit (element sizes are powers of two)
  NH_CHECK(k >= 1, "copy_columns: unexpected element size");
  const dim3 grid(unsigned(std::min<int64_t>(blocks_for(width / k, kThreads), 64)),
                  unsigned(std::min<int64_t>(rows, 65535)));
  auto launch = [&](auto zero) {
    using E = decltype(zero);
    copy_row_block_kernel<E><<<grid, kThreads, 0, stream()>>>(
        static_cast<const E*>(src.raw()), src_cols / k, src_begin / k, static_cast<E*>(dst.raw()),
        dst_cols / k, dst_begin / k, rows, width / k);
    NH_CUDA_CHECK_LAUNCH();
  };
  switch (unit) {
    case 1:
      launch(uint8_t{});
      break;
    case 2:
      launch(uint16_t{});
      break;
    case 4:
      launch(uint32_t{});
      break;
    case 8:
      launch(uint2{});
      break;
    default:
      launch(uint4{});
  }
}

}  // namespace

void add_inplace(Tensor& a, const Tensor& b) {
  require_cuda(a, "add_inplace", "a");
  require_cuda(b, "add_inplace", "b");
  if (a.numel() != b.numel())
    throw Error("add_inplace", "sizes", shape_str(a.shape()), shape_str(b.shape()));
  if (a.dtype() != b.dtype())
    throw Error("add_inplace", "b dtype", dtype_name(a.dtype()), dtype_name(b.dtype()));
  const int64_t n = a.numel();
  if (n == 0) return;
  with_gpu_float_type(a.dtype(), [&](auto zero) {
    using T = decltype(zero);
    with_pack<T>(n, {&a, &b}, [&](auto pack) {
      using P = decltype(pack);
      const int64_t packs = n / P::kSize;
      const unsigned blocks =
          unsigned(std::min<int64_t>(blocks_for(packs, kThreads), kMaxBlocks));
      add_inplace_kernel<<<blocks, kThreads, 0, stream()>>>(static_cast<P*>(a.raw()),
                                                            static_cast<const P*>(b.raw()), packs);
      NH_CUDA_CHECK_LAUNCH();
    });
  });
}

void copy_columns(const Tensor& src, int64_t begin, Tensor& dst) {
  check_columns(src, dst, begin, "copy_columns");
  const auto [rows, width] = as_matrix(dst);
  copy_row_block(src, begin, dst, 0, rows, width);
}

void write_columns(const Tensor& src, Tensor& dst, int64_t begin) {
  check_columns(dst, src, begin, "write_columns");
  const auto [rows, width] = as_matrix(src);
  copy_row_block(src, 0, dst, begin, rows, width);
}

}  // namespace nh::cuda
