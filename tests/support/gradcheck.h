// Helpers for op tests: random inputs and central-difference gradient checks
// in double precision.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>

#include "core/rng.h"
#include "core/tensor.h"

namespace nh::test {

// N(mean, scale²) entries, never all equal (so no test passes on zeros).
inline Tensor random_tensor(const Shape& shape, uint64_t seed, double scale = 1.0,
                            DType dtype = DType::F64, double mean = 0.0) {
  Rng rng(seed);
  Tensor t = Tensor::empty(shape, DType::F64);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = mean + scale * rng.normal();
  return dtype == DType::F64 ? t : t.to(dtype);
}

inline double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += read_float(a, i) * read_float(b, i);
  return s;
}

// Compares analytic[i] with (loss(x+eps) - loss(x-eps)) / 2eps for every
// element of `input` (an F64 tensor the loss reads). The error allowed is
// tol * (1 + |numeric|): central differences in double have truncation error
// O(eps²) and rounding error O(1e-16/eps), both far below tol = 1e-6.
inline void expect_grad_close(const std::string& name, Tensor& input, const Tensor& analytic,
                              const std::function<double()>& loss, double eps = 1e-5,
                              double tol = 1e-6) {
  ASSERT_EQ(input.shape(), analytic.shape()) << name;
  double* x = input.data<double>();
  int bad = 0;
  for (int64_t i = 0; i < input.numel(); ++i) {
    const double keep = x[i];
    x[i] = keep + eps;
    const double up = loss();
    x[i] = keep - eps;
    const double down = loss();
    x[i] = keep;
    const double numeric = (up - down) / (2 * eps);
    const double got = read_float(analytic, i);
    if (std::fabs(got - numeric) > tol * (1 + std::fabs(numeric)) && bad++ < 5)
      ADD_FAILURE() << name << "[" << i << "]: analytic " << got << ", numeric " << numeric;
  }
  EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << input.numel() << " elements differ";
}

}  // namespace nh::test
