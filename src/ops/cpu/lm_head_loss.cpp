#include "ops/lm_head_loss.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "ops/cpu/gemm.h"
#include "ops/cpu/parallel.h"

namespace nh::cpu {

namespace {

// Rows per chunk: the op holds at most this many rows of logits, [chunk, V], at a time.
constexpr int64_t kChunkRows = 128;
constexpr int64_t kIgnoreIndex = -100;

using lm_head::HeadDims;

// Checks h [T, D] (any leading shape), w [V, D] and labels (T elements, each in [0, V) or -100).
HeadDims check_head(const Tensor& h, const Tensor& w, const Tensor& labels) {
  const HeadDims d = lm_head::check_shapes(h, w);
  lm_head::check_types(h, w, labels, d);
  const int64_t* lp = labels.data<int64_t>();
  for (int64_t t = 0; t < d.rows; ++t)
    if (lp[t] != kIgnoreIndex && (lp[t] < 0 || lp[t] >= d.vocab))
      throw Error("lm_head_loss", "labels[" + std::to_string(t) + "]",
                  "-100 or a token in [0, " + std::to_string(d.vocab) + ")", std::to_string(lp[t]));
  return d;
}

// logsumexp of one row of logits, in double, shifted by the row's maximum for stability.
template <class T>
double logsumexp(const T* row, int64_t n) {
  double mx = row[0];
  for (int64_t v = 1; v < n; ++v) mx = std::max(mx, double(row[v]));
  double sum = 0;
  for (int64_t v = 0; v < n; ++v) sum += std::exp(double(row[v]) - mx);
  return mx + std::log(sum);
}

}  // namespace

// h [T, D], w [V, D], labels I64 [T] -> Σ over counted rows of lse − logit[label], and the count;
// logits [T, V] written when defined. Per-row terms in double, summed in row order.
LossSum lm_head_loss_forward(const Tensor& h, const Tensor& w, const Tensor& labels,
                             Tensor& logits) {
  const HeadDims d = check_head(h, w, labels);
  if (logits.defined() && (logits.ndim() < 1 || logits.size(-1) != d.vocab ||
                           logits.numel() != d.rows * d.vocab || logits.dtype() != h.dtype()))
    throw Error("lm_head_loss", "logits",
                std::string(dtype_name(h.dtype())) + " [" + std::to_string(d.rows) + ", " +
                    std::to_string(d.vocab) + "]",
                std::string(dtype_name(logits.dtype())) + " " + shape_str(logits.shape()));
  LossSum out;
  with_float_type(h.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* hp = h.data<T>();
    const T* wp = w.data<T>();
    const int64_t* lp = labels.data<int64_t>();
    std::vector<T> buffer(logits.defined() ? 0 : size_t(std::min(kChunkRows, d.rows) * d.vocab));
    std::vector<double> term(kChunkRows);
    for (int64_t r0 = 0; r0 < d.rows; r0 += kChunkRows) {
      const int64_t n = std::min(kChunkRows, d.rows - r0);
      T* lg = logits.defined() ? logits.data<T>() + r0 * d.vocab : buffer.data();
      gemm<T>(false, true, n, d.vocab, d.dim, T(1), hp + r0 * d.dim, d.dim, wp, d.dim, T(0), lg,
              d.vocab);
#pragma omp parallel for if (n * d.vocab >= kMinParallelWork)
      for (int64_t i = 0; i < n; ++i) {
        const int64_t label = lp[r0 + i];
        const T* row = lg + i * d.vocab;
        term[i] = label == kIgnoreIndex ? 0.0 : logsumexp(row, d.vocab) - double(row[label]);
      }
      for (int64_t i = 0; i < n; ++i) {
        if (lp[r0 + i] == kIgnoreIndex) continue;
        out.sum += term[i];
        ++out.count;
      }
    }
  });
  return out;
}

// dh [T, D] overwritten, dw [V, D] accumulated. Each chunk's logits are recomputed, turned into
// (softmax − onehot) · grad_scale in place (0 for ignored rows), then multiplied back through
// the head: dh = G · w, dw += Gᵀ · h.
void lm_head_loss_backward(const Tensor& h, const Tensor& w, const Tensor& labels,
                           double grad_scale, Tensor& dh, Tensor& dw) {
  const HeadDims d = check_head(h, w, labels);
  lm_head::check_gradients(h, w, dh, dw);
  with_float_type(h.dtype(), [&](auto zero) {
    using T = decltype(zero);
    const T* hp = h.data<T>();
    const T* wp = w.data<T>();
    const int64_t* lp = labels.data<int64_t>();
    T* dhp = dh.data<T>();
    T* dwp = dw.defined() ? dw.data<T>() : nullptr;
    std::vector<T> grad(size_t(std::min(kChunkRows, d.rows) * d.vocab));
    for (int64_t r0 = 0; r0 < d.rows; r0 += kChunkRows) {
      const int64_t n = std::min(kChunkRows, d.rows - r0);
      if (std::all_of(lp + r0, lp + r0 + n, [](int64_t l) { return l == kIgnoreIndex; })) {
        std::fill(dhp + r0 * d.dim, dhp + (r0 + n) * d.dim, T(0));
        continue;
      }
      T* g = grad.data();
      gemm<T>(false, true, n, d.vocab, d.dim, T(1), hp + r0 * d.dim, d.dim, wp, d.dim, T(0), g,
              d.vocab);
#pragma omp parallel for if (n * d.vocab >= kMinParallelWork)
      for (int64_t i = 0; i < n; ++i) {
        const int64_t label = lp[r0 + i];
        T* row = g + i * d.vocab;
        if (label == kIgnoreIndex) {
          std::fill(row, row + d.vocab, T(0));
          continue;
        }
        const double lse = logsumexp(row, d.vocab), target = row[label];
        for (int64_t v = 0; v < d.vocab; ++v)
          row[v] = T(std::exp(double(row[v]) - lse) * grad_scale);
        row[label] = T((std::exp(target - lse) - 1) * grad_scale);
      }
      gemm<T>(false, false, n, d.dim, d.vocab, T(1), g, d.vocab, wp, d.dim, T(0), dhp + r0 * d.dim,
              d.dim);
      if (dwp)
        gemm<T>(true, false, d.vocab, d.dim, n, T(1), g, d.vocab, hp + r0 * d.dim, d.dim, T(1), dwp,
                d.dim);
    }
  });
}

// The CPU computes the two passes one after the other (the chunked logits twice).
LossSum lm_head_loss_forward_backward(const Tensor& h, const Tensor& w, const Tensor& labels,
                                      double grad_scale, Tensor& dh, Tensor& dw) {
  Tensor no_logits;
  const LossSum loss = cpu::lm_head_loss_forward(h, w, labels, no_logits);
  cpu::lm_head_loss_backward(h, w, labels, grad_scale, dh, dw);
  return loss;
}

}  // namespace nh::cpu
