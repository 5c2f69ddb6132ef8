// The dot product the CPU attention and scan ops share: summed in T, in index order, so a
// decoded token's score is bit for bit the sequence op's.
#pragma once

#include <cstdint>

namespace nh::cpu {

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace nh::cpu
