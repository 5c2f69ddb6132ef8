// CPU attention of one new token over its KV cache (SPEC §4): the arithmetic of
// attention_forward's row (dot products in T, softmax and the sum over keys in double), so a
// decoded token gets exactly the row the sequence op gives for it.
#include "ops/attention_decode.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "ops/cpu/parallel.h"

namespace nh::cpu {

namespace {

struct DecodeDims {
  int64_t batch, cache_len, q_heads, kv_heads, head_dim;
};

DecodeDims check_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                        const Tensor& lengths, const Tensor& out) {
  if (q.ndim() != 3) throw Error("attention_decode", "q shape", "[B, Hq, d]", shape_str(q.shape()));
  if (k_cache.ndim() != 4)
    throw Error("attention_decode", "k_cache shape", "[B, L, Hkv, d]", shape_str(k_cache.shape()));
  const DecodeDims d{q.size(0), k_cache.size(1), q.size(1), k_cache.size(2), q.size(2)};
  if (d.kv_heads < 1 || d.q_heads % d.kv_heads != 0)
    throw Error("attention_decode", "num_key_value_heads",
                "a divisor of Hq = " + std::to_string(d.q_heads), std::to_string(d.kv_heads));
  expect_shape(k_cache, {d.batch, d.cache_len, d.kv_heads, d.head_dim}, "attention_decode k_cache");
  expect_shape(v_cache, k_cache.shape(), "attention_decode v_cache");
  expect_shape(out, q.shape(), "attention_decode out");
  const std::pair<const char*, const Tensor*> floats[] = {
      {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"out", &out}};
  for (const auto& [name, t] : floats)
    if (t->dtype() != q.dtype())
      throw Error("attention_decode", std::string(name) + " dtype", dtype_name(q.dtype()),
                  dtype_name(t->dtype()));
  if (lengths.device() != Device::CPU)
    throw Error("attention_decode", "lengths", "a CPU tensor", "a CUDA tensor");
  if (lengths.dtype() != DType::I64)
    throw Error("attention_decode", "lengths dtype", "I64", dtype_name(lengths.dtype()));
  expect_shape(lengths, {d.batch}, "attention_decode lengths");
  for (int64_t b = 0; b < d.batch; ++b) {
    const int64_t n = lengths.data<int64_t>()[b];
    if (n < 1 || n > d.cache_len)
      throw Error("attention_decode", "lengths[" + std::to_string(b) + "]",
                  "1 to L = " + std::to_string(d.cache_len), std::to_string(n));
  }
  return d;
}

template <class T>
T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <class T>
void decode_impl(const T* q, const T* k, const T* v, const int64_t* lengths, double scale,
                 const DecodeDims& d, T* out) {
  const int64_t dh = d.head_dim, group = d.q_heads / d.kv_heads;
  const int64_t kv_step = d.kv_heads * dh;  // between cache positions
  int64_t work = 0;
  for (int64_t b = 0; b < d.batch; ++b) work += lengths[b] * d.q_heads * dh;
#pragma omp parallel if (work >= kMinParallelWork)
  {
    std::vector<double> scores(d.cache_len), acc(dh);
#pragma omp for
    for (int64_t bh = 0; bh < d.batch * d.q_heads; ++bh) {
      const int64_t b = bh / d.q_heads, kh = bh % d.q_heads / group, n = lengths[b];
      const T* qh = q + bh * dh;
      const T* kb = k + (b * d.cache_len * d.kv_heads + kh) * dh;
      const T* vb = v + (b * d.cache_len * d.kv_heads + kh) * dh;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        scores[j] = scale * double(dot(qh, kb + j * kv_step, dh));
        mx = std::max(mx, scores[j]);
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < n; ++j) {
        const double p = std::exp(scores[j] - mx);
        const T* vj = vb + j * kv_step;
        sum += p;
        for (int64_t e = 0; e < dh; ++e) acc[e] += p * double(vj[e]);
      }
      for (int64_t e = 0; e < dh; ++e) out[bh * dh + e] = T(acc[e] / sum);
    }
  }
}

}  // namespace

void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& lengths, double scale, Tensor& out) {
  const DecodeDims d = check_decode(q, k_cache, v_cache, lengths, out);
  with_float_type(q.dtype(), [&](auto zero) {
    using T = decltype(zero);
    decode_impl<T>(q.data<T>(), k_cache.data<T>(), v_cache.data<T>(), lengths.data<int64_t>(),
                   scale, d, out.data<T>());
  });
}

}  // namespace nh::cpu
