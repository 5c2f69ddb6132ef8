// CUDA SSD (SPEC §2): the chunked scan of src/ops/cpu/ssd.cpp, one kernel per step of mamba_ssm's
// decomposition so that each can be replaced on its own (by a tensor-core version):
//   forward:  chunk_cumsum → chunk_cb (C·Bᵀ per group) → chunk_state → pass_states → chunk_scan
//   backward: the same first three (recomputing the states entering each chunk), chunk_state of
//             dy (the state gradient each chunk sends back) → pass_states in reverse →
//             state_decay_grad, chunk_dyx (dy·xᵀ per head), chunk_dcs, chunk_dx, chunk_dC,
//             chunk_dB → finish_dt →
//             group_sum, param_grad
// Storage F32 or BF16; cumulative sums, decays, states and every product in fp32. For bf16 at
// the models' shapes the fused kernels of ssd_fused.cuh replace chunk_cb, chunk_state,
// chunk_scan and the backward's per-chunk kernels (use_fused); the steps around them are shared.
//
// Documents: seq_idx becomes a per-chunk counter that goes up by one wherever seq_idx changes,
// counted from the token before the chunk. "Same document" is "same counter" (also when a row
// reuses an index value), and a token continues the state entering its chunk exactly when its
// counter is 0 (the CPU's seg_in), which zeroes every decay across a document boundary.
//
// Gradient of the cumulative sums (dcs), as on the CPU: every term of a chunk is a decay
// exp(cs_i − cs_j) times a product, whose gradient w.r.t. cs_i is the term and w.r.t. cs_j minus
// it; cs = cumsum(dt·A) then sends the suffix sums of dcs to dt and A. A term's two ends must be
// the same float value: dA weighs dcs_k by cs_k/A (up to a whole chunk of dt), so two ends that
// did not cancel exactly would be magnified by that. So the intra-chunk terms are formed once
// (chunk_dcs, rows and columns), the state terms once per token (B_j·dB_j of chunk_dB and their
// sum at the last token), and C_i·dC_i of the incoming state and the decay of the state passed on
// have a single end each.
//
// Determinism: no atomics. Sums that span blocks go to per-tile or per-(batch, chunk, head)
// buffers that one kernel then adds in a fixed order (dB, dC over a group's heads as the CPU).
#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "core/kernel_versions.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/ssd_backward.cuh"
#include "ops/cuda/ssd_fused.cuh"
#include "ops/ssd.h"

namespace nh::cuda {

namespace {

using namespace ssd_detail;  // and, through it, ssd_tiles

// Step 1, block per (batch, chunk) × 32 heads, thread per (head, one of 8 runs of the chunk's
// tokens; neighbouring threads are neighbouring heads: coalesced). All [B, S, H] fp32:
//   cs        = Σ_{k ≤ t in the chunk} dt_k·A (inclusive)
//   decay_in  = exp(cs_t) where token t continues the incoming state's document, else 0
//   decay_out = exp(cs_last − cs_t) where t is in the document of the chunk's last token, else 0
// and doc [B, S], the chunk-local document counter (written by the head-0 threads). Each run
// sums its tokens first; a run then starts from the sums of the runs before it, in order.
template <class T>
__global__ void __launch_bounds__(kThreads)
    chunk_cumsum_kernel(SsdDims d, const T* dt, const T* A, const int32_t* seq_idx, float* cs,
                        float* decay_in, float* decay_out, int32_t* doc) {
  __shared__ float run_sum[kDtRuns][kDtHeads];
  __shared__ int32_t run_docs[kDtRuns][kDtHeads];
  __shared__ float last_cs[kDtHeads];
  const int hl = int(threadIdx.x) % kDtHeads, run = int(threadIdx.x) / kDtHeads;
  const int64_t h = int64_t(blockIdx.y) * kDtHeads + hl;
  const bool active = h < d.heads;
  const ChunkHead ch(d, int64_t(blockIdx.x) * d.heads + (active ? h : 0));
  auto changes = [&](int t) {  // does a document start at chunk-local token t?
    const int64_t r = ch.at_row(t);
    return seq_idx != nullptr && ch.t0 + t > 0 && seq_idx[r] != seq_idx[r - 1];
  };
  const int per_run = (ch.len + kDtRuns - 1) / kDtRuns;
  const int begin = min(run * per_run, ch.len), end = min(begin + per_run, ch.len);
  const float a = active ? to_f32(A[ch.h]) : 0.f;
  float own = 0.f;
  int32_t own_docs = 0;
  for (int t = begin; active && t < end; ++t) {
    own += to_f32(dt[ch.at_head(t)]) * a;
    own_docs += changes(t);
  }
  run_sum[run][hl] = own;
  run_docs[run][hl] = own_docs;
  __syncthreads();
  float sum = 0.f;
  int32_t counter = 0, last_doc = 0;
  for (int r = 0; r < kDtRuns; ++r) {
    if (r < run) sum += run_sum[r][hl], counter += run_docs[r][hl];
    last_doc += run_docs[r][hl];
  }
  const int32_t first_counter = counter;
  for (int t = begin; active && t < end; ++t) {
    sum += to_f32(dt[ch.at_head(t)]) * a;
    if (changes(t)) ++counter;
    if (t == ch.len - 1) last_cs[hl] = sum;  // the same float as the last token's cs
    cs[ch.at_head(t)] = sum;
    decay_in[ch.at_head(t)] = counter == 0 ? expf(sum) : 0.f;
    if (ch.h == 0) doc[ch.at_row(t)] = counter;
  }
  __syncthreads();
  counter = first_counter;
  for (int t = begin; active && t < end; ++t) {
    if (changes(t)) ++counter;
    decay_out[ch.at_head(t)] =
        counter == last_doc ? expf(last_cs[hl] - cs[ch.at_head(t)]) : 0.f;
  }
}

// Step 2, block per (batch, chunk, head) × 64 × 64 tile of (p, n):
//   out[p, n] = Σ_t weight_t · (dt_t if dt) · u_t[p] · v_t[n]
// Tile (i0, j0), j0 <= i0, of a chunk's Q × Q matrix of row products a_i·b_j (K long), into
// m[i][j] (Q = chunk, only the chunk's tokens). a and b point at the chunk's first token, whose
// rows are `step` elements apart.
template <class T>
__device__ void square_products(const T* a, const T* b, int64_t step, int K, const SsdDims& d,
                                const ChunkHead& ch, int i0, int j0, TileShared<T>& sm, float* m) {
  Acc acc = {};
  gemm_tile<true, true>(K, view<true>(a + i0 * step, step, ch.len - i0),
                        view<true>(b + j0 * step, step, ch.len - j0), sm, acc);
#pragma unroll
  for (int u = 0; u < kPer; ++u)
#pragma unroll
    for (int w = 0; w < kPer; ++w) {
      const int i = i0 + tile_row(u), j = j0 + tile_col(w);
      if (i < ch.len && j < ch.len) m[i * d.chunk + j] = acc[u][w];
    }
}

// Step 1b, block per (batch, chunk, group) × 64 × 64 tile of (i, j), j tile <= i tile:
// cbm[i][j] = C_i·B_j, fp32 [B, n_chunks, G, Q, Q], formed once for the group's heads.
template <class T>
__global__ void __launch_bounds__(kThreads)
    chunk_cb_kernel(SsdDims d, const T* Bm, const T* Cm, float* cbm) {
  __shared__ TileShared<T> sm;
  const int64_t unit = blockIdx.x, g = unit % d.groups;
  const ChunkHead ch(d, unit / d.groups * d.heads + g * (d.heads / d.groups));
  const int i0 = int(blockIdx.y) * kTile, j0 = int(blockIdx.z) * kTile;
  if (i0 >= ch.len || j0 > i0) return;
  square_products(Cm + ch.at_bc(0, 0), Bm + ch.at_bc(0, 0), ch.bc_step, int(d.state), d, ch, i0, j0,
                  sm, cbm + ch.cb0);
}

// Backward, block per (batch, chunk, head) × 64 × 64 tile of (i, j), j tile <= i tile:
// dyxm[i][j] = dy_i·x_j, fp32 [B, n_chunks, H, Q, Q], which chunk_dcs, chunk_dC and chunk_dB
// all read.
template <class T>
__global__ void __launch_bounds__(kThreads)
    chunk_dyx_kernel(SsdDims d, const T* x, const T* dy, float* dyxm) {
  __shared__ TileShared<T> sm;
  const ChunkHead ch(d, blockIdx.x);
  const int i0 = int(blockIdx.y) * kTile, j0 = int(blockIdx.z) * kTile;
  if (i0 >= ch.len || j0 > i0) return;
  square_products(dy + ch.at_x(0, 0), x + ch.at_x(0, 0), ch.x_step, int(d.head_dim), d, ch, i0, j0,
                  sm, dyxm + ch.dyx0);
}

// Forward: (weight, u, v) = (decay_out, x, Bm) with dt, the chunk's own contribution to the state
// after its last token. Backward: (decay_in, dy, Cm) without dt, the gradient the chunk's outputs
// send to the state entering it. out is fp32 [B, n_chunks, H, P, N].
template <class T>
__global__ void __launch_bounds__(kThreads)
    chunk_state_kernel(SsdDims d, const float* weight, const T* dt, const T* u, const T* v,
                       float* out) {
  __shared__ TileShared<T> sm;
  const ChunkHead ch(d, blockIdx.x);
  const int64_t p0 = int64_t(blockIdx.y) * kTile, n0 = int64_t(blockIdx.z) * kTile;
  Acc acc = {};
  View<T, false> weighted = view<false>(u + ch.at_x(0, p0), ch.x_step, d.head_dim - p0);
  weighted.weight = weight + ch.at_head(0);
  weighted.dt = dt != nullptr ? dt + ch.at_head(0) : nullptr;
  weighted.weight_stride = ch.head_step;
  gemm_tile<false, false>(ch.len, weighted,
                          view<false>(v + ch.at_bc(0, n0), ch.bc_step, d.state - n0), sm, acc);
#pragma unroll
  for (int u = 0; u < kPer; ++u)
#pragma unroll
    for (int w = 0; w < kPer; ++w) {
      const int64_t p = p0 + tile_row(u), n = n0 + tile_col(w);
      if (p < d.head_dim && n < d.state) out[ch.state0 + p * d.state + n] = acc[u][w];
    }
}

// Step 3, one thread per (batch, head, p, n) walking the chunks in order (reverse = false) or
// backwards. states holds each chunk's own term; the running value before each chunk goes to
// `entering` (states itself, fp32, for the tile kernels; a bf16 copy for the fused ones):
//   forward:  S_in(c) = S;   S = decay(c)·S + own(c)      start = initial state, end = final
//   backward: dS_out(c) = dS; dS = decay(c)·dS + G(c)     end = dinitial_state
// decay(c) = decay_in of the chunk's last token (zero when a document starts inside it).
// start and end are [B, H, P, N] in the storage type, each optional; end may be F32 instead
// (E = float: a bf16 prefill hands its final state to fp32 decoding).
// The chunks go kPassBatch at a time, their loads issued before any store: the walk is bound by
// memory latency, not bandwidth. A thread walks kVec neighbouring (p, n) at once (16-byte loads
// of the fp32 terms where P·N allows).
constexpr int kPassBatch = 8;

template <class T, class E, class S, int kVec>
__global__ void pass_states_kernel(SsdDims d, const float* states, S* entering,
                                   const float* __restrict__ decay_in, bool reverse,
                                   const T* __restrict__ start, E* __restrict__ end) {
  const int64_t pn_size = d.head_dim * d.state, packs = pn_size / kVec;
  const int64_t pack = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pack >= d.batch * d.heads * packs) return;
  const int64_t pn = pack % packs * kVec, h = pack / packs % d.heads, b = pack / packs / d.heads;
  const int64_t flat = (b * d.heads + h) * pn_size + pn;  // into start and end, [B, H, P, N]
  float s[kVec] = {};
  if (start != nullptr) {
    const Pack<T, kVec> v = *reinterpret_cast<const Pack<T, kVec>*>(start + flat);
#pragma unroll
    for (int k = 0; k < kVec; ++k) s[k] = to_f32(v.v[k]);
  }
  for (int64_t k0 = 0; k0 < d.n_chunks; k0 += kPassBatch) {
    Pack<float, kVec> own[kPassBatch];
    float decay[kPassBatch];
    int64_t at[kPassBatch];
#pragma unroll
    for (int u = 0; u < kPassBatch; ++u) {
      const int64_t k = k0 + u, c = reverse ? d.n_chunks - 1 - k : k;
      if (k >= d.n_chunks) break;
      at[u] = ((b * d.n_chunks + c) * d.heads + h) * pn_size + pn;
      own[u] = *reinterpret_cast<const Pack<float, kVec>*>(states + at[u]);
      const int64_t last = ((c + 1) * d.chunk < d.seqlen ? (c + 1) * d.chunk : d.seqlen) - 1;
      decay[u] = decay_in[(b * d.seqlen + last) * d.heads + h];
    }
#pragma unroll
    for (int u = 0; u < kPassBatch; ++u) {
      if (k0 + u >= d.n_chunks) break;
      Pack<S, kVec> e;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        e.v[k] = from_f32<S>(s[k]);
        s[k] = decay[u] * s[k] + own[u].v[k];
      }
      *reinterpret_cast<Pack<S, kVec>*>(entering + at[u]) = e;
    }
  }
  if (end != nullptr) {
    Pack<E, kVec> e;
#pragma unroll
    for (int k = 0; k < kVec; ++k) e.v[k] = from_f32<E>(s[k]);
    *reinterpret_cast<Pack<E, kVec>*>(end + flat) = e;
  }
}

// Step 4, block per (batch, chunk, head) × 64 × 64 tile of (i, p):
//   y_i = Σ_{j ≤ i, same doc} exp(cs_i − cs_j) (C_i·B_j) dt_j x_j   (j tile by j tile)
//       + decay_in_i · S_in C_i + D x_i
// states holds S_in per chunk (after pass_states).
template <class T>
__global__ void __launch_bounds__(kThreads, kMatrixBlocks<T>)
    chunk_scan_kernel(SsdDims d, const T* x, const T* dt, const T* Cm, const T* D, const float* cbm,
                      const float* cs, const float* decay_in, const int32_t* doc,
                      const float* states, T* y) {
  __shared__ TileShared<T> sm;
  const ChunkHead ch(d, blockIdx.x);
  const int i0 = int(blockIdx.y) * kTile;
  const int64_t p0 = int64_t(blockIdx.z) * kTile;
  if (i0 >= ch.len) return;
  const auto c_rows = view<true>(Cm + ch.at_bc(i0, 0), ch.bc_step, ch.len - i0);
  Acc acc = {};
  for (int j0 = 0; j0 <= i0; j0 += kTile) {
    Acc cb;
    load_square<false>(cbm, ch.cb0, d, ch, i0, j0, cb);
    store_first_stage(
        cb,
        [&](int r, int col) {
          const float w = intra_decay(ch, cs, doc, i0 + r, j0 + col);
          return w != 0.f ? w * to_f32(dt[ch.at_head(j0 + col)]) : 0.f;
        },
        sm);
    gemm_tile_shared_a<false>(min(kTile, ch.len - j0),
                              view<false>(x + ch.at_x(j0, p0), ch.x_step, d.head_dim - p0), sm,
                              acc);
  }
  Acc from_state = {};
  gemm_tile<true, true>(int(d.state), c_rows,
                        view<true>(states + ch.state0 + p0 * d.state, d.state, d.head_dim - p0), sm,
                        from_state);
  const float skip = D != nullptr ? to_f32(D[ch.h]) : 0.f;
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int i = i0 + tile_row(u);
    if (i >= ch.len) continue;
    const float e = decay_in[ch.at_head(i)];
#pragma unroll
    for (int w = 0; w < kPer; ++w) {
      const int64_t p = p0 + tile_col(w);
      if (p < d.head_dim)
        y[ch.at_x(i, p)] =
            from_f32<T>(acc[u][w] + e * from_state[u][w] + skip * to_f32(x[ch.at_x(i, p)]));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: checks as on the CPU, then the launchers.

void require(const Tensor& t, const char* name) { require_cuda(t, "ssd", name); }

SsdDims check_ssd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                  const Tensor& Cm, const Tensor& D, int64_t chunk_size, const Tensor& seq_idx,
                  const Tensor& initial_state) {
  if (x.ndim() != 4) throw Error("ssd", "x shape", "[B, S, H, P]", shape_str(x.shape()));
  if (Bm.ndim() != 4) throw Error("ssd", "Bm shape", "[B, S, G, N]", shape_str(Bm.shape()));
  SsdDims d{x.size(0), x.size(1), x.size(2), x.size(3), Bm.size(2), Bm.size(3), chunk_size, 0};
  if (d.groups < 1 || d.heads % d.groups != 0)
    throw Error("ssd", "n_groups", "a divisor of H = " + std::to_string(d.heads),
                std::to_string(d.groups));
  if (chunk_size < 1) throw Error("ssd", "chunk_size", ">= 1", std::to_string(chunk_size));
  d.n_chunks = (d.seqlen + chunk_size - 1) / chunk_size;
  expect_shape(Bm, {d.batch, d.seqlen, d.groups, d.state}, "ssd Bm");
  expect_shape(Cm, {d.batch, d.seqlen, d.groups, d.state}, "ssd Cm");
  expect_shape(dt, {d.batch, d.seqlen, d.heads}, "ssd dt");
  expect_shape(A, {d.heads}, "ssd A");
  if (D.defined()) expect_shape(D, {d.heads}, "ssd D");
  if (initial_state.defined())
    expect_shape(initial_state, {d.batch, d.heads, d.head_dim, d.state}, "ssd initial_state");
  if (seq_idx.defined()) {
    expect_shape(seq_idx, {d.batch, d.seqlen}, "ssd seq_idx");
    if (seq_idx.dtype() != DType::I32)
      throw Error("ssd", "seq_idx dtype", "I32", dtype_name(seq_idx.dtype()));
  }
  const std::pair<const char*, const Tensor*> floats[] = {
      {"dt", &dt}, {"A", &A}, {"Bm", &Bm},
      {"Cm", &Cm}, {"D", &D}, {"initial_state", &initial_state}};
  for (const auto& [name, t] : floats)
    if (t->defined() && t->dtype() != x.dtype())
      throw Error("ssd", std::string(name) + " dtype", dtype_name(x.dtype()),
                  dtype_name(t->dtype()));
  require(x, "x");
  for (const auto& [name, t] : floats) require(*t, name);
  require(seq_idx, "seq_idx");
  return d;
}

void check_output(const Tensor& t, const Shape& shape, DType dtype, const std::string& what) {
  expect_shape(t, shape, "ssd " + what);
  if (t.dtype() != dtype)
    throw Error("ssd", what + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
  require(t, what.c_str());
}

template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? ptr<T>(t) : nullptr;
}

// The fused kernels where they apply (bf16 and their shapes), unless NH_KERNELS=ssd=tiles asks
// for the tile kernels (core/kernel_versions.h).
template <class T>
bool use_fused(const SsdDims& d, std::initializer_list<const void*> rows) {
  return std::is_same_v<T, bf16> && kernel_version("ssd") == 0 && ssd_fused::supports(d, rows);
}

bool has_blocks(dim3 grid) { return grid.x > 0 && grid.y > 0 && grid.z > 0; }

unsigned tiles(int64_t n) { return unsigned((n + kTile - 1) / kTile); }

// Grid of the tile kernels: (batch, chunk, head) × row tiles of a chunk × column tiles.
dim3 tile_grid(const SsdDims& d, int64_t columns) {
  return dim3(unsigned(d.batch * d.n_chunks * d.heads), tiles(std::min(d.chunk, d.seqlen)),
              tiles(columns));
}

// What steps 1-3 leave for the rest: [B, S, H] fp32 cumsums and decays, the [B, S] document
// counters, the state entering each chunk [B, n_chunks, H, P, N] fp32 and, for the tile kernels
// (not `fused`), each chunk's C·Bᵀ per group [B, n_chunks, G, Q, Q] fp32.
struct ChunkStates {
  Tensor cs, decay_in, decay_out, doc, states, cb;
  Tensor entering;  // the fused kernels' bf16 S_in (the tile kernels': states, in place)
};

// Where pass_states_kernel writes the states entering the chunks: `own` itself (F32) or a
// BF16 copy of its shape.
template <class F>
void with_entering(Tensor& own, const Tensor& entering, F&& f) {
  if (entering.defined())
    f(ptr<bf16>(entering));
  else
    f(ptr<float>(own));
}

// Step 2 (forward) or the backward's first: each chunk's own term of the state (or of its
// gradient) into `own` [B, n_chunks, H, P, N] fp32, by the fused kernel or the tile kernel.
template <class T>
void own_states(const SsdDims& d, bool fused, const Tensor& weight, const T* dt, const Tensor& u,
                const Tensor& v, Tensor& own) {
  if constexpr (std::is_same_v<T, bf16>) {
    if (fused) {
      ssd_fused::chunk_state(d, ptr<float>(weight), dt, ptr<T>(u), ptr<T>(v), ptr<float>(own));
      return;
    }
  }
  const dim3 grid(unsigned(d.batch * d.n_chunks * d.heads), tiles(d.head_dim), tiles(d.state));
  if (!has_blocks(grid)) return;
  chunk_state_kernel<T><<<grid, kThreads, 0, stream()>>>(d, ptr<float>(weight), dt, ptr<T>(u),
                                                         ptr<T>(v), ptr<float>(own));
  NH_CUDA_CHECK_LAUNCH();
}

// Step 3 (forward, from `start`) or the backward's reverse walk: the states entering each chunk
// from the chunks' own terms in `own`, into `entering` when it is defined (bf16, for the fused
// kernels) or in place; the last state into `end`.
template <class T, class E>
void pass_states(const SsdDims& d, Tensor& own, const Tensor& entering, const Tensor& decay_in,
                 bool reverse, const T* start, E* end) {
  const int64_t elements = d.batch * d.heads * d.head_dim * d.state;
  if (elements == 0) return;
  // Four (p, n) per thread where P·N and the caller's start and end allow (the internal
  // buffers are aligned allocations).
  constexpr int kVec = 4;
  const bool vec = d.head_dim * d.state % kVec == 0 &&
                   reinterpret_cast<uintptr_t>(start) % (kVec * sizeof(T)) == 0 &&
                   reinterpret_cast<uintptr_t>(end) % (kVec * sizeof(E)) == 0;
  with_entering(own, entering, [&](auto* to) {
    using S = std::remove_pointer_t<decltype(to)>;
    if (vec)
      pass_states_kernel<T, E, S, kVec>
          <<<blocks_for(elements / kVec, kThreads), kThreads, 0, stream()>>>(
              d, ptr<float>(own), to, ptr<float>(decay_in), reverse, start, end);
    else
      pass_states_kernel<T, E, S, 1><<<blocks_for(elements, kThreads), kThreads, 0, stream()>>>(
          d, ptr<float>(own), to, ptr<float>(decay_in), reverse, start, end);
  });
  NH_CUDA_CHECK_LAUNCH();
}

template <class T>
ChunkStates chunk_states(const SsdDims& d, const Tensor& x, const Tensor& dt, const Tensor& A,
                         const Tensor& Bm, const Tensor& Cm, const Tensor& seq_idx,
                         const Tensor& initial_state, Tensor& final_state, bool fused) {
  const Shape per_head = {d.batch, d.seqlen, d.heads};
  ChunkStates r{
      Tensor::empty(per_head, DType::F32, Device::CUDA),
      Tensor::empty(per_head, DType::F32, Device::CUDA),
      Tensor::empty(per_head, DType::F32, Device::CUDA),
      Tensor::empty({d.batch, d.seqlen}, DType::I32, Device::CUDA),
      Tensor::empty({d.batch, d.n_chunks, d.heads, d.head_dim, d.state}, DType::F32, Device::CUDA),
      Tensor(), Tensor()};
  const int64_t units = d.batch * d.n_chunks * d.heads;
  if (units > 0) {
    const dim3 grid(unsigned(d.batch * d.n_chunks), blocks_for(d.heads, kDtHeads));
    chunk_cumsum_kernel<T><<<grid, kThreads, 0, stream()>>>(
        d, ptr<T>(dt), ptr<T>(A), ptr_or_null<int32_t>(seq_idx), ptr<float>(r.cs),
        ptr<float>(r.decay_in), ptr<float>(r.decay_out), ptr<int32_t>(r.doc));
    NH_CUDA_CHECK_LAUNCH();
  }
  if (fused) {
    r.entering = Tensor::empty(r.states.shape(), DType::BF16, Device::CUDA);
  } else {
    r.cb =
        Tensor::empty({d.batch, d.n_chunks, d.groups, d.chunk, d.chunk}, DType::F32, Device::CUDA);
    const int64_t row_tiles = tiles(std::min(d.chunk, d.seqlen));
    const dim3 cb_grid(unsigned(d.batch * d.n_chunks * d.groups), unsigned(row_tiles),
                       unsigned(row_tiles));
    if (has_blocks(cb_grid)) {
      chunk_cb_kernel<T>
          <<<cb_grid, kThreads, 0, stream()>>>(d, ptr<T>(Bm), ptr<T>(Cm), ptr<float>(r.cb));
      NH_CUDA_CHECK_LAUNCH();
    }
  }
  own_states<T>(d, fused, r.decay_out, ptr<T>(dt), x, Bm, r.states);
  const T* start = ptr_or_null<T>(initial_state);
  if (!final_state.defined())
    pass_states(d, r.states, r.entering, r.decay_in, false, start, static_cast<T*>(nullptr));
  else if (final_state.dtype() == DType::F32)
    pass_states(d, r.states, r.entering, r.decay_in, false, start, ptr<float>(final_state));
  else
    pass_states(d, r.states, r.entering, r.decay_in, false, start, ptr<T>(final_state));
  return r;
}

// The backward's buffers: the per-token parts finish_dt sums (TokenParts), and their storage.
struct GradParts {
  Tensor ddt, dD, off, v, rows, cols;
  TokenParts view() const {
    return {ptr<float>(ddt), ptr<float>(dD),   ptr<float>(off),  ptr<float>(v),
            ptr<float>(rows), ptr<float>(cols), ddt.size(0),     off.size(0),
            v.size(0),       row_tile};
  }
  int row_tile;
};

Tensor f32(const Shape& shape) { return Tensor::empty(shape, DType::F32, Device::CUDA); }

// Per-chunk gradients of x, C and B with the tile kernels, and their per-tile shares of ddt, dD
// and dcs.
template <class T>
GradParts tile_gradients(const SsdDims& d, const ChunkStates& cs, const Tensor& x,
                         const Tensor& dt, const Tensor& Bm, const Tensor& Cm, const Tensor& D,
                         const Tensor& dy, const Tensor& dstates, Tensor& dx, Tensor& dBm,
                         Tensor& dCm) {
  const int64_t units = d.batch * d.n_chunks * d.heads;
  const int64_t p_tiles = tiles(d.head_dim), n_tiles = tiles(d.state);
  const int64_t row_tiles = tiles(std::min(d.chunk, d.seqlen));
  GradParts g{f32({p_tiles, d.batch, d.seqlen, d.heads}), f32({p_tiles, d.batch, d.seqlen, d.heads}),
              f32({n_tiles, d.batch, d.seqlen, d.heads}), f32({n_tiles, d.batch, d.seqlen, d.heads}),
              f32({row_tiles, d.batch, d.seqlen, d.heads}),
              f32({row_tiles, d.batch, d.seqlen, d.heads}), kTile};
  Tensor dB_heads = f32({d.batch, d.seqlen, d.heads, d.state}), dC_heads = f32(dB_heads.shape());
  const Tensor dyx = f32({d.batch, d.n_chunks, d.heads, d.chunk, d.chunk});
  const dim3 dcs_grid{unsigned(units), unsigned(row_tiles), unsigned(row_tiles)};
  if (has_blocks(dcs_grid)) {
    chunk_dyx_kernel<T>
        <<<dcs_grid, kThreads, 0, stream()>>>(d, ptr<T>(x), ptr<T>(dy), ptr<float>(dyx));
    NH_CUDA_CHECK_LAUNCH();
    chunk_dcs_kernel<T><<<dcs_grid, kThreads, 0, stream()>>>(
        d, ptr<T>(dt), ptr<float>(cs.cb), ptr<float>(dyx), ptr<float>(cs.cs),
        ptr<int32_t>(cs.doc), ptr<float>(g.rows), ptr<float>(g.cols));
    NH_CUDA_CHECK_LAUNCH();
  }
  const dim3 dx_grid = tile_grid(d, d.head_dim), bc_grid = tile_grid(d, d.state);
  if (has_blocks(dx_grid)) {
    chunk_dx_kernel<T><<<dx_grid, kThreads, 0, stream()>>>(
        d, ptr<T>(x), ptr<T>(dt), ptr<T>(dy), ptr<T>(Bm), ptr_or_null<T>(D), ptr<float>(cs.cb),
        ptr<float>(cs.cs), ptr<float>(cs.decay_out), ptr<int32_t>(cs.doc), ptr<float>(dstates),
        ptr<T>(dx), ptr<float>(g.ddt), ptr<float>(g.dD));
    NH_CUDA_CHECK_LAUNCH();
  }
  if (has_blocks(bc_grid)) {
    chunk_dC_kernel<T><<<bc_grid, kThreads, 0, stream()>>>(
        d, ptr<T>(dt), ptr<T>(dy), ptr<T>(Bm), ptr<T>(Cm), ptr<float>(dyx), ptr<float>(cs.cs),
        ptr<float>(cs.decay_in), ptr<int32_t>(cs.doc), ptr<float>(cs.states),
        ptr<float>(dC_heads), ptr<float>(g.off));
    NH_CUDA_CHECK_LAUNCH();
    chunk_dB_kernel<T><<<bc_grid, kThreads, 0, stream()>>>(
        d, ptr<T>(x), ptr<T>(dt), ptr<T>(Bm), ptr<T>(Cm), ptr<float>(dyx), ptr<float>(cs.cs),
        ptr<float>(cs.decay_out), ptr<int32_t>(cs.doc), ptr<float>(dstates), ptr<float>(dB_heads),
        ptr<float>(g.v));
    NH_CUDA_CHECK_LAUNCH();
  }
  const int64_t bc_elements = dBm.numel();
  if (bc_elements > 0) {
    group_sum_kernel<T><<<blocks_for(bc_elements, kThreads), kThreads, 0, stream()>>>(
        d, ptr<float>(dB_heads), ptr<float>(dC_heads), ptr<T>(dBm), ptr<T>(dCm));
    NH_CUDA_CHECK_LAUNCH();
  }
  return g;
}

// The same with the fused kernels: dx with its parts, then dy·xᵀ per group (dcb) with the
// intra-chunk dcs terms, then dC and dB from it, written in bf16 directly. dstates here is the
// bf16 dS_out.
GradParts fused_gradients(const SsdDims& d, const ChunkStates& cs, const Tensor& x,
                          const Tensor& dt, const Tensor& Bm, const Tensor& Cm, const Tensor& D,
                          const Tensor& dy, const Tensor& dstates, Tensor& dx, Tensor& dBm,
                          Tensor& dCm) {
  const Shape one = {1, d.batch, d.seqlen, d.heads};
  GradParts g{f32(one), f32(one), f32({d.state / ssd_fused::kStateBlock, d.batch, d.seqlen, d.heads}),
              f32(one), f32(one), f32(one), ssd_fused::kChunk};
  ssd_fused::dx(d, ptr<bf16>(x), ptr<bf16>(dt), ptr<bf16>(dy), ptr<bf16>(Bm), ptr<bf16>(Cm),
                ptr_or_null<bf16>(D), ptr<float>(cs.cs), ptr<float>(cs.decay_out),
                ptr<int32_t>(cs.doc), ptr<bf16>(dstates), ptr<bf16>(dx), ptr<float>(g.ddt),
                ptr<float>(g.dD), ptr<float>(g.v));
  const Tensor dcb = Tensor::empty({d.batch, d.n_chunks, d.groups, d.chunk, d.chunk}, DType::BF16,
                                   Device::CUDA);
  ssd_fused::dcb(d, ptr<bf16>(x), ptr<bf16>(dt), ptr<bf16>(dy), ptr<bf16>(Bm), ptr<bf16>(Cm),
                 ptr<float>(cs.cs), ptr<int32_t>(cs.doc), ptr<bf16>(dcb), ptr<float>(g.rows),
                 ptr<float>(g.cols));
  ssd_fused::dC(d, ptr<bf16>(dy), ptr<bf16>(Bm), ptr<bf16>(Cm), ptr<float>(cs.decay_in),
                ptr<bf16>(cs.entering), ptr<bf16>(dcb), ptr<bf16>(dCm), ptr<float>(g.off));
  ssd_fused::dB(d, ptr<bf16>(x), ptr<bf16>(dt), ptr<bf16>(Cm), ptr<float>(cs.decay_out),
                ptr<bf16>(dstates), ptr<bf16>(dcb), ptr<bf16>(dBm));
  return g;
}

}  // namespace

void ssd_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                 const Tensor& Cm, const Tensor& D, int64_t chunk_size, const Tensor& seq_idx,
                 const Tensor& initial_state, Tensor& y, Tensor& final_state) {
  const SsdDims d = check_ssd(x, dt, A, Bm, Cm, D, chunk_size, seq_idx, initial_state);
  check_output(y, x.shape(), x.dtype(), "y");
  if (final_state.defined())
    check_output(final_state, {d.batch, d.heads, d.head_dim, d.state},
                 final_state.dtype() == DType::F32 ? DType::F32 : x.dtype(), "final_state");
  with_gpu_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const bool fused = use_fused<T>(d, {x.raw(), Bm.raw(), Cm.raw(), y.raw()});
    const ChunkStates cs =
        chunk_states<T>(d, x, dt, A, Bm, Cm, seq_idx, initial_state, final_state, fused);
    if constexpr (std::is_same_v<T, bf16>) {
      if (fused) {
        ssd_fused::scan(d, ptr<T>(x), ptr<T>(dt), ptr<T>(Bm), ptr<T>(Cm), ptr_or_null<T>(D),
                        ptr<float>(cs.cs), ptr<float>(cs.decay_in), ptr<int32_t>(cs.doc),
                        ptr<bf16>(cs.entering), ptr<T>(y));
        return;
      }
    }
    const dim3 grid = tile_grid(d, d.head_dim);
    if (has_blocks(grid)) {
      chunk_scan_kernel<T><<<grid, kThreads, 0, stream()>>>(
          d, ptr<T>(x), ptr<T>(dt), ptr<T>(Cm), ptr_or_null<T>(D), ptr<float>(cs.cb),
          ptr<float>(cs.cs), ptr<float>(cs.decay_in), ptr<int32_t>(cs.doc), ptr<float>(cs.states),
          ptr<T>(y));
      NH_CUDA_CHECK_LAUNCH();
    }
  });
}

void ssd_backward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                  const Tensor& Cm, const Tensor& D, int64_t chunk_size, const Tensor& seq_idx,
                  const Tensor& initial_state, const Tensor& dy, Tensor& dx, Tensor& ddt,
                  Tensor& dA, Tensor& dBm, Tensor& dCm, Tensor& dD, Tensor& dinitial_state) {
  const SsdDims d = check_ssd(x, dt, A, Bm, Cm, D, chunk_size, seq_idx, initial_state);
  const DType f = x.dtype();
  check_output(dy, x.shape(), f, "dy");
  check_output(dx, x.shape(), f, "dx");
  check_output(ddt, dt.shape(), f, "ddt");
  check_output(dA, A.shape(), f, "dA");
  check_output(dBm, Bm.shape(), f, "dBm");
  check_output(dCm, Cm.shape(), f, "dCm");
  if (dD.defined()) check_output(dD, {d.heads}, f, "dD");
  if (dinitial_state.defined())
    check_output(dinitial_state, {d.batch, d.heads, d.head_dim, d.state}, f, "dinitial_state");
  with_gpu_float_type(f, [&](auto zero) {
    using T = decltype(zero);
    const bool fused = use_fused<T>(d, {x.raw(), Bm.raw(), Cm.raw(), dy.raw(), dx.raw(),
                                        dBm.raw(), dCm.raw()});
    Tensor no_final;
    const ChunkStates cs =
        chunk_states<T>(d, x, dt, A, Bm, Cm, seq_idx, initial_state, no_final, fused);
    const int64_t units = d.batch * d.n_chunks * d.heads;

    // dS_out of every chunk: each chunk's own term, then passed backwards.
    Tensor dstates = f32({d.batch, d.n_chunks, d.heads, d.head_dim, d.state});
    own_states<T>(d, fused, cs.decay_in, static_cast<const T*>(nullptr), dy, Cm, dstates);
    const Tensor dentering =
        fused ? Tensor::empty(dstates.shape(), DType::BF16, Device::CUDA) : Tensor();
    pass_states(d, dstates, dentering, cs.decay_in, true, static_cast<const T*>(nullptr),
                dinitial_state.defined() ? ptr<T>(dinitial_state) : nullptr);
    Tensor ddecay = f32({units});
    if (units > 0) {
      with_entering(dstates, dentering, [&](auto* dout) {
        using S = std::remove_pointer_t<decltype(dout)>;
        state_decay_grad_kernel<<<unsigned(units), kThreads, 0, stream()>>>(
            d, static_cast<const S*>(dout),
            fused ? ptr<S>(cs.entering) : ptr<S>(cs.states), ptr<float>(ddecay));
      });
      NH_CUDA_CHECK_LAUNCH();
    }

    GradParts parts;
    if constexpr (std::is_same_v<T, bf16>) {
      if (fused) parts = fused_gradients(d, cs, x, dt, Bm, Cm, D, dy, dentering, dx, dBm, dCm);
    }
    if (!fused) parts = tile_gradients<T>(d, cs, x, dt, Bm, Cm, D, dy, dstates, dx, dBm, dCm);

    // dt, then the sums over the whole batch (dA, dD).
    Tensor da_part = Tensor::empty({units}, DType::F64, Device::CUDA);
    Tensor dd_part = Tensor::empty({units}, DType::F64, Device::CUDA);
    if (units > 0) {
      const dim3 grid(unsigned(d.batch * d.n_chunks), unsigned(blocks_for(d.heads, kDtHeads)));
      finish_dt_kernel<T><<<grid, kThreads, 0, stream()>>>(
          d, ptr<T>(dt), ptr<T>(A), ptr<float>(cs.decay_in), ptr<float>(ddecay), parts.view(),
          ptr<T>(ddt), ptr<double>(da_part), ptr<double>(dd_part));
      NH_CUDA_CHECK_LAUNCH();
    }
    if (d.heads > 0) {
      param_grad_kernel<T><<<unsigned(d.heads), kThreads, 0, stream()>>>(
          d, ptr<double>(da_part), ptr<double>(dd_part), ptr<T>(dA),
          dD.defined() ? ptr<T>(dD) : nullptr);
      NH_CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace nh::cuda
