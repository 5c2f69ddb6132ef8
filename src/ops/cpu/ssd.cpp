// CPU SSD (SPEC §2), split into the steps of mamba_ssm: chunk_cumsum, chunk_scan (the intra-chunk
// masked product plus the contribution of the incoming state), chunk_state and state passing.
// Each (batch, head) is independent and runs on one OpenMP thread; the state and all chunk sums
// are kept in T (fp32 or fp64), the sums over the whole sequence (dA, dD) in double.
//
// Documents: seq_idx is turned into a per-row counter that goes up by one wherever seq_idx
// changes, so "same document" is "same counter" even when a row reuses an index value. The decay
// between tokens of different documents is zero, which the chunk mask, the chunk state and the
// state passing all apply; the state entering a chunk belongs to the document of the token just
// before it (initial_state to the first document of the row).
#include "ops/ssd.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>
#include "ops/cpu/dot.h"
#include "ops/cpu/parallel.h"

namespace nh::cpu {

namespace {

struct SsdDims {
  int64_t batch, seqlen, heads, head_dim, groups, state;
};

SsdDims check_ssd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                  const Tensor& Cm, const Tensor& D, const Tensor& seq_idx,
                  const Tensor& initial_state) {
  if (x.ndim() != 4) throw Error("ssd", "x shape", "[B, S, H, P]", shape_str(x.shape()));
  if (Bm.ndim() != 4) throw Error("ssd", "Bm shape", "[B, S, G, N]", shape_str(Bm.shape()));
  const SsdDims d{x.size(0), x.size(1), x.size(2), x.size(3), Bm.size(2), Bm.size(3)};
  if (d.groups < 1 || d.heads % d.groups != 0)
    throw Error("ssd", "n_groups", "a divisor of H = " + std::to_string(d.heads),
                std::to_string(d.groups));
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
  return d;
}

// Multiply-adds of one chunked pass: per token, a row of the chunk mask and a state product.
int64_t ssd_work(const SsdDims& s, int64_t chunk_size) {
  return s.batch * s.heads * s.seqlen *
         (std::min(chunk_size, s.seqlen) * (s.state + s.head_dim) + s.head_dim * s.state);
}

// Outputs are checked up front: a dtype error thrown inside a parallel region would terminate.
void check_output(const Tensor& t, const Shape& shape, DType dtype, const std::string& what) {
  expect_shape(t, shape, "ssd " + what);
  if (t.dtype() != dtype)
    throw Error("ssd", what + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

void check_chunk_size(int64_t chunk_size) {
  if (chunk_size < 1) throw Error("ssd", "chunk_size", ">= 1", std::to_string(chunk_size));
}

// Per row, the document counter of each token: [B * S], 0 for the row's first document.
std::vector<int32_t> document_counters(const Tensor& seq_idx, int64_t batch, int64_t seqlen) {
  std::vector<int32_t> seg(batch * seqlen, 0);
  if (!seq_idx.defined()) return seg;
  const int32_t* idx = seq_idx.data<int32_t>();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 1; t < seqlen; ++t) {
      const int64_t i = b * seqlen + t;
      seg[i] = seg[i - 1] + (idx[i] != idx[i - 1] ? 1 : 0);
    }
  return seg;
}

// The inputs of one (batch, head): token t of x is at x + t * x_stride, and so on.
template <class T>
struct SsdHead {
  const T *x, *dt, *B, *C;
  const int32_t* seg;
  int64_t x_stride, dt_stride, bc_stride, P, N;
  T a, d;  // A[h], and D[h] or 0 when D is undefined

  SsdHead(const Tensor& x_, const Tensor& dt_, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
          const Tensor& D, const SsdDims& s, const std::vector<int32_t>& segs, int64_t b,
          int64_t h) {
    const int64_t g = h / (s.heads / s.groups);
    x = x_.data<T>() + (b * s.seqlen * s.heads + h) * s.head_dim;
    dt = dt_.data<T>() + b * s.seqlen * s.heads + h;
    B = Bm.data<T>() + (b * s.seqlen * s.groups + g) * s.state;
    C = Cm.data<T>() + (b * s.seqlen * s.groups + g) * s.state;
    seg = segs.data() + b * s.seqlen;
    x_stride = s.heads * s.head_dim;
    dt_stride = s.heads;
    bc_stride = s.groups * s.state;
    P = s.head_dim;
    N = s.state;
    a = A.data<T>()[h];
    d = D.defined() ? D.data<T>()[h] : T(0);
  }
  const T* xt(int64_t t) const { return x + t * x_stride; }
  T dtt(int64_t t) const { return dt[t * dt_stride]; }
  const T* Bt(int64_t t) const { return B + t * bc_stride; }
  const T* Ct(int64_t t) const { return C + t * bc_stride; }
};

// Tokens [t0, t0 + len) of one head. cs[i] = Σ_{k ≤ i} dt[t0 + k]·A (inclusive), so the decay
// from token j to token i ≥ j of the same document is exp(cs[i] - cs[j]) ≤ 1.
template <class T>
struct Chunk {
  int64_t t0 = 0, len = 0;
  int32_t seg_in = 0;  // document of the state entering the chunk
  std::vector<T> cs;

  bool same_doc(int64_t i, int64_t j, const SsdHead<T>& hd) const {
    return hd.seg[t0 + i] == hd.seg[t0 + j];
  }
  bool sees_state(int64_t i, const SsdHead<T>& hd) const { return hd.seg[t0 + i] == seg_in; }
};

// Step 1 (chunk_cumsum).
template <class T>
void chunk_cumsum(const SsdHead<T>& hd, int64_t t0, int64_t len, Chunk<T>& ch) {
  ch.t0 = t0;
  ch.len = len;
  ch.seg_in = t0 == 0 ? hd.seg[0] : hd.seg[t0 - 1];
  ch.cs.resize(len);
  T sum = 0;
  for (int64_t i = 0; i < len; ++i) ch.cs[i] = sum += hd.dtt(t0 + i) * hd.a;
}

// Step 2 (chunk_scan): y_i = Σ_{j ≤ i, same doc} exp(cs_i - cs_j) (C_i·B_j) dt_j x_j   (Y_diag)
//                          + exp(cs_i) S_in C_i   when token i continues S_in's document (Y_off)
//                          + D x_i.
// S_in [P, N]; y has the layout of x.
template <class T>
void chunk_scan(const SsdHead<T>& hd, const Chunk<T>& ch, const T* S_in, T* y) {
  const int64_t P = hd.P, N = hd.N;
  std::vector<T> acc(P);
  for (int64_t i = 0; i < ch.len; ++i) {
    const int64_t ti = ch.t0 + i;
    const T* Ci = hd.Ct(ti);
    std::fill(acc.begin(), acc.end(), T(0));
    for (int64_t j = 0; j <= i; ++j) {
      if (!ch.same_doc(i, j, hd)) continue;
      const int64_t tj = ch.t0 + j;
      const T coef = std::exp(ch.cs[i] - ch.cs[j]) * dot(Ci, hd.Bt(tj), N) * hd.dtt(tj);
      const T* xj = hd.xt(tj);
      for (int64_t p = 0; p < P; ++p) acc[p] += coef * xj[p];
    }
    if (ch.sees_state(i, hd)) {
      const T e = std::exp(ch.cs[i]);
      for (int64_t p = 0; p < P; ++p) acc[p] += e * dot(S_in + p * N, Ci, N);
    }
    const T* xi = hd.xt(ti);
    T* yi = y + ti * hd.x_stride;
    for (int64_t p = 0; p < P; ++p) yi[p] = acc[p] + hd.d * xi[p];
  }
}

// Step 3 (chunk_state): the chunk's own contribution to the state after its last token,
// Σ_{j in the last token's document} exp(cs_last - cs_j) dt_j x_j ⊗ B_j, into out [P, N].
template <class T>
void chunk_state(const SsdHead<T>& hd, const Chunk<T>& ch, T* out) {
  const int64_t P = hd.P, N = hd.N, last = ch.len - 1;
  std::fill(out, out + P * N, T(0));
  for (int64_t j = 0; j < ch.len; ++j) {
    if (!ch.same_doc(last, j, hd)) continue;
    const int64_t tj = ch.t0 + j;
    const T w = std::exp(ch.cs[last] - ch.cs[j]) * hd.dtt(tj);
    const T *xj = hd.xt(tj), *Bj = hd.Bt(tj);
    for (int64_t p = 0; p < P; ++p)
      for (int64_t n = 0; n < N; ++n) out[p * N + n] += w * xj[p] * Bj[n];
  }
}

// Step 4 (state passing): S = exp(cs_last) S + own, or S = own when a document starts inside
// the chunk (the decay across a document boundary is zero).
template <class T>
void pass_state(const SsdHead<T>& hd, const Chunk<T>& ch, const T* own, T* S) {
  const T decay = ch.sees_state(ch.len - 1, hd) ? std::exp(ch.cs[ch.len - 1]) : T(0);
  for (int64_t i = 0; i < hd.P * hd.N; ++i) S[i] = decay * S[i] + own[i];
}

// The gradients of one (batch, head): dx, ddt written in place (layout of x and dt), dB and dC
// into this head's own [S, N] buffers (summed over the heads of a group afterwards), dA and dD
// summed here.
template <class T>
struct SsdHeadGrad {
  const T* dy;
  T *dx, *ddt, *dB, *dC;
  double da = 0, dd = 0;
};

// Backward of steps 1-4 for one chunk, given the state S_in [P, N] that entered it and dS_out
// [P, N], the gradient of the state it passed on. Writes dS_in [P, N], the gradient of S_in.
// Every term of chunk_scan and chunk_state is a product of a decay exp(cs_i - cs_j), a B or C
// and x; its gradient w.r.t. cs_i is the term itself, w.r.t. cs_j minus it (dcs). Then
// cs = cumsum(dt·A) sends Σ_{i ≥ j} dcs_i to dt_j·A and to A.
template <class T>
void chunk_backward(const SsdHead<T>& hd, const Chunk<T>& ch, const T* S_in, const T* dS_out,
                    T* dS_in, SsdHeadGrad<T>& g) {
  const int64_t L = ch.len, P = hd.P, N = hd.N, last = L - 1;
  std::vector<T> dxd(L * P, T(0)), dcs(L, T(0)), sc(P), u(P);
  for (int64_t i = 0; i < L; ++i) {
    std::fill(g.dB + (ch.t0 + i) * N, g.dB + (ch.t0 + i + 1) * N, T(0));
    std::fill(g.dC + (ch.t0 + i) * N, g.dC + (ch.t0 + i + 1) * N, T(0));
  }
  std::fill(dS_in, dS_in + P * N, T(0));

  // chunk_scan: y_i = Σ_j w_ij (C_i·B_j) xd_j + e_i S_in C_i, with xd_j = dt_j x_j.
  for (int64_t i = 0; i < L; ++i) {
    const int64_t ti = ch.t0 + i;
    const T *Ci = hd.Ct(ti), *dyi = g.dy + ti * hd.x_stride;
    T* dCi = g.dC + ti * N;
    for (int64_t j = 0; j <= i; ++j) {
      if (!ch.same_doc(i, j, hd)) continue;
      const int64_t tj = ch.t0 + j;
      const T *Bj = hd.Bt(tj), *xj = hd.xt(tj);
      T* dBj = g.dB + tj * N;
      const T w = std::exp(ch.cs[i] - ch.cs[j]);
      const T wcb = w * dot(Ci, Bj, N);
      const T s = hd.dtt(tj) * dot(dyi, xj, P);  // dy_i · xd_j
      for (int64_t p = 0; p < P; ++p) dxd[j * P + p] += wcb * dyi[p];
      for (int64_t n = 0; n < N; ++n) {
        dCi[n] += w * s * Bj[n];
        dBj[n] += w * s * Ci[n];
      }
      dcs[i] += wcb * s;
      dcs[j] -= wcb * s;
    }
    if (ch.sees_state(i, hd)) {
      const T e = std::exp(ch.cs[i]);
      for (int64_t p = 0; p < P; ++p) sc[p] = dot(S_in + p * N, Ci, N);
      dcs[i] += e * dot(dyi, sc.data(), P);
      for (int64_t p = 0; p < P; ++p)
        for (int64_t n = 0; n < N; ++n) {
          dCi[n] += e * S_in[p * N + n] * dyi[p];
          dS_in[p * N + n] += e * dyi[p] * Ci[n];
        }
    }
  }

  // chunk_state and pass_state: S_out = e_last S_in + Σ_j w_j xd_j ⊗ B_j.
  if (ch.sees_state(last, hd)) {
    const T e = std::exp(ch.cs[last]);
    for (int64_t i = 0; i < P * N; ++i) dS_in[i] += e * dS_out[i];
    dcs[last] += e * dot(dS_out, S_in, P * N);
  }
  for (int64_t j = 0; j < L; ++j) {
    if (!ch.same_doc(last, j, hd)) continue;
    const int64_t tj = ch.t0 + j;
    const T *Bj = hd.Bt(tj), *xj = hd.xt(tj), dtj = hd.dtt(tj);
    T* dBj = g.dB + tj * N;
    const T w = std::exp(ch.cs[last] - ch.cs[j]);
    for (int64_t p = 0; p < P; ++p) u[p] = dot(dS_out + p * N, Bj, N);
    for (int64_t p = 0; p < P; ++p) dxd[j * P + p] += w * u[p];
    for (int64_t p = 0; p < P; ++p)
      for (int64_t n = 0; n < N; ++n) dBj[n] += w * dtj * xj[p] * dS_out[p * N + n];
    const T v = w * dtj * dot(xj, u.data(), P);
    dcs[last] += v;
    dcs[j] -= v;
  }

  // xd = dt·x, cs = cumsum(dt·A), and the skip term D·x.
  T dcs_suffix = 0;
  for (int64_t j = last; j >= 0; --j) {
    const int64_t tj = ch.t0 + j;
    const T *xj = hd.xt(tj), *dyj = g.dy + tj * hd.x_stride, dtj = hd.dtt(tj);
    T* dxj = g.dx + tj * hd.x_stride;
    dcs_suffix += dcs[j];
    for (int64_t p = 0; p < P; ++p) dxj[p] = dtj * dxd[j * P + p] + hd.d * dyj[p];
    g.ddt[tj * hd.dt_stride] = dot(xj, &dxd[j * P], P) + hd.a * dcs_suffix;
    g.da += double(dtj) * double(dcs_suffix);
    g.dd += double(dot(dyj, xj, P));
  }
}

template <class T>
void forward_impl(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                  const Tensor& Cm, const Tensor& D, int64_t chunk_size,
                  const std::vector<int32_t>& segs, const Tensor& initial_state, const SsdDims& s,
                  Tensor& y, Tensor& final_state) {
  const int64_t PN = s.head_dim * s.state;
#pragma omp parallel for collapse(2) \
    schedule(dynamic) if (ssd_work(s, chunk_size) >= kMinParallelWork)
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h) {
      const SsdHead<T> hd(x, dt, A, Bm, Cm, D, s, segs, b, h);
      T* yh = y.data<T>() + (b * s.seqlen * s.heads + h) * s.head_dim;
      std::vector<T> S(PN, T(0)), own(PN);
      if (initial_state.defined()) {
        const T* init = initial_state.data<T>() + (b * s.heads + h) * PN;
        std::copy(init, init + PN, S.begin());
      }
      Chunk<T> ch;
      for (int64_t t0 = 0; t0 < s.seqlen; t0 += chunk_size) {
        chunk_cumsum(hd, t0, std::min(chunk_size, s.seqlen - t0), ch);
        chunk_scan(hd, ch, S.data(), yh);
        chunk_state(hd, ch, own.data());
        pass_state(hd, ch, own.data(), S.data());
      }
      if (final_state.defined())
        std::copy(S.begin(), S.end(), final_state.data<T>() + (b * s.heads + h) * PN);
    }
}

template <class T>
void backward_impl(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                   const Tensor& Cm, const Tensor& D, int64_t chunk_size,
                   const std::vector<int32_t>& segs, const Tensor& initial_state, const Tensor& dy,
                   const SsdDims& s, Tensor& dx, Tensor& ddt, Tensor& dA, Tensor& dBm, Tensor& dCm,
                   Tensor& dD, Tensor& dinitial_state) {
  const int64_t PN = s.head_dim * s.state, SN = s.seqlen * s.state;
  const int64_t n_chunks = (s.seqlen + chunk_size - 1) / chunk_size;
  // Per-head dB and dC [B, H, S, N], summed over each group's heads in a fixed order below, and
  // per-(batch, head) dA, dD: no thread ever adds into memory another thread writes.
  std::vector<T> dB_heads(s.batch * s.heads * SN), dC_heads(dB_heads.size());
  std::vector<double> da_heads(s.batch * s.heads), dd_heads(da_heads.size());

#pragma omp parallel for collapse(2) \
    schedule(dynamic) if (ssd_work(s, chunk_size) >= kMinParallelWork)
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h) {
      const SsdHead<T> hd(x, dt, A, Bm, Cm, D, s, segs, b, h);
      const int64_t head_off = (b * s.seqlen * s.heads + h) * s.head_dim;
      SsdHeadGrad<T> g{dy.data<T>() + head_off, dx.data<T>() + head_off,
                       ddt.data<T>() + b * s.seqlen * s.heads + h,
                       dB_heads.data() + (b * s.heads + h) * SN,
                       dC_heads.data() + (b * s.heads + h) * SN};

      // Recompute the forward states, keeping only the one entering each chunk.
      std::vector<T> states(n_chunks * PN, T(0)), own(PN);
      std::vector<T> S(PN, T(0));
      if (initial_state.defined()) {
        const T* init = initial_state.data<T>() + (b * s.heads + h) * PN;
        std::copy(init, init + PN, S.begin());
      }
      Chunk<T> ch;
      for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t t0 = c * chunk_size;
        std::copy(S.begin(), S.end(), states.begin() + c * PN);
        chunk_cumsum(hd, t0, std::min(chunk_size, s.seqlen - t0), ch);
        chunk_state(hd, ch, own.data());
        pass_state(hd, ch, own.data(), S.data());
      }

      // The final state is not part of the loss: its gradient starts at zero.
      std::vector<T> dS(PN, T(0)), dS_in(PN);
      for (int64_t c = n_chunks - 1; c >= 0; --c) {
        const int64_t t0 = c * chunk_size;
        chunk_cumsum(hd, t0, std::min(chunk_size, s.seqlen - t0), ch);
        chunk_backward(hd, ch, &states[c * PN], dS.data(), dS_in.data(), g);
        dS.swap(dS_in);
      }
      if (dinitial_state.defined())
        std::copy(dS.begin(), dS.end(), dinitial_state.data<T>() + (b * s.heads + h) * PN);
      da_heads[b * s.heads + h] = g.da;
      dd_heads[b * s.heads + h] = g.dd;
    }

  const int64_t heads_per_group = s.heads / s.groups;
  T *dBp = dBm.data<T>(), *dCp = dCm.data<T>();
#pragma omp parallel for collapse(2) if (s.batch * s.heads * SN >= kMinParallelWork)
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = 0; t < s.seqlen; ++t)
      for (int64_t g = 0; g < s.groups; ++g)
        for (int64_t n = 0; n < s.state; ++n) {
          T sb = 0, sc = 0;
          for (int64_t h = g * heads_per_group; h < (g + 1) * heads_per_group; ++h) {
            const int64_t i = (b * s.heads + h) * SN + t * s.state + n;
            sb += dB_heads[i];
            sc += dC_heads[i];
          }
          const int64_t o = ((b * s.seqlen + t) * s.groups + g) * s.state + n;
          dBp[o] = sb;
          dCp[o] = sc;
        }
  for (int64_t h = 0; h < s.heads; ++h) {
    double da = 0, dd = 0;
    for (int64_t b = 0; b < s.batch; ++b) {
      da += da_heads[b * s.heads + h];
      dd += dd_heads[b * s.heads + h];
    }
    dA.data<T>()[h] += T(da);
    if (dD.defined()) dD.data<T>()[h] += T(dd);
  }
}

template <class T>
void recurrence_impl(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                     const Tensor& Cm, const Tensor& D, const std::vector<int32_t>& segs,
                     const Tensor& initial_state, const SsdDims& s, Tensor& y,
                     Tensor& final_state) {
  const int64_t P = s.head_dim, N = s.state, PN = P * N;
#pragma omp parallel for collapse(2) if (s.batch * s.heads * s.seqlen * PN >= kMinParallelWork)
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h) {
      const SsdHead<T> hd(x, dt, A, Bm, Cm, D, s, segs, b, h);
      T* yh = y.data<T>() + (b * s.seqlen * s.heads + h) * P;
      std::vector<T> S(PN, T(0));
      if (initial_state.defined()) {
        const T* init = initial_state.data<T>() + (b * s.heads + h) * PN;
        std::copy(init, init + PN, S.begin());
      }
      for (int64_t t = 0; t < s.seqlen; ++t) {
        if (t > 0 && hd.seg[t] != hd.seg[t - 1]) std::fill(S.begin(), S.end(), T(0));
        const T decay = std::exp(hd.dtt(t) * hd.a), dtt = hd.dtt(t);
        const T *xt = hd.xt(t), *Bt = hd.Bt(t), *Ct = hd.Ct(t);
        T* yt = yh + t * hd.x_stride;
        for (int64_t p = 0; p < P; ++p) {
          for (int64_t n = 0; n < N; ++n) S[p * N + n] = decay * S[p * N + n] + dtt * xt[p] * Bt[n];
          yt[p] = dot(&S[p * N], Ct, N) + hd.d * xt[p];
        }
      }
      if (final_state.defined())
        std::copy(S.begin(), S.end(), final_state.data<T>() + (b * s.heads + h) * PN);
    }
}

}  // namespace

void ssd_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                 const Tensor& Cm, const Tensor& D, int64_t chunk_size, const Tensor& seq_idx,
                 const Tensor& initial_state, Tensor& y, Tensor& final_state) {
  const SsdDims s = check_ssd(x, dt, A, Bm, Cm, D, seq_idx, initial_state);
  check_chunk_size(chunk_size);
  check_output(y, x.shape(), x.dtype(), "y");
  if (final_state.defined())
    check_output(final_state, {s.batch, s.heads, s.head_dim, s.state}, x.dtype(), "final_state");
  const std::vector<int32_t> segs = document_counters(seq_idx, s.batch, s.seqlen);
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    forward_impl<T>(x, dt, A, Bm, Cm, D, chunk_size, segs, initial_state, s, y, final_state);
  });
}

void ssd_backward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                  const Tensor& Cm, const Tensor& D, int64_t chunk_size, const Tensor& seq_idx,
                  const Tensor& initial_state, const Tensor& dy, Tensor& dx, Tensor& ddt,
                  Tensor& dA, Tensor& dBm, Tensor& dCm, Tensor& dD, Tensor& dinitial_state) {
  const SsdDims s = check_ssd(x, dt, A, Bm, Cm, D, seq_idx, initial_state);
  check_chunk_size(chunk_size);
  const DType f = x.dtype();
  check_output(dy, x.shape(), f, "dy");
  check_output(dx, x.shape(), f, "dx");
  check_output(ddt, dt.shape(), f, "ddt");
  check_output(dA, A.shape(), f, "dA");
  check_output(dBm, Bm.shape(), f, "dBm");
  check_output(dCm, Cm.shape(), f, "dCm");
  if (dD.defined()) check_output(dD, {s.heads}, f, "dD");
  if (dinitial_state.defined())
    check_output(dinitial_state, {s.batch, s.heads, s.head_dim, s.state}, f, "dinitial_state");
  const std::vector<int32_t> segs = document_counters(seq_idx, s.batch, s.seqlen);
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    backward_impl<T>(x, dt, A, Bm, Cm, D, chunk_size, segs, initial_state, dy, s, dx, ddt, dA, dBm,
                     dCm, dD, dinitial_state);
  });
}

void ssd_recurrence_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm,
                            const Tensor& Cm, const Tensor& D, const Tensor& seq_idx,
                            const Tensor& initial_state, Tensor& y, Tensor& final_state) {
  const SsdDims s = check_ssd(x, dt, A, Bm, Cm, D, seq_idx, initial_state);
  check_output(y, x.shape(), x.dtype(), "y");
  if (final_state.defined())
    check_output(final_state, {s.batch, s.heads, s.head_dim, s.state}, x.dtype(), "final_state");
  const std::vector<int32_t> segs = document_counters(seq_idx, s.batch, s.seqlen);
  with_float_type(x.dtype(), [&](auto zero) {
    using T = decltype(zero);
    recurrence_impl<T>(x, dt, A, Bm, Cm, D, segs, initial_state, s, y, final_state);
  });
}

}  // namespace nh::cpu
