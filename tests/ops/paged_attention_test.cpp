#include "ops/paged_attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "support/expect.h"
#include "support/gradcheck.h"
#include "support/paged_kv.h"

namespace nh {
namespace {

using test::expect_near_all;
using test::expect_error;

using test::i32;
using test::random_tensor;

struct DecodeCase {
  int64_t q_heads, kv_heads, head_dim, page_size, table_rows;
  std::vector<int32_t> rows, lengths;  // per entry; rows -1 or lengths 0: padding
  int64_t spare_positions;             // capacity = the longest length + this
};

std::string describe(const DecodeCase& c) {
  return "H" + std::to_string(c.q_heads) + "/" + std::to_string(c.kv_heads) + " dh" +
         std::to_string(c.head_dim) + " page" + std::to_string(c.page_size) + " B" +
         std::to_string(c.rows.size());
}

// A decode over a paged cache and what it must give: entry b's query is the query at position
// lengths[b] - 1 of its table row's sequence, so its out is attention_forward's row there.
struct Decode {
  test::PagedKv kv;
  Tensor q, rows, lengths, want;
  double scale;
};

Decode make_decode(const DecodeCase& c, uint64_t seed) {
  int64_t longest = 0;
  for (int32_t n : c.lengths) longest = std::max<int64_t>(longest, n);
  Decode d;
  d.kv =
      test::make_paged_kv(test::fill_of(c.table_rows, c.rows, c.lengths),
                          longest + c.spare_positions, c.kv_heads, c.head_dim, c.page_size, seed);
  const int64_t seq = d.kv.k_seq.size(1), batch = int64_t(c.rows.size()), dh = c.head_dim;
  const Tensor q_seq = random_tensor({c.table_rows, seq, c.q_heads, dh}, seed + 1);
  Tensor out_seq = Tensor::empty(q_seq.shape(), DType::F64);
  Tensor lse = Tensor::empty({c.table_rows, c.q_heads, seq}, DType::F64);
  d.scale = 1.0 / std::sqrt(double(dh));
  attention_forward(q_seq, d.kv.k_seq, d.kv.v_seq, Tensor(), d.scale, out_seq, lse);
  // Padding entries get a random query (never zeros) and must give zeros.
  d.q = random_tensor({batch, c.q_heads, dh}, seed + 2);
  d.want = Tensor::zeros({batch, c.q_heads, dh}, DType::F64);
  const int64_t row_size = c.q_heads * dh;
  for (int64_t b = 0; b < batch; ++b) {
    if (c.rows[b] < 0 || c.lengths[b] == 0) continue;
    const int64_t src = (c.rows[b] * seq + c.lengths[b] - 1) * row_size;
    std::copy_n(q_seq.data<double>() + src, row_size, d.q.data<double>() + b * row_size);
    std::copy_n(out_seq.data<double>() + src, row_size, d.want.data<double>() + b * row_size);
  }
  d.rows = i32(c.rows);
  d.lengths = i32(c.lengths);
  return d;
}

Tensor run_decode(const Decode& d, DType dtype) {
  Tensor out = Tensor::empty(d.q.shape(), dtype);
  paged_attention_decode(d.q.to(dtype), d.kv.k_pages.to(dtype), d.kv.v_pages.to(dtype),
                         d.kv.block_table, d.rows, d.lengths, d.scale, out);
  return out;
}

const DecodeCase kCases[] = {
    // Lengths 1, 9 = three full pages of 3, rows permuted.
    {4, 2, 5, 3, 4, {2, 0, 3, 1}, {7, 1, 9, 4}, 5},
    // Page size 1, a padding row (-1) with a length, group 2.
    {6, 3, 3, 1, 3, {1, -1, 2, 0}, {5, 4, 1, 6}, 2},
    // Group 4, a full last page, a padding length (0) on a real row, capacity = the longest.
    {4, 1, 7, 4, 3, {0, 2, 1}, {8, 13, 0}, 0},
    // Group 1, page 16: one full page and a row read twice, the shorter entry stopping before
    // positions that are stored (not junk).
    {2, 2, 9, 16, 2, {1, 0, 1}, {16, 37, 20}, 16},
    // Six entries over five rows, the last padding.
    {8, 2, 16, 4, 5, {4, 3, 2, 1, 0, -1}, {11, 2, 12, 5, 30, 0}, 7},
};

TEST(PagedAttentionDecode, MatchesAttentionForwardsRowForEveryPageSizeGroupAndLength) {
  uint64_t seed = 10;
  for (const DecodeCase& c : kCases) {
    const Decode d = make_decode(c, seed += 10);
    // Both sides do the arithmetic of one attention row in double.
    expect_near_all(run_decode(d, DType::F64), d.want, 1e-12, describe(c));
  }
}

TEST(PagedAttentionDecode, FloatMatchesDoubleWithinFp32Precision) {
  uint64_t seed = 100;
  for (const DecodeCase& c : kCases) {
    const Decode d = make_decode(c, seed += 10);
    const Tensor got = run_decode(d, DType::F32);
    EXPECT_EQ(got.dtype(), DType::F32);
    // Inputs and dot products rounded to fp32: a few 1e-7 relative on O(1) values.
    expect_near_all(got, d.want, 1e-5, describe(c));
  }
}

// ---- kv_cache_write ---------------------------------------------------------------------

// The page slot of position p of table row r, as an element offset.
int64_t slot_of(const test::PagedKv& kv, int64_t r, int64_t p) {
  const int64_t page_size = kv.k_pages.size(1), max_pages = kv.block_table.size(1);
  const int64_t page = kv.block_table.data<int32_t>()[r * max_pages + p / page_size];
  return (page * page_size + p % page_size) * kv.k_pages.size(2) * kv.k_pages.size(3);
}

// Tokens [t0, t1) of table row r of a [R, S, Hkv, d] sequence, as [t1 - t0, Hkv, d].
Tensor tokens(const Tensor& seq, int64_t r, int64_t t0, int64_t t1) {
  const int64_t slot = seq.size(2) * seq.size(3);
  Tensor t = Tensor::empty({t1 - t0, seq.size(2), seq.size(3)}, seq.dtype());
  std::copy_n(seq.data<double>() + (r * seq.size(1) + t0) * slot, (t1 - t0) * slot,
              t.data<double>());
  return t;
}

TEST(KvCacheWrite, PrefillAndTokenByTokenDecodeWriteEachPositionToItsSlotOnly) {
  const std::vector<int64_t> fill = {9, 1, 0, 12};
  const test::PagedKv kv = test::make_paged_kv(fill, 14, 3, 5, 4, 200);
  const int64_t rows = int64_t(fill.size()), slot = 3 * 5;
  const Tensor junk = random_tensor(kv.k_pages.shape(), 201, 50.0);
  // Prefill: each row's tokens in one call at positions 0..S-1.
  Tensor prefilled = junk.clone();
  for (int64_t r = 0; r < rows; ++r) {
    if (fill[r] == 0) continue;
    std::vector<int32_t> row(fill[r], int32_t(r)), pos(fill[r]);
    for (int64_t p = 0; p < fill[r]; ++p) pos[p] = int32_t(p);
    kv_cache_write(tokens(kv.k_seq, r, 0, fill[r]), kv.block_table, i32(row), i32(pos), prefilled);
  }
  // Decode: one token of every row a step, the entries in reverse order; rows past their fill
  // are padding (-1) whatever their position says.
  Tensor decoded = junk.clone();
  for (int64_t t = 0; t < 12; ++t) {
    Tensor fresh = Tensor::empty({rows, 3, 5}, DType::F64);
    std::vector<int32_t> row(rows), pos(rows);
    for (int64_t b = 0; b < rows; ++b) {
      const int64_t r = rows - 1 - b;
      row[b] = t < fill[r] ? int32_t(r) : -1;
      pos[b] = t < fill[r] ? int32_t(t) : 1000000;
      std::copy_n(kv.k_seq.data<double>() + (r * kv.k_seq.size(1) + t) * slot, slot,
                  fresh.data<double>() + b * slot);
    }
    kv_cache_write(fresh, kv.block_table, i32(row), i32(pos), decoded);
  }
  // Read back: stored positions hold the sequence, every other slot its junk.
  Tensor want = junk.clone();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t p = 0; p < fill[r]; ++p)
      std::copy_n(kv.k_seq.data<double>() + (r * kv.k_seq.size(1) + p) * slot, slot,
                  want.data<double>() + slot_of(kv, r, p));
  expect_near_all(prefilled, want, 0, "prefill");
  expect_near_all(decoded, want, 0, "decode");
}

TEST(KvCacheWrite, PagesWrittenByPrefillDecodeLikeTheSequence) {
  const DecodeCase c{4, 2, 6, 3, 3, {2, 0, 1}, {7, 3, 9}, 4};
  const Decode d = make_decode(c, 300);
  Tensor k_pages = random_tensor(d.kv.k_pages.shape(), 301, 50.0),
         v_pages = random_tensor(d.kv.v_pages.shape(), 302, 50.0);
  const std::vector<int64_t> fill = test::fill_of(c.table_rows, c.rows, c.lengths);
  for (int64_t r = 0; r < c.table_rows; ++r) {
    std::vector<int32_t> row(fill[r], int32_t(r)), pos(fill[r]);
    for (int64_t p = 0; p < fill[r]; ++p) pos[p] = int32_t(p);
    kv_cache_write(tokens(d.kv.k_seq, r, 0, fill[r]), d.kv.block_table, i32(row), i32(pos),
                   k_pages);
    kv_cache_write(tokens(d.kv.v_seq, r, 0, fill[r]), d.kv.block_table, i32(row), i32(pos),
                   v_pages);
  }
  Tensor out = Tensor::empty(d.q.shape(), DType::F64);
  paged_attention_decode(d.q, k_pages, v_pages, d.kv.block_table, d.rows, d.lengths, d.scale, out);
  expect_near_all(out, d.want, 1e-12, "out");
}

// ---- errors -----------------------------------------------------------------------------

TEST(PagedAttentionDecode, BadShapesDtypesAndIndicesThrowNamingTheArgument) {
  const DecodeCase c{4, 2, 5, 3, 2, {1, 0}, {7, 2}, 2};  // capacity 9: 3 pages a row
  const Decode d = make_decode(c, 400);
  const Tensor &k = d.kv.k_pages, &v = d.kv.v_pages, &table = d.kv.block_table;
  Tensor out = Tensor::empty(d.q.shape(), DType::F64);
  EXPECT_NO_THROW(paged_attention_decode(d.q, k, v, table, d.rows, d.lengths, d.scale, out));
  auto run = [&](const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& table_,
                 const Tensor& rows_, const Tensor& lengths_, Tensor out_) {
    return
        [=]() mutable { paged_attention_decode(q_, k_, v_, table_, rows_, lengths_, 0.5, out_); };
  };
  const Tensor &q = d.q, &rows = d.rows, &lengths = d.lengths;
  const char* op = "paged_attention_decode";
  expect_error(run(random_tensor({2, 4, 5, 1}, 401), k, v, table, rows, lengths, out), op,
               "q shape");
  expect_error(run(q, random_tensor({3, 3, 10}, 402), v, table, rows, lengths, out), op,
               "k_pages shape");
  const Tensor k3 = random_tensor({8, 3, 3, 5}, 403);  // Hq = 4 is not a multiple of 3
  expect_error(run(q, k3, k3, table, rows, lengths, out), op, "num_key_value_heads");
  expect_error(run(q, random_tensor({8, 3, 2, 4}, 404), v, table, rows, lengths, out), op,
               "k_pages shape");
  expect_error(run(q, k, random_tensor({8, 2, 2, 5}, 405), table, rows, lengths, out), op,
               "v_pages shape");
  expect_error(run(q, k, v.to(DType::F32), table, rows, lengths, out), op, "v_pages dtype");
  expect_error(run(q, k, v, table, rows, lengths, Tensor::empty({2, 4, 4}, DType::F64)), op,
               "out shape");
  expect_error(run(q, k, v, table, rows, lengths, Tensor::empty({2, 4, 5}, DType::F32)), op,
               "out dtype");
  expect_error(run(q, k, v, i32({0, 1, 2}), rows, lengths, out), op, "block_table shape");
  expect_error(run(q, k, v, table, Tensor::from(std::vector<int64_t>{1, 0}, {2}), lengths, out), op,
               "rows dtype");
  expect_error(run(q, k, v, table, i32({1, 0, 0}), lengths, out), op, "rows shape");
  expect_error(run(q, k, v, table, rows, i32({7}), out), op, "lengths shape");
  // Index ranges, which the CPU can check.
  expect_error(run(q, k, v, table, i32({1, 2}), lengths, out), op, "rows[1]");
  expect_error(run(q, k, v, table, rows, i32({10, 2}), out), op, "lengths[0]");
  expect_error(run(q, k, v, table, rows, i32({7, -1}), out), op, "lengths[1]");
  // Row 1's third page (positions 6..8) is -1 or out of range: not read for length 6, an error
  // for length 7.
  Tensor bad_table = table.clone();
  bad_table.data<int32_t>()[1 * table.size(1) + 2] = int32_t(k.size(0));
  expect_error(run(q, k, v, bad_table, rows, lengths, out), op, "block_table[1, 2]");
  EXPECT_NO_THROW(paged_attention_decode(q, k, v, bad_table, rows, i32({6, 2}), 0.5, out));
}

TEST(KvCacheWrite, BadShapesDtypesAndIndicesThrowNamingTheArgument) {
  const test::PagedKv kv = test::make_paged_kv({4, 2}, 6, 2, 3, 2, 500);
  const Tensor fresh = random_tensor({2, 2, 3}, 501), &table = kv.block_table;
  Tensor pages = kv.k_pages.clone();
  const Tensor rows = i32({0, 1}), pos = i32({3, 1});
  EXPECT_NO_THROW(kv_cache_write(fresh, table, rows, pos, pages));
  auto run = [&](const Tensor& fresh_, const Tensor& rows_, const Tensor& pos_, Tensor pages_) {
    return [=]() mutable { kv_cache_write(fresh_, table, rows_, pos_, pages_); };
  };
  const char* op = "kv_cache_write";
  expect_error(run(random_tensor({2, 6}, 502), rows, pos, pages), op, "fresh shape");
  expect_error(run(fresh, rows, pos, random_tensor({4, 2, 3, 3}, 503)), op, "pages shape");
  expect_error(run(fresh, rows, pos, pages.to(DType::F32)), op, "pages dtype");
  expect_error(run(fresh, i32({0}), pos, pages), op, "rows shape");
  expect_error(run(fresh, rows, Tensor::from(std::vector<int64_t>{3, 1}, {2}), pages), op,
               "positions dtype");
  expect_error(run(fresh, i32({0, 2}), pos, pages), op, "rows[1]");
  expect_error(run(fresh, rows, i32({6, 1}), pages), op, "positions[0]");
  expect_error(run(fresh, rows, i32({3, -1}), pages), op, "positions[1]");
  // Row 1 holds 2 positions: its second page is not assigned.
  expect_error(run(fresh, rows, i32({3, 2}), pages), op, "block_table[1, 1]");
  EXPECT_NO_THROW(kv_cache_write(fresh, table, i32({0, -1}), i32({3, 99}), pages));
}

}  // namespace
}  // namespace nh
