// Embedding gather and its deterministic scatter-add on the GPU against the CPU.
#include "ops/embedding.h"

#include <string>
#include <vector>

#include "cuda/harness.h"

namespace nh {
namespace {

using test::expect_close;
using test::gpu_empty;
using test::random_cpu;
using test::to_cpu;
using test::to_gpu;
using test::tolerance;

const DType kDtypes[] = {DType::F32, DType::BF16};

Tensor random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int64_t> ids(n);
  for (auto& id : ids) id = int64_t(rng.next() % uint64_t(vocab));
  return Tensor::from(ids, {n});
}

// (vocab, dim, tokens): a vocab of 1 (every token the same row), many repeats, few repeats,
// a row wider than one block's threads, more tokens than the grid's 65535 rows.
struct EmbeddingCase {
  int64_t vocab, dim, tokens;
};
const EmbeddingCase kCases[] = {{1, 7, 50},       {5, 1, 1},         {13, 33, 1000},
                                {1000, 256, 300}, {300, 1000, 2049}, {97, 16, 70000}};

TEST(CudaEmbedding, ForwardGathersTheCpuRows) {
  uint64_t seed = 1;
  for (DType dtype : kDtypes)
    for (const EmbeddingCase& c : kCases) {
      Tensor ids = random_ids(c.tokens, c.vocab, seed++);
      Tensor weight = random_cpu({c.vocab, c.dim}, seed++).to(dtype).to(DType::F32);
      Tensor out = Tensor::empty({c.tokens, c.dim}, DType::F32);
      cpu::embedding_forward(ids, weight, out, false);
      Tensor gout = gpu_empty({c.tokens, c.dim}, dtype);
      cuda::embedding_forward(to_gpu(ids), to_gpu(weight, dtype), gout, false);
      Tensor unchecked = gpu_empty({c.tokens, c.dim}, dtype);
      cuda::embedding_forward(to_gpu(ids), to_gpu(weight, dtype), unchecked, true);
      expect_close("embedding out, ids checked by the caller", unchecked, out, 0.0);
      // A copy of rows that are exact in dtype: bit for bit.
      expect_close("embedding out V " + std::to_string(c.vocab) + " D " + std::to_string(c.dim) +
                       " T " + std::to_string(c.tokens) + " " + dtype_name(dtype),
                   gout, out, 0.0);
    }
}

TEST(CudaEmbedding, BackwardAccumulatesRepeatedIdsLikeCpu) {
  uint64_t seed = 100;
  for (DType dtype : kDtypes)
    for (const EmbeddingCase& c : kCases) {
      Tensor ids = random_ids(c.tokens, c.vocab, seed++);
      Tensor dout = random_cpu({c.tokens, c.dim}, seed++);
      Tensor dweight0 = random_cpu({c.vocab, c.dim}, seed++);
      Tensor dweight = dweight0.clone();
      cpu::embedding_backward(ids, dout, dweight);
      Tensor gdweight = to_gpu(dweight0, dtype);
      cuda::embedding_backward(to_gpu(ids), to_gpu(dout, dtype), gdweight);
      expect_close("embedding dweight V " + std::to_string(c.vocab) + " D " +
                       std::to_string(c.dim) + " T " + std::to_string(c.tokens) + " " +
                       dtype_name(dtype),
                   gdweight, dweight, tolerance(dtype));
    }
}

TEST(CudaEmbedding, BackwardIsDeterministic) {
  Tensor ids = to_gpu(random_ids(5000, 7, 200)), dout = to_gpu(random_cpu({5000, 40}, 201));
  Tensor dw1 = test::gpu_zeros({7, 40}, DType::F32), dw2 = test::gpu_zeros({7, 40}, DType::F32);
  cuda::embedding_backward(ids, dout, dw1);
  cuda::embedding_backward(ids, dout, dw2);
  const Tensor h1 = to_cpu(dw1), h2 = to_cpu(dw2);
  for (int64_t i = 0; i < h1.numel(); ++i) EXPECT_EQ(h1.data<float>()[i], h2.data<float>()[i]) << i;
}

// The CPU's message, naming the first bad position and V; nothing written before the check.
TEST(CudaEmbedding, OutOfRangeIdIsAnErrorAndWritesNothing) {
  for (int64_t bad : {int64_t(-1), int64_t(10), int64_t(1) << 40}) {
    Tensor ids = Tensor::from(std::vector<int64_t>{3, 0, bad, 9, bad}, {5});
    Tensor weight = to_gpu(random_cpu({10, 4}, 300));
    const Tensor before = random_cpu({5, 4}, 301);
    Tensor out = to_gpu(before), dweight = to_gpu(random_cpu({10, 4}, 302));
    const Tensor dweight_before = to_cpu(dweight);
    try {
      cuda::embedding_forward(to_gpu(ids), weight, out, false);
      ADD_FAILURE() << "no error for id " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("ids[2]"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("[0, 10)"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::to_string(bad)), std::string::npos) << e.what();
    }
    EXPECT_THROW(cuda::embedding_backward(to_gpu(ids), to_gpu(before), dweight), Error);
    expect_close("embedding out untouched", out, before, 0.0);
    expect_close("embedding dweight untouched", dweight, dweight_before, 0.0);
  }
}

// With the ids checked by the caller there is no read-back: an id outside [0, V) gives zeros.
TEST(CudaEmbedding, UncheckedOutOfRangeIdsGiveZeroRows) {
  const Tensor weight = random_cpu({10, 4}, 310);
  Tensor out = to_gpu(random_cpu({3, 4}, 311));
  cuda::embedding_forward(to_gpu(Tensor::from(std::vector<int64_t>{-1, 7, 10}, {3})),
                          to_gpu(weight), out, true);
  Tensor want = Tensor::zeros({3, 4}, DType::F32);
  want.slice0(1, 2).copy_from(weight.slice0(7, 8));
  expect_close("embedding unchecked ids", out, want, 0.0);
}

TEST(CudaEmbedding, MismatchedShapesAndDtypesThrow) {
  Tensor ids = to_gpu(random_ids(6, 10, 400)), weight = test::gpu_zeros({10, 4}, DType::F32);
  Tensor out_bad = gpu_empty({6, 5}, DType::F32), out_bf16 = gpu_empty({6, 4}, DType::BF16);
  EXPECT_THROW(cuda::embedding_forward(ids, weight, out_bad, false), Error);
  EXPECT_THROW(cuda::embedding_forward(ids, weight, out_bf16, false), Error);
  Tensor ids_i32 = test::gpu_zeros({6}, DType::I32), out = gpu_empty({6, 4}, DType::F32);
  EXPECT_THROW(cuda::embedding_forward(ids_i32, weight, out, false), Error);
  Tensor ids_cpu = random_ids(6, 10, 401);
  EXPECT_THROW(cuda::embedding_forward(ids_cpu, weight, out, false), Error);
}

}  // namespace
}  // namespace nh
