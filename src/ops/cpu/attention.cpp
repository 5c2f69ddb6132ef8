// CPU causal GQA attention (SPEC §3), one query row at a time: the scores of a row are held in an
// O(S) buffer, never an S×S matrix. Dot products of length dh are summed in T; the softmax sums
// and the sums over keys or queries (out, dq, dk, dv) in double.
//
// Documents: a document is a run of equal seq_idx values in a row; token t attends to
// [doc_start[t], t]. The backward recomputes the probabilities from lse (flash-attention style)
// in two passes, both deterministic and free of atomics: dq by query row, dk and dv by key row
// (summing the q heads that share the kv head in a fixed order).
#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>
#include "ops/cpu/dot.h"
#include "ops/cpu/parallel.h"

namespace nh::cpu {

namespace {

struct AttnDims {
  int64_t batch, seqlen, q_heads, kv_heads, head_dim;
};

AttnDims check_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx) {
  if (q.ndim() != 4) throw Error("attention", "q shape", "[B, S, Hq, dh]", shape_str(q.shape()));
  if (k.ndim() != 4) throw Error("attention", "k shape", "[B, S, Hkv, dh]", shape_str(k.shape()));
  const AttnDims d{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  if (d.kv_heads < 1 || d.q_heads % d.kv_heads != 0)
    throw Error("attention", "num_key_value_heads",
                "a divisor of Hq = " + std::to_string(d.q_heads), std::to_string(d.kv_heads));
  expect_shape(k, {d.batch, d.seqlen, d.kv_heads, d.head_dim}, "attention k");
  expect_shape(v, {d.batch, d.seqlen, d.kv_heads, d.head_dim}, "attention v");
  if (k.dtype() != q.dtype() || v.dtype() != q.dtype())
    throw Error("attention", "k/v dtype", dtype_name(q.dtype()),
                std::string(dtype_name(k.dtype())) + "/" + dtype_name(v.dtype()));
  if (seq_idx.defined()) {
    expect_shape(seq_idx, {d.batch, d.seqlen}, "attention seq_idx");
    if (seq_idx.dtype() != DType::I32)
      throw Error("attention", "seq_idx dtype", "I32", dtype_name(seq_idx.dtype()));
  }
  return d;
}

// Per token [B * S]: the first and one past the last position of its document.
struct Documents {
  std::vector<int64_t> start, end;
};

Documents documents(const Tensor& seq_idx, int64_t batch, int64_t seqlen) {
  Documents docs{std::vector<int64_t>(batch * seqlen), std::vector<int64_t>(batch * seqlen)};
  const int32_t* idx = seq_idx.defined() ? seq_idx.data<int32_t>() : nullptr;
  auto same = [&](int64_t i, int64_t j) { return idx == nullptr || idx[i] == idx[j]; };
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t row = b * seqlen;
    for (int64_t t = 0; t < seqlen; ++t)
      docs.start[row + t] = t > 0 && same(row + t, row + t - 1) ? docs.start[row + t - 1] : t;
    for (int64_t t = seqlen - 1; t >= 0; --t)
      docs.end[row + t] =
          t + 1 < seqlen && same(row + t, row + t + 1) ? docs.end[row + t + 1] : t + 1;
  }
  return docs;
}

// Multiply-adds of one pass over the causal score triangle.
int64_t attention_work(const AttnDims& d) {
  return d.batch * d.q_heads * d.seqlen * (d.seqlen + 1) / 2 * d.head_dim;
}

// Row pointers into q/out/dq ([B, S, Hq, dh]) and k/v/dk/dv ([B, S, Hkv, dh]).
struct AttnIndex {
  AttnDims d;
  int64_t q_row(int64_t b, int64_t t, int64_t h) const {
    return ((b * d.seqlen + t) * d.q_heads + h) * d.head_dim;
  }
  int64_t kv_row(int64_t b, int64_t t, int64_t kh) const {
    return ((b * d.seqlen + t) * d.kv_heads + kh) * d.head_dim;
  }
  int64_t lse_at(int64_t b, int64_t h, int64_t t) const {
    return (b * d.q_heads + h) * d.seqlen + t;
  }
  int64_t group() const { return d.q_heads / d.kv_heads; }
};

template <class T>
void forward_impl(const T* q, const T* k, const T* v, const Documents& docs, double scale,
                  const AttnDims& d, T* out, T* lse) {
  const AttnIndex ix{d};
  const int64_t dh = d.head_dim;
#pragma omp parallel if (attention_work(d) >= kMinParallelWork)
  {
    std::vector<double> scores(d.seqlen), acc(dh);
#pragma omp for collapse(3) schedule(dynamic, 16)
    for (int64_t b = 0; b < d.batch; ++b)
      for (int64_t h = 0; h < d.q_heads; ++h)
        for (int64_t i = 0; i < d.seqlen; ++i) {
          const int64_t kh = h / ix.group(), start = docs.start[b * d.seqlen + i];
          const T* qi = q + ix.q_row(b, i, h);
          double mx = -std::numeric_limits<double>::infinity();
          for (int64_t j = start; j <= i; ++j) {
            scores[j - start] = scale * double(dot(qi, k + ix.kv_row(b, j, kh), dh));
            mx = std::max(mx, scores[j - start]);
          }
          double sum = 0;
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t j = start; j <= i; ++j) {
            const double p = std::exp(scores[j - start] - mx);
            const T* vj = v + ix.kv_row(b, j, kh);
            sum += p;
            for (int64_t e = 0; e < dh; ++e) acc[e] += p * double(vj[e]);
          }
          T* oi = out + ix.q_row(b, i, h);
          for (int64_t e = 0; e < dh; ++e) oi[e] = T(acc[e] / sum);
          lse[ix.lse_at(b, h, i)] = T(mx + std::log(sum));
        }
  }
}

// With p_ij = exp(scale q_i·k_j - lse_i) and D_i = Σ dout_i·out_i (= Σ_j p_ij dout_i·v_j):
//   ds_ij = p_ij (dout_i·v_j - D_i);  dq_i = scale Σ_j ds_ij k_j;
//   dk_j = scale Σ_{h, i} ds_ij q_i;  dv_j = Σ_{h, i} p_ij dout_i.
template <class T>
void backward_impl(const T* q, const T* k, const T* v, const Documents& docs, double scale,
                   const T* out, const T* lse, const T* dout, const AttnDims& d, T* dq, T* dk,
                   T* dv) {
  const AttnIndex ix{d};
  const int64_t dh = d.head_dim;
  std::vector<double> Dvec(d.batch * d.q_heads * d.seqlen);
#pragma omp parallel for collapse(3) if (attention_work(d) >= kMinParallelWork)
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t h = 0; h < d.q_heads; ++h)
      for (int64_t i = 0; i < d.seqlen; ++i) {
        const int64_t r = ix.q_row(b, i, h);
        Dvec[ix.lse_at(b, h, i)] = double(dot(dout + r, out + r, dh));
      }

#pragma omp parallel if (attention_work(d) >= kMinParallelWork)
  {
    std::vector<double> acc(dh), acc_v(dh);
#pragma omp for collapse(3) schedule(dynamic, 16)
    for (int64_t b = 0; b < d.batch; ++b)
      for (int64_t h = 0; h < d.q_heads; ++h)
        for (int64_t i = 0; i < d.seqlen; ++i) {
          const int64_t kh = h / ix.group(), r = ix.q_row(b, i, h), at = ix.lse_at(b, h, i);
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t j = docs.start[b * d.seqlen + i]; j <= i; ++j) {
            const T *kj = k + ix.kv_row(b, j, kh), *vj = v + ix.kv_row(b, j, kh);
            const double p = std::exp(scale * double(dot(q + r, kj, dh)) - double(lse[at]));
            const double ds = p * (double(dot(dout + r, vj, dh)) - Dvec[at]);
            for (int64_t e = 0; e < dh; ++e) acc[e] += ds * double(kj[e]);
          }
          for (int64_t e = 0; e < dh; ++e) dq[r + e] = T(scale * acc[e]);
        }

#pragma omp for collapse(3) schedule(dynamic, 16)
    for (int64_t b = 0; b < d.batch; ++b)
      for (int64_t kh = 0; kh < d.kv_heads; ++kh)
        for (int64_t j = 0; j < d.seqlen; ++j) {
          const int64_t rk = ix.kv_row(b, j, kh), end = docs.end[b * d.seqlen + j];
          std::fill(acc.begin(), acc.end(), 0.0);
          std::fill(acc_v.begin(), acc_v.end(), 0.0);
          for (int64_t h = kh * ix.group(); h < (kh + 1) * ix.group(); ++h)
            for (int64_t i = j; i < end; ++i) {
              const int64_t r = ix.q_row(b, i, h), at = ix.lse_at(b, h, i);
              const double p = std::exp(scale * double(dot(q + r, k + rk, dh)) - double(lse[at]));
              const double ds = p * (double(dot(dout + r, v + rk, dh)) - Dvec[at]);
              for (int64_t e = 0; e < dh; ++e) {
                acc[e] += ds * double(q[r + e]);
                acc_v[e] += p * double(dout[r + e]);
              }
            }
          for (int64_t e = 0; e < dh; ++e) {
            dk[rk + e] = T(scale * acc[e]);
            dv[rk + e] = T(acc_v[e]);
          }
        }
  }
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx,
                       double scale, Tensor& out, Tensor& lse) {
  const AttnDims d = check_attention(q, k, v, seq_idx);
  expect_shape(out, q.shape(), "attention out");
  expect_shape(lse, {d.batch, d.q_heads, d.seqlen}, "attention lse");
  const Documents docs = documents(seq_idx, d.batch, d.seqlen);
  with_float_type(q.dtype(), [&](auto zero) {
    using T = decltype(zero);
    forward_impl<T>(q.data<T>(), k.data<T>(), v.data<T>(), docs, scale, d, out.data<T>(),
                    lse.data<T>());
  });
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx,
                        double scale, const Tensor& out, const Tensor& lse, const Tensor& dout,
                        Tensor& dq, Tensor& dk, Tensor& dv) {
  const AttnDims d = check_attention(q, k, v, seq_idx);
  expect_shape(out, q.shape(), "attention out");
  expect_shape(dout, q.shape(), "attention dout");
  expect_shape(lse, {d.batch, d.q_heads, d.seqlen}, "attention lse");
  expect_shape(dq, q.shape(), "attention dq");
  expect_shape(dk, k.shape(), "attention dk");
  expect_shape(dv, v.shape(), "attention dv");
  const Documents docs = documents(seq_idx, d.batch, d.seqlen);
  with_float_type(q.dtype(), [&](auto zero) {
    using T = decltype(zero);
    backward_impl<T>(q.data<T>(), k.data<T>(), v.data<T>(), docs, scale, out.data<T>(),
                     lse.data<T>(), dout.data<T>(), d, dq.data<T>(), dk.data<T>(), dv.data<T>());
  });
}

}  // namespace nh::cpu
