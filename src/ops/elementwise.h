// Small elementwise and layout ops the model composes (any float dtype the backend runs).
//   add_inplace:   a += b (same number of elements) — residual adds, gradient sums
//   copy_columns:  dst [R, w] = src[:, begin : begin + w], src [R, C] — splitting a projection
//   write_columns: dst[:, begin : begin + w] = src [R, w] — joining gradients of a split
#pragma once

#include "ops/dispatch.h"

namespace nh {
namespace cpu {
void add_inplace(Tensor& a, const Tensor& b);
void copy_columns(const Tensor& src, int64_t begin, Tensor& dst);
void write_columns(const Tensor& src, Tensor& dst, int64_t begin);
}  // namespace cpu
namespace cuda {
void add_inplace(Tensor& a, const Tensor& b);
void copy_columns(const Tensor& src, int64_t begin, Tensor& dst);
void write_columns(const Tensor& src, Tensor& dst, int64_t begin);
}  // namespace cuda

inline void add_inplace(Tensor& a, const Tensor& b) { NH_DISPATCH(a.device(), add_inplace(a, b)); }
inline void copy_columns(const Tensor& src, int64_t begin, Tensor& dst) {
  NH_DISPATCH(src.device(), copy_columns(src, begin, dst));
}
inline void write_columns(const Tensor& src, Tensor& dst, int64_t begin) {
  NH_DISPATCH(src.device(), write_columns(src, dst, begin));
}

}  // namespace nh
