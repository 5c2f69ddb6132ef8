#include "ops/attention_decode.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "support/gradcheck.h"

namespace nh {
namespace {

using test::random_tensor;

struct DecodeCase {
  int64_t batch, seq_len, q_heads, kv_heads, head_dim;
};

std::string describe(const DecodeCase& c) {
  return "B" + std::to_string(c.batch) + " S" + std::to_string(c.seq_len) + " H" +
         std::to_string(c.q_heads) + "/" + std::to_string(c.kv_heads) + " dh" +
         std::to_string(c.head_dim);
}

// A sequence's q, k, v [B, S, H, dh] and attention_forward's out for it.
struct Sequence {
  Tensor q, k, v, out;
  double scale;
};

Sequence make_sequence(const DecodeCase& c, uint64_t seed, DType dtype = DType::F64) {
  Sequence s;
  s.q = random_tensor({c.batch, c.seq_len, c.q_heads, c.head_dim}, seed, 1.0, dtype);
  s.k = random_tensor({c.batch, c.seq_len, c.kv_heads, c.head_dim}, seed + 1, 1.0, dtype);
  s.v = random_tensor({c.batch, c.seq_len, c.kv_heads, c.head_dim}, seed + 2, 1.0, dtype);
  s.scale = 1.0 / std::sqrt(double(c.head_dim));
  s.out = Tensor::empty(s.q.shape(), dtype);
  Tensor lse = Tensor::empty({c.batch, c.q_heads, c.seq_len}, dtype);
  attention_forward(s.q, s.k, s.v, Tensor(), s.scale, s.out, lse);
  return s;
}

// Row b of the result is token pos[b] of row b of seq [B, S, ...]: a [B, ...] tensor.
Tensor pick(const Tensor& seq, const std::vector<int64_t>& pos) {
  Shape shape = seq.shape();
  shape.erase(shape.begin() + 1);
  const int64_t batch = seq.size(0), seq_len = seq.size(1), inner = seq.numel() / (batch * seq_len);
  Tensor r = Tensor::empty(shape, DType::F64);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < inner; ++i)
      r.data<double>()[b * inner + i] = read_float(seq, (b * seq_len + pos[b]) * inner + i);
  return r.to(seq.dtype());
}

// A [B, L, Hkv, dh] cache holding seq's S positions and, past them, large junk that would
// swamp the softmax if it were read.
Tensor make_cache(const Tensor& seq, int64_t cache_len, uint64_t seed) {
  const int64_t batch = seq.size(0), seq_len = seq.size(1), row = seq.numel() / (batch * seq_len);
  Tensor cache = random_tensor({batch, cache_len, seq.size(2), seq.size(3)}, seed, 50.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < seq_len * row; ++i)
      cache.data<double>()[b * cache_len * row + i] = read_float(seq, b * seq_len * row + i);
  return cache.to(seq.dtype());
}

Tensor lengths_tensor(const std::vector<int64_t>& lengths) {
  return Tensor::from(lengths, {int64_t(lengths.size())});
}

Tensor decode(const Sequence& s, const Tensor& k_cache, const Tensor& v_cache,
              const std::vector<int64_t>& lengths) {
  std::vector<int64_t> newest(lengths);
  for (int64_t& n : newest) n -= 1;
  Tensor out = Tensor::empty(pick(s.q, newest).shape(), s.q.dtype());
  attention_decode(pick(s.q, newest), k_cache, v_cache, lengths_tensor(lengths), s.scale, out);
  return out;
}

void expect_near_all(const Tensor& got, const Tensor& want, double tol, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  for (int64_t i = 0; i < got.numel(); ++i)
    EXPECT_NEAR(read_float(got, i), read_float(want, i), tol) << what << " element " << i;
}

TEST(AttentionDecode, EveryPositionMatchesAttentionForwardsRow) {
  const DecodeCase cases[] = {
      {2, 7, 4, 2, 5}, {1, 9, 6, 3, 3}, {2, 5, 3, 3, 8}, {3, 6, 4, 1, 4}, {1, 1, 2, 1, 7}};
  uint64_t seed = 10;
  for (const DecodeCase& c : cases) {
    const Sequence s = make_sequence(c, seed += 10);
    // The cache is the whole sequence: the keys after the newest token must be ignored.
    for (int64_t t = 0; t < c.seq_len; ++t) {
      const std::vector<int64_t> lengths(c.batch, t + 1), pos(c.batch, t);
      expect_near_all(decode(s, s.k, s.v, lengths), pick(s.out, pos), 1e-14,
                      describe(c) + " t" + std::to_string(t));
    }
  }
}

TEST(AttentionDecode, RowsOfDifferentLengthsInOneBatch) {
  const DecodeCase c{4, 9, 4, 2, 5};
  const Sequence s = make_sequence(c, 100);
  const Tensor k_cache = make_cache(s.k, 12, 110), v_cache = make_cache(s.v, 12, 111);
  const std::vector<int64_t> lengths = {1, 9, 4, 7};
  expect_near_all(decode(s, k_cache, v_cache, lengths), pick(s.out, {0, 8, 3, 6}), 1e-14, "out");
}

TEST(AttentionDecode, FloatMatchesDoubleWithinFp32Precision) {
  const DecodeCase c{3, 40, 4, 2, 16};
  const Sequence s = make_sequence(c, 200);
  const std::vector<int64_t> lengths = {40, 1, 23};
  const Tensor want = decode(s, s.k, s.v, lengths);
  Sequence f = s;
  f.q = s.q.to(DType::F32);
  const Tensor got = decode(f, s.k.to(DType::F32), s.v.to(DType::F32), lengths);
  EXPECT_EQ(got.dtype(), DType::F32);
  expect_near_all(got, want, 1e-5, "out");
}

// Throws an nh::Error whose message names the op and the argument.
void expect_error(const std::function<void()>& call, const std::string& arg) {
  try {
    call();
    ADD_FAILURE() << "no error for a bad " << arg;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("attention_decode"), std::string::npos) << msg;
    EXPECT_NE(msg.find(arg), std::string::npos) << msg;
  }
}

TEST(AttentionDecode, BadShapesDtypesAndLengthsThrowNamingTheArgument) {
  const Tensor q = random_tensor({2, 4, 5}, 300), k = random_tensor({2, 6, 2, 5}, 301),
               v = random_tensor({2, 6, 2, 5}, 302);
  const Tensor lengths = lengths_tensor({6, 1});
  Tensor out = Tensor::empty({2, 4, 5}, DType::F64);
  EXPECT_NO_THROW(attention_decode(q, k, v, lengths, 0.5, out));
  auto run = [&](const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& len_,
                 Tensor out_) {
    return [=]() mutable { attention_decode(q_, k_, v_, len_, 0.5, out_); };
  };
  expect_error(run(random_tensor({2, 1, 4, 5}, 303), k, v, lengths, out), "q shape");
  expect_error(run(q, random_tensor({2, 6, 5}, 304), v, lengths, out), "k_cache shape");
  const Tensor k3 = random_tensor({2, 6, 3, 5}, 305);  // Hq = 4 is not a multiple of 3
  expect_error(run(q, k3, k3, lengths, out), "num_key_value_heads");
  expect_error(run(q, random_tensor({2, 6, 2, 4}, 306), v, lengths, out), "k_cache");
  expect_error(run(q, k, random_tensor({2, 5, 2, 5}, 307), lengths, out), "v_cache");
  expect_error(run(q, k, v.to(DType::F32), lengths, out), "v_cache dtype");
  expect_error(run(q, k, v, lengths, Tensor::empty({2, 4, 4}, DType::F64)), "out");
  expect_error(run(q, k, v, lengths, Tensor::empty({2, 4, 5}, DType::F32)), "out dtype");
  expect_error(run(q, k, v, Tensor::from(std::vector<int32_t>{6, 1}, {2}), out), "lengths dtype");
  expect_error(run(q, k, v, lengths_tensor({6, 1, 1}), out), "lengths");
  expect_error(run(q, k, v, lengths_tensor({6, 0}), out), "lengths[1]");
  expect_error(run(q, k, v, lengths_tensor({7, 1}), out), "lengths[0]");
}

}  // namespace
}  // namespace nh
