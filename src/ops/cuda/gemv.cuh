// Few-row matrix products for the linear layer's forward on the GPU (decoding: one row of x per
// sequence of the batch), the GPU side of nh::cuda::linear_forward for rows <= kGemvMaxRows:
//
//   y[m, n] = Σ_k x[m, k] · w[n, k] + b[n]        x [rows, k], w [n, k], b [n], y [rows, n]
//
// One kernel that streams w once at close to memory bandwidth, where a GEMM library picks tiles
// made for many rows and often a split-K with a second, reducing kernel. x, w, b and y are
// contiguous device arrays in `dtype` (F32 or BF16); b may be null. Products accumulate in fp32
// in a fixed order (the same bits on every run), the bias is added in fp32 and y is rounded
// once. Any n, k and alignment: BF16 with k a multiple of 8 and 16-byte-aligned x and w runs on
// the tensor cores, F32 with k a multiple of 4 and 16-byte-aligned x and w uses 16-byte loads,
// anything else a scalar kernel. Runs on nh::cuda::stream() asynchronously, with no allocation
// and no host synchronisation (capturable in a CUDA graph). y must not alias x, w or b.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace nh::cuda {

// The most rows the few-row kernels take: they keep one fp32 accumulator per row and output
// column in registers; more rows go to the GEMM, where tiles of rows pay off.
inline constexpr int64_t kGemvMaxRows = 8;

// Throws an nh::Error for rows > kGemvMaxRows or a dtype other than F32 and BF16. rows == 0 or
// n == 0 does nothing; k == 0 gives y = b (or 0), x and w are then never read.
void gemv(int64_t rows, int64_t n, int64_t k, const void* x, const void* w, const void* b, void* y,
          DType dtype);

}  // namespace nh::cuda
