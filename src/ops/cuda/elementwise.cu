// Elementwise and layout ops on the GPU (ops/elementwise.h).
//   add_inplace: F32 or BF16, added in fp32 (one rounding to the dtype of a)
//   copy_columns / write_columns: any dtype; a copy of bytes, no conversion
#include <algorithm>
#include <string>
#include <utility>

#include "ops/cuda/common.cuh"
#include "ops/elementwise.h"

namespace nh::cuda {

namespace {

constexpr int kThreads = 256;
// Enough blocks of kThreads to fill an H100 several times over; the loops are grid-stride.
constexpr int64_t kMaxBlocks = 4096;

// a[i] += b[i] over n elements, grid-stride.
template <class T>
__global__ void add_inplace_kernel(T* a, const T* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    a[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

// dst[r, dst_begin + j] = src[r, src_begin + j] for r < rows, j < width: blockIdx.y strides
// over rows, x threads over the row's columns (both grid-stride). E is an unsigned integer
// type of the element's size, so any dtype copies bit for bit.
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

// A copy of a [rows, width] block between two row-major matrices of one dtype.
void copy_row_block(const Tensor& src, int64_t src_begin, Tensor& dst, int64_t dst_begin,
                    int64_t rows, int64_t width) {
  if (rows == 0 || width == 0) return;
  const int64_t src_cols = as_matrix(src).second, dst_cols = as_matrix(dst).second;
  const dim3 grid(unsigned(std::min<int64_t>(blocks_for(width, kThreads), 64)),
                  unsigned(std::min<int64_t>(rows, 65535)));
  auto launch = [&](auto zero) {
    using E = decltype(zero);
    copy_row_block_kernel<E><<<grid, kThreads, 0, stream()>>>(
        static_cast<const E*>(src.raw()), src_cols, src_begin, static_cast<E*>(dst.raw()), dst_cols,
        dst_begin, rows, width);
    NH_CUDA_CHECK_LAUNCH();
  };
  switch (dtype_size(src.dtype())) {
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
      launch(uint64_t{});
      break;
    default:
      NH_CHECK(false, "copy_columns: unexpected element size");
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
    const unsigned blocks = unsigned(std::min<int64_t>(blocks_for(n, kThreads), kMaxBlocks));
    add_inplace_kernel<T><<<blocks, kThreads, 0, stream()>>>(ptr<T>(a), ptr<T>(b), n);
    NH_CUDA_CHECK_LAUNCH();
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
