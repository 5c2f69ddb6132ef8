#include "dist/mpi_communicator.h"

#if NH_HAVE_MPI

#include <mpi.h>

#include <cstdlib>
#include <vector>

namespace nh {

namespace {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error("MPI", what, "success", std::string(msg, size_t(len)));
}

MPI_Datatype mpi_type(DType d, bool reducing) {
  switch (d) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::F64:
      return MPI_DOUBLE;
    case DType::I64:
      return MPI_INT64_T;
    case DType::I32:
      return MPI_INT32_T;
    case DType::U8:
      return MPI_UINT8_T;
    default:
      if (!reducing && dtype_size(d) == 2) return MPI_UINT16_T;  // moved, not added
      throw Error("MPI communicator", "dtype", "F32, F64, I64 or I32 to reduce", dtype_name(d));
  }
}

void expect_cpu(const Tensor& t, const char* what) {
  if (t.device() != Device::CPU)
    throw Error("MPI communicator", what, "a CPU tensor", device_name(t.device()));
}

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  ~MpiCommunicator() override {
    if (comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::CPU; }
  const char* backend() const override { return "mpi"; }

  void all_reduce(Tensor& t, ReduceOp op, Completion when) override {
    expect_cpu(t, "all_reduce");
    MPI_Request r;
    check(MPI_Iallreduce(MPI_IN_PLACE, t.raw(), int(t.numel()), mpi_type(t.dtype(), true),
                         op == ReduceOp::Sum ? MPI_SUM : MPI_MAX, comm_, &r),
          "MPI_Iallreduce");
    finish(r, when);
  }

  void reduce_scatter(const Tensor& in, Tensor& out, Completion when) override {
    expect_cpu(in, "reduce_scatter");
    NH_CHECK(in.numel() == out.numel() * size_ && in.dtype() == out.dtype(),
             "reduce_scatter: in must hold size() parts of out");
    // MPI cannot write into its own input: an aliased out is filled from a copy when done.
    Tensor dst = out;
    if (static_cast<char*>(out.raw()) >= static_cast<char*>(in.raw()) &&
        static_cast<char*>(out.raw()) < static_cast<char*>(in.raw()) + in.nbytes()) {
      dst = Tensor::empty(out.shape(), out.dtype());
      copies_.push_back({dst, out});
    }
    MPI_Request r;
    check(MPI_Ireduce_scatter_block(in.raw(), dst.raw(), int(out.numel()),
                                    mpi_type(in.dtype(), true), MPI_SUM, comm_, &r),
          "MPI_Ireduce_scatter_block");
    finish(r, when);
  }

  void all_gather(const Tensor& in, Tensor& out, Completion when) override {
    expect_cpu(out, "all_gather");
    NH_CHECK(out.numel() == in.numel() * size_ && in.dtype() == out.dtype(),
             "all_gather: out must hold size() parts of in");
    const MPI_Datatype type = mpi_type(in.dtype(), false);
    const int n = int(in.numel());
    const bool in_place =
        static_cast<char*>(in.raw()) == static_cast<char*>(out.raw()) + size_t(rank_) * in.nbytes();
    MPI_Request r;
    check(
        MPI_Iallgather(in_place ? MPI_IN_PLACE : in.raw(), n, type, out.raw(), n, type, comm_, &r),
        "MPI_Iallgather");
    finish(r, when);
  }

  void broadcast(Tensor& t, int root) override {
    expect_cpu(t, "broadcast");
    check(MPI_Bcast(t.raw(), int(t.numel()), mpi_type(t.dtype(), false), root, comm_), "MPI_Bcast");
  }

  void wait() override {
    if (!pending_.empty())
      check(MPI_Waitall(int(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    pending_.clear();
    for (auto& [from, to] : copies_) to.copy_from(from);
    copies_.clear();
  }

  void barrier() override { check(MPI_Barrier(comm_), "MPI_Barrier"); }

  std::unique_ptr<Communicator> split(int color, int key) const override {
    MPI_Comm sub;
    check(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
    return std::make_unique<MpiCommunicator>(sub);
  }

 private:
  void finish(MPI_Request r, Completion when) {
    pending_.push_back(r);
    if (when == Completion::Now) wait();
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::vector<MPI_Request> pending_;
  std::vector<std::pair<Tensor, Tensor>> copies_;  // (result, where it goes) after wait()
};

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

std::unique_ptr<Communicator> mpi_world(const LaunchInfo& info) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    std::atexit(finalize_at_exit);
  }
  auto world = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
  if (world->size() != info.world_size || world->rank() != info.rank)
    throw Error("MPI", "world",
                "rank " + std::to_string(info.rank) + " of " + std::to_string(info.world_size) +
                    " (from " + info.launcher +
                    "'s variables); CPU ranks are started with mpirun or srun",
                "rank " + std::to_string(world->rank()) + " of " + std::to_string(world->size()));
  return world;
}

}  // namespace nh

#else

namespace nh {

std::unique_ptr<Communicator> mpi_world(const LaunchInfo& info) {
  throw Error("launch", "world size",
              "1 on the CPU: this build has no MPI (install libopenmpi-dev and rebuild)",
              std::to_string(info.world_size));
}

}  // namespace nh

#endif
