// CPU paged attention decoding (SPEC §4) with the arithmetic of attention_forward's row: dot
// products in T, the softmax and the sum over positions in double, so a decoded token gets the
// row the sequence op gives for it. Also the shape checks both backends share.
#include "ops/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "ops/cpu/dot.h"
#include "ops/cpu/parallel.h"

namespace nh {

namespace {

void check_device(const char* op, const Tensor& t, Device device, const std::string& name) {
  if (t.device() != device)
    throw Error(op, name + " device", device_name(device), device_name(t.device()));
}

void check_dtype(const char* op, const Tensor& t, DType dtype, const std::string& name) {
  if (t.dtype() != dtype)
    throw Error(op, name + " dtype", dtype_name(dtype), dtype_name(t.dtype()));
}

// An I32 [n] index vector (n < 0: any length) on `device`.
void check_index(const char* op, const Tensor& t, int64_t n, Device device,
                 const std::string& name) {
  check_device(op, t, device, name);
  check_dtype(op, t, DType::I32, name);
  if (t.ndim() != (n < 0 ? 2 : 1) || (n >= 0 && t.size(0) != n))
    throw Error(op, name + " shape", n < 0 ? "[R, max_pages]" : "[" + std::to_string(n) + "]",
                shape_str(t.shape()));
}

// pages [NP, page_size, Hkv, d] holding heads of `heads` x `head_dim`.
void check_pages(const char* op, const Tensor& pages, int64_t heads, int64_t head_dim,
                 const std::string& name) {
  if (pages.ndim() != 4 || pages.size(1) < 1 || pages.size(2) != heads || pages.size(3) != head_dim)
    throw Error(
        op, name + " shape",
        "[NP, page_size >= 1, " + std::to_string(heads) + ", " + std::to_string(head_dim) + "]",
        shape_str(pages.shape()));
}

}  // namespace

PagedKvShape check_paged_attention_decode(const Tensor& q, const Tensor& k_pages,
                                          const Tensor& v_pages, const Tensor& block_table,
                                          const Tensor& rows, const Tensor& lengths,
                                          const Tensor& out) {
  const char* op = "paged_attention_decode";
  if (q.ndim() != 3) throw Error(op, "q shape", "[B, Hq, d]", shape_str(q.shape()));
  if (!is_float(q.dtype())) throw Error(op, "q dtype", "a float dtype", dtype_name(q.dtype()));
  if (k_pages.ndim() != 4)
    throw Error(op, "k_pages shape", "[NP, page_size, Hkv, d]", shape_str(k_pages.shape()));
  const int64_t kv_heads = k_pages.size(2);
  if (kv_heads < 1 || q.size(1) % kv_heads != 0)
    throw Error(op, "num_key_value_heads", "a divisor of Hq = " + std::to_string(q.size(1)),
                std::to_string(kv_heads));
  check_pages(op, k_pages, kv_heads, q.size(2), "k_pages");
  if (v_pages.shape() != k_pages.shape())
    throw Error(op, "v_pages shape", shape_str(k_pages.shape()), shape_str(v_pages.shape()));
  if (out.shape() != q.shape())
    throw Error(op, "out shape", shape_str(q.shape()), shape_str(out.shape()));
  const std::pair<const char*, const Tensor*> data[] = {
      {"k_pages", &k_pages}, {"v_pages", &v_pages}, {"out", &out}};
  for (const auto& [name, t] : data) {
    check_device(op, *t, q.device(), name);
    check_dtype(op, *t, q.dtype(), name);
  }
  check_index(op, block_table, -1, q.device(), "block_table");
  check_index(op, rows, q.size(0), q.device(), "rows");
  check_index(op, lengths, q.size(0), q.device(), "lengths");
  return {q.size(0),       q.size(1),           kv_heads,           q.size(2), k_pages.size(0),
          k_pages.size(1), block_table.size(0), block_table.size(1)};
}

PagedKvShape check_kv_cache_write(const Tensor& fresh, const Tensor& block_table,
                                  const Tensor& rows, const Tensor& positions,
                                  const Tensor& pages) {
  const char* op = "kv_cache_write";
  if (fresh.ndim() != 3) throw Error(op, "fresh shape", "[N, Hkv, d]", shape_str(fresh.shape()));
  check_pages(op, pages, fresh.size(1), fresh.size(2), "pages");
  check_device(op, pages, fresh.device(), "pages");
  check_dtype(op, pages, fresh.dtype(), "pages");
  check_index(op, block_table, -1, fresh.device(), "block_table");
  check_index(op, rows, fresh.size(0), fresh.device(), "rows");
  check_index(op, positions, fresh.size(0), fresh.device(), "positions");
  return {fresh.size(0), fresh.size(1), fresh.size(1),       fresh.size(2),
          pages.size(0), pages.size(1), block_table.size(0), block_table.size(1)};
}

namespace cpu {

namespace {

// The page holding position p of table row `row`, checked against [0, NP).
int64_t page_of(const char* op, const int32_t* table, const PagedKvShape& s, int64_t row,
                int64_t p) {
  const int64_t j = p / s.page_size, page = table[row * s.max_pages + j];
  if (page < 0 || page >= s.num_pages)
    throw Error(op, "block_table[" + std::to_string(row) + ", " + std::to_string(j) + "]",
                "a page in [0, NP = " + std::to_string(s.num_pages) + ")", std::to_string(page));
  return page;
}

void check_row(const char* op, const int32_t* rows, int64_t i, const PagedKvShape& s) {
  if (rows[i] >= s.table_rows)
    throw Error(op, "rows[" + std::to_string(i) + "]",
                "-1 (padding) or a table row < R = " + std::to_string(s.table_rows),
                std::to_string(rows[i]));
}

// out[b, h] for the entry's positions, whose slots (element offsets into the pages) are given.
template <class T>
void decode_impl(const T* q, const T* k, const T* v, const std::vector<std::vector<int64_t>>& slots,
                 double scale, const PagedKvShape& s, T* out) {
  const int64_t dh = s.head_dim, group = s.q_heads / s.kv_heads;
  int64_t work = 0, longest = 0;
  for (const auto& entry : slots) {
    work += int64_t(entry.size()) * s.q_heads * dh;
    longest = std::max<int64_t>(longest, int64_t(entry.size()));
  }
#pragma omp parallel if (work >= kMinParallelWork)
  {
    std::vector<double> scores(longest), acc(dh);
#pragma omp for
    for (int64_t bh = 0; bh < s.tokens * s.q_heads; ++bh) {
      const std::vector<int64_t>& slot = slots[bh / s.q_heads];
      const int64_t head = bh % s.q_heads / group * dh, n = int64_t(slot.size());
      T* o = out + bh * dh;
      if (n == 0) {
        std::fill(o, o + dh, T(0));
        continue;
      }
      const T* qh = q + bh * dh;
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        scores[j] = scale * double(dot(qh, k + slot[j] + head, dh));
        mx = std::max(mx, scores[j]);
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < n; ++j) {
        const double p = std::exp(scores[j] - mx);
        const T* vj = v + slot[j] + head;
        sum += p;
        for (int64_t e = 0; e < dh; ++e) acc[e] += p * double(vj[e]);
      }
      for (int64_t e = 0; e < dh; ++e) o[e] = T(acc[e] / sum);
    }
  }
}

}  // namespace

void paged_attention_decode(const Tensor& q, const Tensor& k_pages, const Tensor& v_pages,
                            const Tensor& block_table, const Tensor& rows, const Tensor& lengths,
                            double scale, Tensor& out) {
  const char* op = "paged_attention_decode";
  const PagedKvShape s =
      check_paged_attention_decode(q, k_pages, v_pages, block_table, rows, lengths, out);
  const int32_t *row = rows.data<int32_t>(), *len = lengths.data<int32_t>();
  const int32_t* table = block_table.data<int32_t>();
  // Element offset of each position of each entry into the pages (none for padding).
  const int64_t slot_size = s.kv_heads * s.head_dim;
  std::vector<std::vector<int64_t>> slots(s.tokens);
  for (int64_t b = 0; b < s.tokens; ++b) {
    check_row(op, row, b, s);
    if (row[b] < 0) continue;
    if (len[b] < 0 || len[b] > s.capacity())
      throw Error(op, "lengths[" + std::to_string(b) + "]",
                  "0 to capacity = " + std::to_string(s.capacity()), std::to_string(len[b]));
    for (int64_t p = 0; p < len[b]; ++p)
      slots[b].push_back((page_of(op, table, s, row[b], p) * s.page_size + p % s.page_size) *
                         slot_size);
  }
  with_float_type(q.dtype(), [&](auto zero) {
    using T = decltype(zero);
    decode_impl<T>(q.data<T>(), k_pages.data<T>(), v_pages.data<T>(), slots, scale, s,
                   out.data<T>());
  });
}

void kv_cache_write(const Tensor& fresh, const Tensor& block_table, const Tensor& rows,
                    const Tensor& positions, Tensor& pages) {
  const char* op = "kv_cache_write";
  const PagedKvShape s = check_kv_cache_write(fresh, block_table, rows, positions, pages);
  const int32_t *row = rows.data<int32_t>(), *pos = positions.data<int32_t>();
  const int32_t* table = block_table.data<int32_t>();
  const size_t token_bytes = size_t(s.kv_heads * s.head_dim) * dtype_size(fresh.dtype());
  const auto* src = static_cast<const char*>(fresh.raw());
  auto* dst = static_cast<char*>(pages.raw());
  for (int64_t n = 0; n < s.tokens; ++n) {
    check_row(op, row, n, s);
    if (row[n] < 0) continue;
    if (pos[n] < 0 || pos[n] >= s.capacity())
      throw Error(op, "positions[" + std::to_string(n) + "]",
                  "0 to capacity - 1 = " + std::to_string(s.capacity() - 1),
                  std::to_string(pos[n]));
    const int64_t slot = page_of(op, table, s, row[n], pos[n]) * s.page_size + pos[n] % s.page_size;
    std::memcpy(dst + size_t(slot) * token_bytes, src + size_t(n) * token_bytes, token_bytes);
  }
}

}  // namespace cpu
}  // namespace nh
