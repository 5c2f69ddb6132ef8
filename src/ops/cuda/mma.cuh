// Warp-level bf16 tensor-core products (mma.sync m16n8k16, fp32 accumulators; sm_80 and later),
// the loads of their operand fragments from bf16 tiles in shared memory, and the asynchronous
// copies that fill those tiles.
//
// Fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with g = lane / 4 and
// c = lane % 4, each 32-bit register holding two bf16 (the lower-index element in the low half):
//   A (16 × 16): a[0] = A[g][2c, 2c+1]    a[1] = A[g+8][2c, 2c+1]
//                a[2] = A[g][2c+8, 2c+9]  a[3] = A[g+8][2c+8, 2c+9]
//   B (16 × 8):  b[0] = B[2c, 2c+1][g]    b[1] = B[2c+8, 2c+9][g]
//   C (16 × 8):  c[0], c[1] = C[g][2c, 2c+1]   c[2], c[3] = C[g+8][2c, 2c+1]
// So the C fragments of two neighbouring 8-column tiles are, once packed to bf16, the A fragment
// of the 16 columns they cover: products chain without going through shared memory.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace nh::cuda {

// d += a · b for one 16 × 8 × 16 tile of the warp.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// The lane's fragment coordinates.
struct Lane {
  int g, c;
  __device__ Lane() : g(int(threadIdx.x % 32) / 4), c(int(threadIdx.x % 4)) {}
};

// Four 8 × 8 bf16 matrices from shared memory (ldmatrix): lane i gives the address of row i % 8
// of matrix i / 8 (16 bytes, 16-byte aligned) and receives, in r[m], its fragment of matrix m:
// elements (i / 4, 2·(i % 4) + {0, 1}), or of the transposed matrix with kTrans.
template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(const __nv_bfloat16* row, uint32_t (&r)[4]) {
  const unsigned address = unsigned(__cvta_generic_to_shared(row));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

// The loads below read tiles in shared memory with rows `stride` elements apart; stride and the
// offsets are multiples of 8 elements (16 bytes), as ldmatrix needs.

// A = X[m0 .. m0+16][k0 .. k0+16] of a row-major tile X.
__device__ __forceinline__ void load_a(const __nv_bfloat16* x, int stride, int m0, int k0,
                                       uint32_t (&a)[4]) {
  const int lane = int(threadIdx.x % 32), m = lane / 8;  // matrices (m0, k0), (m0+8, k0), …
  ldmatrix_x4<false>(x + (m0 + lane % 8 + 8 * (m % 2)) * stride + k0 + 8 * (m / 2), a);
}

// A = Xᵀ[m0 .. m0+16][k0 .. k0+16] of a row-major tile X stored [k][m] (the transposed load).
__device__ __forceinline__ void load_a_transposed(const __nv_bfloat16* x, int stride, int m0,
                                                  int k0, uint32_t (&a)[4]) {
  const int lane = int(threadIdx.x % 32), m = lane / 8;  // matrix m: m half m % 2, k half m / 2
  ldmatrix_x4<true>(x + (k0 + lane % 8 + 8 * (m / 2)) * stride + m0 + 8 * (m % 2), a);
}

// The B fragments of two neighbouring 8-column tiles, b[0] for columns n0 … and b[1] for
// n0 + 8 …, with B[k][n] = X[n0 + n][k0 + k]: the transpose of rows of X (as K in Q·Kᵀ).
__device__ __forceinline__ void load_b_transposed(const __nv_bfloat16* x, int stride, int n0,
                                                  int k0, uint32_t (&b)[2][2]) {
  const int lane = int(threadIdx.x % 32), m = lane / 8;
  uint32_t r[4];
  ldmatrix_x4<false>(x + (n0 + lane % 8 + 8 * (m / 2)) * stride + k0 + 8 * (m % 2), r);
  b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
}

// As load_b_transposed with B[k][n] = X[k0 + k][n0 + n]: rows of X as they are (V in P·V).
__device__ __forceinline__ void load_b(const __nv_bfloat16* x, int stride, int k0, int n0,
                                       uint32_t (&b)[2][2]) {
  const int lane = int(threadIdx.x % 32), m = lane / 8;
  uint32_t r[4];
  ldmatrix_x4<true>(x + (k0 + lane % 8 + 8 * (m % 2)) * stride + n0 + 8 * (m / 2), r);
  b[0][0] = r[0], b[0][1] = r[1], b[1][0] = r[2], b[1][1] = r[3];
}

// acc[2j], acc[2j + 1] += a · B for the 16 columns n0 + 16j … of B, j < kPairs: a row tile's
// product with kPairs column pairs, B read by load_b (kTransposed false) or load_b_transposed.
template <int kPairs, bool kTransposed = false>
__device__ __forceinline__ void mma_column_pairs(float (*acc)[4], const uint32_t (&a)[4],
                                                 const __nv_bfloat16* x, int stride, int k0,
                                                 int n0) {
#pragma unroll
  for (int j = 0; j < kPairs; ++j) {
    uint32_t b[2][2];
    if constexpr (kTransposed)
      load_b_transposed(x, stride, n0 + 16 * j, k0, b);
    else
      load_b(x, stride, k0, n0 + 16 * j, b);
    mma_bf16(acc[2 * j], a, b[0]);
    mma_bf16(acc[2 * j + 1], a, b[1]);
  }
}

// The A fragment of 16 columns of a 16-row product held as the C fragments of its first (lo)
// and last (hi) 8 columns, rounded to bf16.
__device__ __forceinline__ void c_to_a(const float (&lo)[4], const float (&hi)[4],
                                       uint32_t (&a)[4]) {
  a[0] = pack_bf16(lo[0], lo[1]);
  a[1] = pack_bf16(lo[2], lo[3]);
  a[2] = pack_bf16(hi[0], hi[1]);
  a[3] = pack_bf16(hi[2], hi[3]);
}

// Asynchronous copies to shared memory (cp.async, sm_80+): issued now, waited for with
// cp_async_wait<N>() (all but the N most recent committed groups have landed).
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile(
      "cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(unsigned(__cvta_generic_to_shared(dst))),
      "l"(src));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  asm volatile(
      "cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(unsigned(__cvta_generic_to_shared(dst))),
      "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace nh::cuda
