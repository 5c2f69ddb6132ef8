#include "ops/adamw.h"

#include <cmath>

#include "ops/cpu/parallel.h"

namespace nh::cpu {

void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWStep& s,
                Tensor* copy) {
  const int64_t n = param.numel();
  if (grad.numel() != n || m.numel() != n || v.numel() != n || m.dtype() != param.dtype() ||
      v.dtype() != param.dtype())
    throw Error("adamw", "shapes", "param, grad, m and v of one size and m, v of param's dtype",
                shape_str(param.shape()) + ", " + shape_str(grad.shape()));
  const double c1 = 1 - std::pow(s.beta1, double(s.step)),
               c2 = 1 - std::pow(s.beta2, double(s.step));
  with_float_type(param.dtype(), [&](auto zero) {
    using T = decltype(zero);
    T* w = param.data<T>();
    T* pm = m.data<T>();
    T* pv = v.data<T>();
    with_float_type(grad.dtype(), [&](auto gzero) {
      using G = decltype(gzero);
      const G* g = grad.data<G>();
#pragma omp parallel for if (n >= kMinParallelWork)
      for (int64_t i = 0; i < n; ++i) {
        const double gi = double(g[i]) * s.grad_scale;
        const double mi = s.beta1 * double(pm[i]) + (1 - s.beta1) * gi;
        const double vi = s.beta2 * double(pv[i]) + (1 - s.beta2) * gi * gi;
        pm[i] = T(mi);
        pv[i] = T(vi);
        const double update = (mi / c1) / (std::sqrt(vi / c2) + s.eps) + s.weight_decay * double(w[i]);
        w[i] = T(double(w[i]) - s.lr * update);
      }
    });
  });
  if (copy != nullptr) copy->copy_from(param);
}

std::vector<double> sums_of_squares(const std::vector<Tensor>& ts) {
  std::vector<double> totals;
  for (const Tensor& t : ts) {
    double total = 0;
    with_float_type(t.dtype(), [&](auto zero) {
      using T = decltype(zero);
      const T* p = t.data<T>();
      for (int64_t i = 0; i < t.numel(); ++i) total += double(p[i]) * double(p[i]);
    });
    totals.push_back(total);
  }
  return totals;
}

}  // namespace nh::cpu
