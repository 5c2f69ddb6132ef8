// Linear layer on the GPU (ops/linear.h): the products through cuBLASLt (gemm.cuh), fp32
// accumulation; x, w, b, y and the gradients share one dtype (F32 or BF16).
//   forward:  up to kGemvMaxRows rows (decoding): one few-row kernel streaming w (gemv.cuh);
//             more: y = b (broadcast), then y = x·wᵀ + 1·y in one GEMM. A bf16 y rounds once.
//   backward: dx = dy·w (overwritten), dw += dyᵀ·x (GEMM with beta = 1), db += column sums of dy
#include <algorithm>
#include <string>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.cuh"
#include "ops/cuda/gemv.cuh"
#include "ops/linear.h"

namespace nh::cuda {

namespace {

// Rows of dy summed per block of the column sum: fixed, so the partition and the sum order
// depend only on the shape (the same result on every run and GPU).
constexpr int kRowsPerBlock = 256;
constexpr int kColumnTile = 32;
constexpr int kRowLanes = 8;

// y[r, c] = b[c] for all m rows; one thread per element, grid-stride.
template <class T>
__global__ void broadcast_bias_rows_kernel(const T* b, T* y, int64_t m, int64_t n) {
  const int64_t total = m * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = b[i % n];
}

// partial[blockIdx.y, c] = Σ dy[r, c] over the block's kRowsPerBlock rows, in fp32.
// Block (kColumnTile, kRowLanes): threadIdx.x is the column (coalesced reads of a row),
// threadIdx.y strides over the rows; the lanes are then added in lane order.
template <class T>
__global__ void column_partial_sums_kernel(const T* dy, float* partial, int64_t m, int64_t n) {
  __shared__ float lanes[kRowLanes][kColumnTile];
  const int64_t col = blockIdx.x * int64_t(kColumnTile) + threadIdx.x;
  const int64_t row0 = blockIdx.y * int64_t(kRowsPerBlock);
  const int64_t row1 = min(m, row0 + kRowsPerBlock);
  float sum = 0.f;
  if (col < n)
    for (int64_t r = row0 + threadIdx.y; r < row1; r += kRowLanes) sum += to_f32(dy[r * n + col]);
  lanes[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < n) {
    float total = 0.f;
    for (int lane = 0; lane < kRowLanes; ++lane) total += lanes[lane][threadIdx.x];
    partial[blockIdx.y * n + col] = total;
  }
}

// db[c] += Σ_chunks partial[chunk, c], chunks in order; one thread per column.
template <class T>
__global__ void add_column_partials_kernel(const float* partial, int64_t chunks, int64_t n, T* db) {
  const int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (col >= n) return;
  float total = 0.f;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partial[chunk * n + col];
  db[col] = from_f32<T>(to_f32(db[col]) + total);
}

void check_operand(const Tensor& t, const Tensor& x, const char* name) {
  require_cuda(t, "linear", name);
  if (t.defined() && t.dtype() != x.dtype())
    throw Error("linear", std::string(name) + " dtype", dtype_name(x.dtype()),
                dtype_name(t.dtype()));
}

void check_linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  if (w.ndim() != 2 || x.ndim() < 1 || x.size(-1) != w.size(1))
    throw Error("linear", "shapes", "x [..., K] and w [N, K]",
                "x " + shape_str(x.shape()) + ", w " + shape_str(w.shape()));
  if (b.defined()) expect_shape(b, {w.size(0)}, "linear bias");
  require_cuda(x, "linear", "x");
  if (x.dtype() != DType::F32 && x.dtype() != DType::BF16)
    throw Error("linear", "x dtype", "F32 or BF16", dtype_name(x.dtype()));
  check_operand(w, x, "w");
  check_operand(b, x, "b");
}

// Rows of x: the product of its leading dimensions (defined even when K = 0).
int64_t rows_of(const Tensor& x) {
  int64_t m = 1;
  for (int i = 0; i + 1 < x.ndim(); ++i) m *= x.size(i);
  return m;
}

void check_numel(const Tensor& t, int64_t numel, const char* what) {
  if (t.numel() != numel)
    throw Error("linear", std::string(what) + " size", std::to_string(numel) + " elements",
                shape_str(t.shape()));
}

// db[n] += Σ_rows dy[m, n], deterministic (fixed partition, fixed order).
void add_bias_grad(const Tensor& dy, Tensor& db, int64_t m, int64_t n) {
  if (m == 0 || n == 0) return;
  const int64_t chunks = (m + kRowsPerBlock - 1) / kRowsPerBlock;
  if (chunks > 65535)
    throw Error("linear", "rows", "at most " + std::to_string(65535LL * kRowsPerBlock),
                std::to_string(m));
  Tensor partial = Tensor::empty({chunks, n}, DType::F32, Device::CUDA);
  with_gpu_float_type(dy.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const dim3 grid(blocks_for(n, kColumnTile), unsigned(chunks));
    column_partial_sums_kernel<T><<<grid, dim3(kColumnTile, kRowLanes), 0, stream()>>>(
        ptr<T>(dy), ptr<float>(partial), m, n);
    NH_CUDA_CHECK_LAUNCH();
    add_column_partials_kernel<T>
        <<<blocks_for(n, 256), 256, 0, stream()>>>(ptr<float>(partial), chunks, n, ptr<T>(db));
    NH_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void linear_forward(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& y) {
  check_linear(x, w, b);
  check_operand(y, x, "y");
  const int64_t k = w.size(1), n = w.size(0), m = rows_of(x);
  check_numel(y, m * n, "y");
  if (m == 0 || n == 0) return;
  if (m <= kGemvMaxRows) {
    gemv(m, n, k, x.raw(), w.raw(), b.defined() ? b.raw() : nullptr, y.raw(), x.dtype());
    return;
  }
  if (b.defined()) {
    with_gpu_float_type(x.dtype(), [&](auto zero) {
      using T = decltype(zero);
      const unsigned blocks = unsigned(std::min<int64_t>(blocks_for(m * n, 256), 4096));
      broadcast_bias_rows_kernel<T><<<blocks, 256, 0, stream()>>>(ptr<T>(b), ptr<T>(y), m, n);
      NH_CUDA_CHECK_LAUNCH();
    });
  }
  gemm(false, true, m, n, k, 1.f, x.raw(), k, w.raw(), k, b.defined() ? 1.f : 0.f, y.raw(), n,
       x.dtype());
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor& dx, Tensor& dw,
                     Tensor& db) {
  check_linear(x, w, Tensor());
  check_operand(dy, x, "dy");
  check_operand(dx, x, "dx");
  check_operand(dw, x, "dw");
  check_operand(db, x, "db");
  const int64_t k = w.size(1), n = w.size(0), m = rows_of(x);
  check_numel(dy, m * n, "dy");
  if (dx.defined()) check_numel(dx, x.numel(), "dx");
  if (dw.defined()) expect_shape(dw, w.shape(), "linear dw");
  if (db.defined()) expect_shape(db, {n}, "linear db");
  // dx[m, k] = dy[m, n] · w[n, k]
  if (dx.defined())
    gemm(false, false, m, k, n, 1.f, dy.raw(), n, w.raw(), k, 0.f, dx.raw(), k, x.dtype());
  // dw[n, k] += dy[m, n]ᵀ · x[m, k]
  if (dw.defined())
    gemm(true, false, n, k, m, 1.f, dy.raw(), n, x.raw(), k, 1.f, dw.raw(), k, x.dtype());
  if (db.defined()) add_bias_grad(dy, db, m, n);
}

}  // namespace nh::cuda
