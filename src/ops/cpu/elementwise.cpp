#include "ops/elementwise.h"

#include <cstring>
#include "ops/cpu/parallel.h"

namespace nh::cpu {

namespace {
// (rows, columns) of a tensor seen as a matrix over its last dimension.
std::pair<int64_t, int64_t> as_matrix(const Tensor& t) {
  const int64_t c = t.ndim() ? t.size(-1) : 1;
  return {c ? t.numel() / c : 0, c};
}

void check_columns(const Tensor& wide, const Tensor& narrow, int64_t begin, const char* op) {
  const auto [r, c] = as_matrix(wide);
  const auto [nr, w] = as_matrix(narrow);
  if (nr != r || begin < 0 || begin + w > c || wide.dtype() != narrow.dtype())
    throw Error(op, "shapes", "[R, C] and [R, w] with begin + w <= C",
                shape_str(wide.shape()) + ", " + shape_str(narrow.shape()) + ", begin " +
                    std::to_string(begin));
}
}  // namespace

void add_inplace(Tensor& a, const Tensor& b) {
  NH_CHECK(a.numel() == b.numel(), "add_inplace: sizes differ");
  with_float_type(a.dtype(), [&](auto zero) {
    using T = decltype(zero);
    T* pa = a.data<T>();
    const T* pb = b.data<T>();
    const int64_t n = a.numel();
#pragma omp parallel for if (n >= kMinParallelWork)
    for (int64_t i = 0; i < n; ++i) pa[i] += pb[i];
  });
}

void copy_columns(const Tensor& src, int64_t begin, Tensor& dst) {
  check_columns(src, dst, begin, "copy_columns");
  const auto [r, c] = as_matrix(src);
  const int64_t w = dst.size(-1);
  const size_t es = dtype_size(src.dtype());
  const char* s = static_cast<const char*>(src.raw());
  char* d = static_cast<char*>(dst.raw());
  for (int64_t i = 0; i < r; ++i) std::memcpy(d + i * w * es, s + (i * c + begin) * es, w * es);
}

void write_columns(const Tensor& src, Tensor& dst, int64_t begin) {
  check_columns(dst, src, begin, "write_columns");
  const auto [r, c] = as_matrix(dst);
  const int64_t w = src.size(-1);
  const size_t es = dtype_size(src.dtype());
  const char* s = static_cast<const char*>(src.raw());
  char* d = static_cast<char*>(dst.raw());
  for (int64_t i = 0; i < r; ++i) std::memcpy(d + (i * c + begin) * es, s + i * w * es, w * es);
}

}  // namespace nh::cpu
