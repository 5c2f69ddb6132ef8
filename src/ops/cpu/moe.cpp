#include "ops/moe.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <vector>

#include "ops/cpu/gemm.h"
#include "ops/cpu/low_rank.h"
#include "ops/cpu/parallel.h"

namespace nh {

void check_experts_lora(const MoeExpertsLora& lora, const Tensor& up, bool backward) {
  const int64_t e = up.size(0), inter = up.size(1), din = up.size(2);
  auto check_pair = [&](const Tensor& a, const Tensor& b, const Tensor& da, const Tensor& db,
                        int64_t out, int64_t in, const char* name) {
    if (!a.defined() && !b.defined()) return;
    const int64_t r = a.defined() && a.ndim() == 3 ? a.size(1) : -1;
    if (r < 1 || a.shape() != Shape{e, r, in} || !b.defined() || b.shape() != Shape{e, out, r})
      throw Error("moe experts lora", name,
                  "a [E, r, " + std::to_string(in) + "] and b [E, " + std::to_string(out) +
                      ", r] with E = " + std::to_string(e),
                  "a " + shape_str(a.shape()) + ", b " + shape_str(b.shape()));
    for (const Tensor* t : {&a, &b, &da, &db})
      if (t->defined() && (t->dtype() != up.dtype() || t->device() != up.device()))
        throw Error("moe experts lora", name, std::string("the experts' dtype and device"),
                    std::string(dtype_name(t->dtype())) +
                        (t->device() == up.device() ? "" : " on another device"));
    if (backward && (!da.defined() || !db.defined()))
      throw Error("moe experts lora", std::string(name) + " gradients", "defined", "undefined");
    if ((da.defined() && da.shape() != a.shape()) || (db.defined() && db.shape() != b.shape()))
      throw Error("moe experts lora", std::string(name) + " gradients", "the factors' shapes",
                  shape_str(da.shape()) + ", " + shape_str(db.shape()));
  };
  check_pair(lora.up_a, lora.up_b, lora.dup_a, lora.dup_b, inter, din, "up");
  check_pair(lora.down_a, lora.down_b, lora.ddown_a, lora.ddown_b, din, inter, "down");
}

}  // namespace nh

namespace nh::cpu {

namespace {

void expect_dtype(const Tensor& t, DType dtype, const std::string& what) {
  if (t.dtype() != dtype) throw Error(what, "dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

// Sorts candidates best first: the larger value, then the lower index (the tie rule).
template <class T>
struct BestFirst {
  const T* value;
  bool operator()(int64_t a, int64_t b) const {
    return value[a] > value[b] || (value[a] == value[b] && a < b);
  }
};

// Picks the experts of one token. choice [E] is s + bias; writes top_k ids into idx, best first.
// group_score, group_order [n_group] and order [E] are scratch.
template <class T>
void select_experts(const T* choice, int64_t n_experts, const MoeRouteConfig& cfg, T* group_score,
                    int64_t* group_order, int64_t* order, int64_t* idx) {
  const int64_t group_size = n_experts / cfg.n_group;
  for (int64_t g = 0; g < cfg.n_group; ++g) {
    T first = -std::numeric_limits<T>::infinity(), second = first;
    for (int64_t e = g * group_size; e < (g + 1) * group_size; ++e) {
      if (choice[e] > first) {
        second = first;
        first = choice[e];
      } else if (choice[e] > second) {
        second = choice[e];
      }
    }
    group_score[g] = first + second;
  }
  std::iota(group_order, group_order + cfg.n_group, int64_t(0));
  std::partial_sort(group_order, group_order + cfg.topk_group, group_order + cfg.n_group,
                    BestFirst<T>{group_score});
  // Experts of the kept groups; the reference masks the others to -inf, and top_k never exceeds
  // the kept experts (moe_check_route_config), so choosing among these is the same.
  int64_t n = 0;
  for (int64_t i = 0; i < cfg.topk_group; ++i)
    for (int64_t e = group_order[i] * group_size; e < (group_order[i] + 1) * group_size; ++e)
      order[n++] = e;
  std::partial_sort(order, order + cfg.top_k, order + n, BestFirst<T>{choice});
  std::copy(order, order + cfg.top_k, idx);
}

template <class T>
void route_forward(const T* u, const T* gate_w, const std::vector<T>& bias, int64_t n_tokens,
                   int64_t dim, int64_t n_experts, const MoeRouteConfig& cfg, int64_t* topk_idx,
                   T* topk_w, T* scores) {
  gemm<T>(false, true, n_tokens, n_experts, dim, T(1), u, dim, gate_w, dim, T(0), scores,
          n_experts);
  const int64_t k = cfg.top_k;
#pragma omp parallel if (n_tokens * n_experts >= kMinParallelWork)
  {
    std::vector<T> choice(n_experts), group_score(cfg.n_group);
    std::vector<int64_t> group_order(cfg.n_group), order(n_experts);
#pragma omp for
    for (int64_t t = 0; t < n_tokens; ++t) {
      T* s = scores + t * n_experts;
      for (int64_t e = 0; e < n_experts; ++e) {
        s[e] = T(1) / (T(1) + std::exp(-s[e]));
        choice[e] = s[e] + bias[e];
      }
      int64_t* idx = topk_idx + t * k;
      select_experts(choice.data(), n_experts, cfg, group_score.data(), group_order.data(),
                     order.data(), idx);
      T* w = topk_w + t * k;
      for (int64_t j = 0; j < k; ++j) w[j] = s[idx[j]];
      if (cfg.norm_topk_prob) {
        T sum = 0;
        for (int64_t j = 0; j < k; ++j) sum += w[j];
        sum += T(1e-20);
        for (int64_t j = 0; j < k; ++j) w[j] /= sum;
      }
      for (int64_t j = 0; j < k; ++j) w[j] *= T(cfg.routed_scaling_factor);
    }
  }
}

template <class T>
void route_backward(const T* u, const T* gate_w, const int64_t* topk_idx, const T* scores,
                    const T* dtopk_w, int64_t n_tokens, int64_t dim, int64_t n_experts,
                    const MoeRouteConfig& cfg, T* du, T* dgate_w) {
  const int64_t k = cfg.top_k;
  const double scale = cfg.routed_scaling_factor;
  // dlogits is zero at the experts a token did not choose: the selection passes no gradient.
  std::vector<T> dlogits(size_t(n_tokens * n_experts), T(0));
#pragma omp parallel for if (n_tokens * n_experts >= kMinParallelWork)
  for (int64_t t = 0; t < n_tokens; ++t) {
    const int64_t* idx = topk_idx + t * k;
    const T* s = scores + t * n_experts;
    const T* g = dtopk_w + t * k;
    // w_j = c·s_j / S with S = Σ s + 1e-20, so dL/ds_j = c·(g_j / S − Σ_i g_i s_i / S²).
    double sum = 1e-20, gs = 0;
    for (int64_t j = 0; j < k; ++j) {
      sum += s[idx[j]];
      gs += double(g[j]) * s[idx[j]];
    }
    for (int64_t j = 0; j < k; ++j) {
      const double sj = s[idx[j]];
      const double ds = cfg.norm_topk_prob ? scale * (g[j] / sum - gs / (sum * sum)) : scale * g[j];
      dlogits[t * n_experts + idx[j]] += T(ds * sj * (1 - sj));
    }
  }
  gemm<T>(false, false, n_tokens, dim, n_experts, T(1), dlogits.data(), n_experts, gate_w, dim,
          T(1), du, dim);
  gemm<T>(true, false, n_experts, dim, n_tokens, T(1), dlogits.data(), n_experts, u, dim, T(1),
          dgate_w, dim);
}

void check_topk(const Tensor& topk_idx, const Tensor& topk_w, int64_t n_tokens, DType dtype) {
  expect_dtype(topk_idx, DType::I64, "moe topk_idx");
  if (topk_idx.ndim() != 2 || topk_idx.size(0) != n_tokens)
    throw Error("moe topk_idx", "shape", "[T = " + std::to_string(n_tokens) + ", k]",
                shape_str(topk_idx.shape()));
  expect_shape(topk_w, topk_idx.shape(), "moe topk_w");
  expect_dtype(topk_w, dtype, "moe topk_w");
}

struct ExpertsShape {
  int64_t n_tokens, dim, n_experts, inter, k;
};

ExpertsShape check_experts(const Tensor& h, const Tensor& up, const Tensor& down,
                           const Tensor& topk_idx, const Tensor& topk_w) {
  if (h.ndim() != 2 || up.ndim() != 3 || up.size(2) != h.size(1))
    throw Error("moe experts", "shapes", "h [T, Din] and up [E, I, Din]",
                "h " + shape_str(h.shape()) + ", up " + shape_str(up.shape()));
  const ExpertsShape s{h.size(0), h.size(1), up.size(0), up.size(1), topk_idx.size(-1)};
  expect_shape(down, {s.n_experts, s.dim, s.inter}, "moe experts down");
  expect_dtype(up, h.dtype(), "moe experts up");
  expect_dtype(down, h.dtype(), "moe experts down");
  check_topk(topk_idx, topk_w, s.n_tokens, h.dtype());
  return s;
}

// Groups the topk entries by expert (counting sort, stable so tokens stay in order); entries of
// expert -1 (another rank's) come last, after offsets[E], and are not computed.
void build_permutation(const int64_t* topk_idx, int64_t n_entries, int64_t n_experts,
                       int64_t* offsets, int64_t* row_source, int64_t* row_of) {
  std::fill(offsets, offsets + n_experts + 1, int64_t(0));
  for (int64_t i = 0; i < n_entries; ++i) {
    const int64_t e = topk_idx[i];
    if (e < -1 || e >= n_experts)
      throw Error("moe topk_idx", "expert id",
                  "in [0, " + std::to_string(n_experts) + ") or -1 (not here)", std::to_string(e));
    if (e >= 0) ++offsets[e + 1];
  }
  std::partial_sum(offsets, offsets + n_experts + 1, offsets);
  std::vector<int64_t> next(offsets, offsets + n_experts + 1);
  for (int64_t i = 0; i < n_entries; ++i) {
    const int64_t e = topk_idx[i];
    const int64_t r = next[e < 0 ? n_experts : e]++;
    row_source[r] = i;
    row_of[i] = r;
  }
}

// rows[r] = src[row_source[r] / k], the input row of each routed row.
template <class T>
void gather_rows(const T* src, const int64_t* row_source, int64_t n_rows, int64_t k, int64_t dim,
                 T* rows) {
#pragma omp parallel for if (n_rows * dim >= kMinParallelWork)
  for (int64_t r = 0; r < n_rows; ++r)
    std::copy_n(src + (row_source[r] / k) * dim, dim, rows + r * dim);
}

template <class T>
void relu2(const T* pre, int64_t n, T* act) {
#pragma omp parallel for if (n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) act[i] = pre[i] > T(0) ? pre[i] * pre[i] : T(0);
}

// The LoRA factors of moe_experts_forward/backward as pointers (null where a pair is absent).
template <class T>
struct ExpertsLora {
  const T *up_a = nullptr, *up_b = nullptr, *down_a = nullptr, *down_b = nullptr;
  T *dup_a = nullptr, *dup_b = nullptr, *ddown_a = nullptr, *ddown_b = nullptr;
  int64_t r_up = 0, r_down = 0;
  T scale = T(1);
};

template <class T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}
template <class T>
T* mutable_or_null(const Tensor& t) {
  return t.defined() ? const_cast<T*>(t.data<T>()) : nullptr;
}

template <class T>
ExpertsLora<T> lora_pointers(const MoeExpertsLora& l, bool grads) {
  ExpertsLora<T> p;
  p.up_a = data_or_null<T>(l.up_a);
  p.up_b = data_or_null<T>(l.up_b);
  p.down_a = data_or_null<T>(l.down_a);
  p.down_b = data_or_null<T>(l.down_b);
  p.r_up = l.up_a.defined() ? l.up_a.size(1) : 0;
  p.r_down = l.down_a.defined() ? l.down_a.size(1) : 0;
  p.scale = T(l.scale);
  if (grads) {
    p.dup_a = mutable_or_null<T>(l.dup_a);
    p.dup_b = mutable_or_null<T>(l.dup_b);
    p.ddown_a = mutable_or_null<T>(l.ddown_a);
    p.ddown_b = mutable_or_null<T>(l.ddown_b);
  }
  return p;
}

template <class T>
void experts_forward(const T* h, const T* up, const T* down, const T* topk_w, const ExpertsShape& s,
                     const int64_t* offsets, const int64_t* row_source, const int64_t* row_of,
                     const ExpertsLora<T>& lora, T* out, T* pre) {
  const int64_t n_rows = offsets[s.n_experts];  // the entries routed to an expert here
  std::vector<T> rows(size_t(n_rows * s.dim)), act(size_t(n_rows * s.inter));
  std::vector<T> xa(size_t(n_rows * std::max(lora.r_up, lora.r_down)));
  gather_rows(h, row_source, n_rows, s.k, s.dim, rows.data());
  for (int64_t e = 0; e < s.n_experts; ++e) {
    const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    gemm<T>(false, true, m, s.inter, s.dim, T(1), rows.data() + r0 * s.dim, s.dim,
            up + e * s.inter * s.dim, s.dim, T(0), pre + r0 * s.inter, s.inter);
    if (lora.up_a)
      add_low_rank(rows.data() + r0 * s.dim, lora.up_a + e * lora.r_up * s.dim,
                   lora.up_b + e * s.inter * lora.r_up, lora.scale, m, s.inter, s.dim, lora.r_up,
                   xa.data(), pre + r0 * s.inter);
  }
  relu2(pre, n_rows * s.inter, act.data());
  // The expert outputs reuse the gathered input rows: both are [rows, Din].
  for (int64_t e = 0; e < s.n_experts; ++e) {
    const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    gemm<T>(false, true, m, s.dim, s.inter, T(1), act.data() + r0 * s.inter, s.inter,
            down + e * s.dim * s.inter, s.inter, T(0), rows.data() + r0 * s.dim, s.dim);
    if (lora.down_a)
      add_low_rank(act.data() + r0 * s.inter, lora.down_a + e * lora.r_down * s.inter,
                   lora.down_b + e * s.dim * lora.r_down, lora.scale, m, s.dim, s.inter,
                   lora.r_down, xa.data(), rows.data() + r0 * s.dim);
  }
#pragma omp parallel for if (s.n_tokens * s.dim >= kMinParallelWork)
  for (int64_t t = 0; t < s.n_tokens; ++t) {
    T* o = out + t * s.dim;
    std::fill_n(o, s.dim, T(0));
    for (int64_t j = 0; j < s.k; ++j) {
      const int64_t r = row_of[t * s.k + j];
      if (r >= n_rows) continue;  // another rank's expert
      const T w = topk_w[t * s.k + j];
      const T* y = rows.data() + r * s.dim;
      for (int64_t d = 0; d < s.dim; ++d) o[d] += w * y[d];
    }
  }
}

template <class T>
void experts_backward(const T* h, const T* up, const T* down, const T* topk_w,
                      const ExpertsShape& s, const int64_t* offsets, const int64_t* row_source,
                      const int64_t* row_of, const T* pre, const T* dout,
                      const ExpertsLora<T>& lora, T* dh, T* dup, T* ddown, T* dtopk_w) {
  const int64_t n_rows = offsets[s.n_experts];   // the entries routed to an expert here
  std::fill_n(dtopk_w, s.n_tokens * s.k, T(0));  // other ranks' entries stay 0
  std::vector<T> rows(size_t(n_rows * s.dim)), drows(size_t(n_rows * s.dim));
  std::vector<T> act(size_t(n_rows * s.inter)), dact(size_t(n_rows * s.inter));
  // LoRA scratch: [m, r] products of one expert.
  const int64_t r_max = std::max(lora.r_up, lora.r_down);
  std::vector<T> xa(size_t(n_rows * r_max)), g(size_t(n_rows * r_max));
  gather_rows(h, row_source, n_rows, s.k, s.dim, rows.data());
  gather_rows(dout, row_source, n_rows, s.k, s.dim, drows.data());
  relu2(pre, n_rows * s.inter, act.data());
  // dact = dout · (down[e] + s · down_b[e] · down_a[e]), before the routing weight.
  for (int64_t e = 0; e < s.n_experts; ++e) {
    const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    gemm<T>(false, false, m, s.inter, s.dim, T(1), drows.data() + r0 * s.dim, s.dim,
            down + e * s.dim * s.inter, s.inter, T(0), dact.data() + r0 * s.inter, s.inter);
    if (!lora.down_a) continue;
    gemm<T>(false, false, m, lora.r_down, s.dim, T(1), drows.data() + r0 * s.dim, s.dim,
            lora.down_b + e * s.dim * lora.r_down, lora.r_down, T(0), g.data(), lora.r_down);
    gemm<T>(false, false, m, s.inter, lora.r_down, lora.scale, g.data(), lora.r_down,
            lora.down_a + e * lora.r_down * s.inter, s.inter, T(1), dact.data() + r0 * s.inter,
            s.inter);
  }
  // dtopk_w = dout · (down[e] · act) = dact · act. Then act becomes w·act (for ddown) and dact
  // becomes the gradient of the pre-activation, w·dact·2·relu(pre) (for dup and dh).
#pragma omp parallel for if (n_rows * s.inter >= kMinParallelWork)
  for (int64_t r = 0; r < n_rows; ++r) {
    T* a = act.data() + r * s.inter;
    T* gr = dact.data() + r * s.inter;
    const T* p = pre + r * s.inter;
    const T w = topk_w[row_source[r]];
    double dw = 0;
    for (int64_t i = 0; i < s.inter; ++i) {
      dw += double(gr[i]) * a[i];
      a[i] *= w;
      gr[i] = p[i] > T(0) ? w * gr[i] * T(2) * p[i] : T(0);
    }
    dtopk_w[row_source[r]] = T(dw);
  }
  for (int64_t e = 0; e < s.n_experts; ++e) {
    const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    if (m == 0) continue;
    const T* x_e = rows.data() + r0 * s.dim;
    const T* wact_e = act.data() + r0 * s.inter;
    const T* dpre_e = dact.data() + r0 * s.inter;
    T* drows_e = drows.data() + r0 * s.dim;
    if (ddown)
      gemm<T>(true, false, s.dim, s.inter, m, T(1), drows_e, s.dim, wact_e, s.inter, T(1),
              ddown + e * s.dim * s.inter, s.inter);
    if (lora.down_a) {
      const int64_t r = lora.r_down;
      low_rank_grads(wact_e, lora.down_a + e * r * s.inter, lora.down_b + e * s.dim * r, drows_e,
                     lora.scale, m, s.dim, s.inter, r, xa.data(), g.data(),
                     lora.ddown_a + e * r * s.inter, lora.ddown_b + e * s.dim * r);
    }
    if (dup)
      gemm<T>(true, false, s.inter, s.dim, m, T(1), dpre_e, s.inter, x_e, s.dim, T(1),
              dup + e * s.inter * s.dim, s.dim);
    // drows is free once the down gradients are done: it now takes each routed row's input
    // gradient.
    gemm<T>(false, false, m, s.dim, s.inter, T(1), dpre_e, s.inter, up + e * s.inter * s.dim,
            s.dim, T(0), drows_e, s.dim);
    if (lora.up_a) {
      const int64_t r = lora.r_up;
      const T* a = lora.up_a + e * r * s.dim;
      low_rank_grads(x_e, a, lora.up_b + e * s.inter * r, dpre_e, lora.scale, m, s.inter, s.dim,
                     r, xa.data(), g.data(), lora.dup_a + e * r * s.dim,
                     lora.dup_b + e * s.inter * r);
      gemm<T>(false, false, m, s.dim, r, lora.scale, g.data(), r, a, s.dim, T(1), drows_e, s.dim);
    }
  }
#pragma omp parallel for if (s.n_tokens * s.dim >= kMinParallelWork)
  for (int64_t t = 0; t < s.n_tokens; ++t) {
    T* gr = dh + t * s.dim;
    std::fill_n(gr, s.dim, T(0));
    for (int64_t j = 0; j < s.k; ++j) {
      const int64_t r = row_of[t * s.k + j];
      if (r >= n_rows) continue;
      const T* y = drows.data() + r * s.dim;
      for (int64_t d = 0; d < s.dim; ++d) gr[d] += y[d];
    }
  }
}

}  // namespace

void moe_route_forward(const Tensor& u, const Tensor& gate_w, const Tensor& correction_bias,
                       const MoeRouteConfig& cfg, Tensor& topk_idx, Tensor& topk_w,
                       Tensor& scores) {
  if (u.ndim() != 2 || gate_w.ndim() != 2 || gate_w.size(1) != u.size(1))
    throw Error("moe router", "shapes", "u [T, D] and gate_w [E, D]",
                "u " + shape_str(u.shape()) + ", gate_w " + shape_str(gate_w.shape()));
  const int64_t n_tokens = u.size(0), dim = u.size(1), n_experts = gate_w.size(0);
  moe_check_route_config(cfg, n_experts);
  expect_dtype(gate_w, u.dtype(), "moe router gate_w");
  expect_shape(correction_bias, {n_experts}, "moe router correction_bias");
  if (correction_bias.dtype() != DType::F32) expect_dtype(correction_bias, u.dtype(), "moe bias");
  expect_shape(topk_idx, {n_tokens, cfg.top_k}, "moe router topk_idx");
  check_topk(topk_idx, topk_w, n_tokens, u.dtype());
  expect_shape(scores, {n_tokens, n_experts}, "moe router scores");
  expect_dtype(scores, u.dtype(), "moe router scores");
  with_float_type(u.dtype(), [&](auto zero) {
    using T = decltype(zero);
    std::vector<T> bias(n_experts);
    for (int64_t e = 0; e < n_experts; ++e) bias[e] = T(read_float(correction_bias, e));
    route_forward<T>(u.data<T>(), gate_w.data<T>(), bias, n_tokens, dim, n_experts, cfg,
                     topk_idx.data<int64_t>(), topk_w.data<T>(), scores.data<T>());
  });
}

void moe_route_backward(const Tensor& u, const Tensor& gate_w, const Tensor& topk_idx,
                        const Tensor& scores, const MoeRouteConfig& cfg, const Tensor& dtopk_w,
                        Tensor& du, Tensor& dgate_w) {
  if (u.ndim() != 2 || gate_w.ndim() != 2 || gate_w.size(1) != u.size(1))
    throw Error("moe router", "shapes", "u [T, D] and gate_w [E, D]",
                "u " + shape_str(u.shape()) + ", gate_w " + shape_str(gate_w.shape()));
  const int64_t n_tokens = u.size(0), dim = u.size(1), n_experts = gate_w.size(0);
  moe_check_route_config(cfg, n_experts);
  expect_shape(topk_idx, {n_tokens, cfg.top_k}, "moe router topk_idx");
  check_topk(topk_idx, dtopk_w, n_tokens, u.dtype());
  expect_shape(scores, {n_tokens, n_experts}, "moe router scores");
  expect_shape(du, u.shape(), "moe router du");
  expect_shape(dgate_w, gate_w.shape(), "moe router dgate_w");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&gate_w, &scores, &du, &dgate_w})
    expect_dtype(*t, u.dtype(), "moe router backward");
  const int64_t* idx = topk_idx.data<int64_t>();
  for (int64_t i = 0; i < topk_idx.numel(); ++i)
    if (idx[i] < 0 || idx[i] >= n_experts)
      throw Error("moe topk_idx", "expert id", "in [0, " + std::to_string(n_experts) + ")",
                  std::to_string(idx[i]));
  with_float_type(u.dtype(), [&](auto zero) {
    using T = decltype(zero);
    route_backward<T>(u.data<T>(), gate_w.data<T>(), idx, scores.data<T>(), dtopk_w.data<T>(),
                      n_tokens, dim, n_experts, cfg, du.data<T>(), dgate_w.data<T>());
  });
}

void moe_experts_forward(const Tensor& h, const Tensor& up, const Tensor& down,
                         const Tensor& topk_idx, const Tensor& topk_w, Tensor& out,
                         MoeExpertsCache& cache, const MoeExpertsLora& lora) {
  const ExpertsShape s = check_experts(h, up, down, topk_idx, topk_w);
  check_experts_lora(lora, up, false);
  expect_shape(out, h.shape(), "moe experts out");
  expect_dtype(out, h.dtype(), "moe experts out");
  const int64_t n_rows = s.n_tokens * s.k;
  cache.expert_offsets = Tensor::empty({s.n_experts + 1}, DType::I64);
  cache.row_source = Tensor::empty({n_rows}, DType::I64);
  cache.row_of = Tensor::empty({n_rows}, DType::I64);
  cache.pre = Tensor::empty({n_rows, s.inter}, h.dtype());
  build_permutation(topk_idx.data<int64_t>(), n_rows, s.n_experts,
                    cache.expert_offsets.data<int64_t>(), cache.row_source.data<int64_t>(),
                    cache.row_of.data<int64_t>());
  with_float_type(h.dtype(), [&](auto zero) {
    using T = decltype(zero);
    experts_forward<T>(h.data<T>(), up.data<T>(), down.data<T>(), topk_w.data<T>(), s,
                       cache.expert_offsets.data<int64_t>(), cache.row_source.data<int64_t>(),
                       cache.row_of.data<int64_t>(), lora_pointers<T>(lora, false), out.data<T>(),
                       cache.pre.data<T>());
  });
}

void moe_experts_backward(const Tensor& h, const Tensor& up, const Tensor& down,
                          const Tensor& topk_idx, const Tensor& topk_w,
                          const MoeExpertsCache& cache, const Tensor& dout, Tensor& dh, Tensor& dup,
                          Tensor& ddown, Tensor& dtopk_w, const MoeExpertsLora& lora) {
  const ExpertsShape s = check_experts(h, up, down, topk_idx, topk_w);
  check_experts_lora(lora, up, true);
  const int64_t n_rows = s.n_tokens * s.k;
  expect_shape(cache.expert_offsets, {s.n_experts + 1}, "moe experts cache offsets");
  expect_shape(cache.row_source, {n_rows}, "moe experts cache row_source");
  expect_shape(cache.row_of, {n_rows}, "moe experts cache row_of");
  expect_shape(cache.pre, {n_rows, s.inter}, "moe experts cache pre");
  expect_shape(dout, h.shape(), "moe experts dout");
  expect_shape(dh, h.shape(), "moe experts dh");
  if (dup.defined()) expect_shape(dup, up.shape(), "moe experts dup");
  if (ddown.defined()) expect_shape(ddown, down.shape(), "moe experts ddown");
  expect_shape(dtopk_w, topk_w.shape(), "moe experts dtopk_w");
  for (const Tensor* t :
       std::initializer_list<const Tensor*>{&cache.pre, &dout, &dh, &dup, &ddown, &dtopk_w})
    if (t->defined()) expect_dtype(*t, h.dtype(), "moe experts backward");
  with_float_type(h.dtype(), [&](auto zero) {
    using T = decltype(zero);
    experts_backward<T>(h.data<T>(), up.data<T>(), down.data<T>(), topk_w.data<T>(), s,
                        cache.expert_offsets.data<int64_t>(), cache.row_source.data<int64_t>(),
                        cache.row_of.data<int64_t>(), cache.pre.data<T>(), dout.data<T>(),
                        lora_pointers<T>(lora, true), dh.data<T>(), mutable_or_null<T>(dup),
                        mutable_or_null<T>(ddown), dtopk_w.data<T>());
  });
}

void moe_expert_load(const Tensor& topk_idx, Tensor& load) {
  expect_dtype(topk_idx, DType::I64, "moe topk_idx");
  expect_dtype(load, DType::I64, "moe expert load");
  if (load.ndim() != 1) throw Error("moe expert load", "shape", "[E]", shape_str(load.shape()));
  const int64_t n_experts = load.size(0);
  int64_t* count = load.data<int64_t>();
  std::fill_n(count, n_experts, int64_t(0));
  const int64_t* idx = topk_idx.data<int64_t>();
  for (int64_t i = 0; i < topk_idx.numel(); ++i) {
    if (idx[i] < 0 || idx[i] >= n_experts)
      throw Error("moe topk_idx", "expert id", "in [0, " + std::to_string(n_experts) + ")",
                  std::to_string(idx[i]));
    ++count[idx[i]];
  }
}

void moe_update_correction_bias(Tensor& correction_bias, const Tensor& expert_load, double rate) {
  if (correction_bias.ndim() != 1)
    throw Error("moe correction_bias", "shape", "[E]", shape_str(correction_bias.shape()));
  expect_shape(expert_load, correction_bias.shape(), "moe expert load");
  expect_dtype(expert_load, DType::I64, "moe expert load");
  const int64_t n_experts = correction_bias.size(0);
  const int64_t* load = expert_load.data<int64_t>();
  const double mean = double(std::accumulate(load, load + n_experts, int64_t(0))) / n_experts;
  with_float_type(correction_bias.dtype(), [&](auto zero) {
    using T = decltype(zero);
    T* bias = correction_bias.data<T>();
    for (int64_t e = 0; e < n_experts; ++e) {
      const double gap = mean - double(load[e]);
      bias[e] += T(rate * double((gap > 0) - (gap < 0)));
    }
  });
}

}  // namespace nh::cpu
