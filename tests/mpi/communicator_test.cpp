// The communicator (MPI on CPU ranks; NCCL on GPUs in nemotronh-test-nccl) against sums and
// copies computed here from every rank's inputs (each rank's input is a random tensor seeded by
// its rank, so any rank can recompute all of them).
#include <gtest/gtest.h>

#include "support/expect.h"
#include "support/gradcheck.h"
#include "world.h"

namespace nh {
namespace {

using test::world;

// Rank `rank`'s input, on the host.
Tensor input_of(int rank, int64_t n, DType dtype = DType::F32) {
  return test::random_tensor({n}, 100 + uint64_t(rank), 1.0, dtype);
}
// This rank's input, where the communicator works.
Tensor my_input(int64_t n, DType dtype = DType::F32) {
  return input_of(world().rank(), n, dtype).to(world().device());
}
Tensor host(const Tensor& t) { return t.to(Device::CPU); }

// Σ over ranks in double, for comparison with the fp32 reduction.
Tensor sum_of_inputs(int64_t n) {
  Tensor s = Tensor::zeros({n}, DType::F64);
  for (int r = 0; r < world().size(); ++r)
    for (int64_t i = 0; i < n; ++i) s.data<double>()[i] += read_float(input_of(r, n), i);
  return s;
}

TEST(Communicator, TheWorldIsEveryRankTheLauncherStarted) {
  EXPECT_GE(world().size(), 2);
  EXPECT_STREQ(world().backend(), world().device() == Device::CPU ? "mpi" : "nccl");
}

TEST(Communicator, AllReduceSumsAndTakesTheMaximumOverRanks) {
  const int64_t n = 1003;
  Tensor t = my_input(n);
  world().all_reduce(t);
  // fp32 sums of a few N(0, 1) values: rounding stays below 1e-5.
  test::expect_near_all(host(t), sum_of_inputs(n), 1e-5, "sum");
  Tensor m = my_input(n, DType::F64);
  world().all_reduce(m, ReduceOp::Max);
  m = host(m);
  for (int64_t i = 0; i < n; ++i) {
    double want = -1e300;
    for (int r = 0; r < world().size(); ++r)
      want = std::max(want, read_float(input_of(r, n, DType::F64), i));
    ASSERT_EQ(read_float(m, i), want) << i;
  }
  EXPECT_EQ(world().all_reduce(double(world().rank() + 1)),
            world().size() * (world().size() + 1) / 2.0);
}

TEST(Communicator, ReduceScatterLeavesEachRankItsPartOfTheSum) {
  const int64_t part = 257, n = part * world().size();
  const Tensor sum = sum_of_inputs(n).slice0(part * world().rank(), part * (world().rank() + 1));
  Tensor out = Tensor::empty({part}, DType::F32, world().device());
  world().reduce_scatter(my_input(n), out);
  test::expect_near_all(host(out), sum, 1e-5, "out of place");
  // In place: the rank's part of the input buffer receives the result.
  Tensor buffer = my_input(n);
  Tensor mine = buffer.slice0(part * world().rank(), part * (world().rank() + 1));
  world().reduce_scatter(buffer, mine);
  test::expect_near_all(host(mine), sum, 1e-5, "in place");
}

TEST(Communicator, AllGatherConcatenatesTheRanksInOrder) {
  const int64_t part = 129, n = part * world().size();
  Tensor want = Tensor::empty({n}, DType::F32);
  for (int r = 0; r < world().size(); ++r)
    want.slice0(part * r, part * (r + 1)).copy_from(input_of(r, part));
  Tensor out = Tensor::zeros({n}, DType::F32, world().device());
  world().all_gather(my_input(part), out);
  test::expect_near_all(host(out), want, 0.0, "out of place");
  Tensor buffer = Tensor::zeros({n}, DType::F32, world().device());
  Tensor mine = buffer.slice0(part * world().rank(), part * (world().rank() + 1));
  mine.copy_from(my_input(part));
  world().all_gather(mine, buffer);
  test::expect_near_all(host(buffer), want, 0.0, "in place");
}

TEST(Communicator, BroadcastCopiesTheRootsTensor) {
  const int root = world().size() - 1;
  Tensor t = my_input(77);
  world().broadcast(t, root);
  test::expect_near_all(host(t), input_of(root, 77), 0.0);
}

TEST(Communicator, CollectivesStartedForLaterAreDoneAfterWait) {
  const int64_t part = 64, n = part * world().size();
  Tensor a = my_input(n), b = my_input(n);
  Tensor b_mine = b.slice0(part * world().rank(), part * (world().rank() + 1));
  world().all_reduce(a, ReduceOp::Sum, Completion::Later);
  world().reduce_scatter(b, b_mine, Completion::Later);
  world().wait();
  const Tensor sum = sum_of_inputs(n);
  test::expect_near_all(host(a), sum, 1e-5, "all_reduce");
  test::expect_near_all(host(b_mine),
                        sum.slice0(part * world().rank(), part * (world().rank() + 1)), 1e-5,
                        "reduce_scatter");
}

TEST(Communicator, SplitMakesOneGroupPerColorOrderedByKey) {
  const int color = world().rank() % 2;
  // Keys reversed: the highest world rank of a color becomes rank 0 of its group.
  auto group = world().split(color, world().size() - world().rank());
  int members = 0, highest = -1;
  for (int r = 0; r < world().size(); ++r)
    if (r % 2 == color) {
      ++members;
      highest = r;
    }
  EXPECT_EQ(group->size(), members);
  EXPECT_EQ(group->all_reduce(double(world().rank()), ReduceOp::Max), highest);
  EXPECT_EQ(group->rank() == 0, world().rank() == highest);
}

TEST(Communicator, MpiMovesBf16ButDoesNotReduceIt) {
  if (world().device() != Device::CPU) GTEST_SKIP() << "NCCL reduces bf16";
  Tensor t = input_of(world().rank(), 16, DType::BF16);
  world().broadcast(t, 0);
  test::expect_near_all(t, input_of(0, 16, DType::BF16), 0.0);
  test::expect_error([&] { world().all_reduce(t); }, "MPI communicator", "dtype");
}

}  // namespace
}  // namespace nh
