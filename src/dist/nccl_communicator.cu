#include <cuda_runtime.h>
#include <nccl.h>

#include "dist/nccl_communicator.h"
#include "dist/tcp_rendezvous.h"

namespace nh {

namespace {

void check(ncclResult_t rc, const char* what) {
  if (rc == ncclSuccess) return;
  throw Error("NCCL", what, "success", std::string(ncclGetErrorString(rc)));
}

void check(cudaError_t rc, const char* what) {
  if (rc == cudaSuccess) return;
  throw Error("CUDA", what, "success", cudaGetErrorString(rc));
}

ncclDataType_t nccl_type(DType d) {
  switch (d) {
    case DType::F32:
      return ncclFloat32;
    case DType::BF16:
      return ncclBfloat16;
    case DType::F16:
      return ncclFloat16;
    case DType::F64:
      return ncclFloat64;
    case DType::I64:
      return ncclInt64;
    case DType::I32:
      return ncclInt32;
    case DType::U8:
      return ncclUint8;
    default:
      throw Error("NCCL communicator", "dtype", "a float or integer dtype", dtype_name(d));
  }
}

void expect_cuda(const Tensor& t, const char* what) {
  if (t.device() != Device::CUDA)
    throw Error("NCCL communicator", what, "a CUDA tensor", device_name(t.device()));
}

// The stream the ops run on (ops/cuda/common.cuh).
cudaStream_t compute_stream() { return cudaStreamPerThread; }

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(ncclComm_t comm) : comm_(comm) {
    check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    check(ncclCommCount(comm_, &size_), "ncclCommCount");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate");
  }
  ~NcclCommunicator() override {
    cudaStreamSynchronize(stream_);
    ncclCommDestroy(comm_);
    cudaEventDestroy(ready_);
    cudaEventDestroy(done_);
    cudaStreamDestroy(stream_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::CUDA; }
  const char* backend() const override { return "nccl"; }

  void all_reduce(Tensor& t, ReduceOp op, Completion when) override {
    expect_cuda(t, "all_reduce");
    start();
    check(ncclAllReduce(t.raw(), t.raw(), size_t(t.numel()), nccl_type(t.dtype()),
                        op == ReduceOp::Sum ? ncclSum : ncclMax, comm_, stream_),
          "ncclAllReduce");
    finish(when);
  }

  void reduce_scatter(const Tensor& in, Tensor& out, Completion when) override {
    expect_cuda(in, "reduce_scatter");
    NH_CHECK(in.numel() == out.numel() * size_ && in.dtype() == out.dtype(),
             "reduce_scatter: in must hold size() parts of out");
    start();
    check(ncclReduceScatter(in.raw(), out.raw(), size_t(out.numel()), nccl_type(in.dtype()),
                            ncclSum, comm_, stream_),
          "ncclReduceScatter");
    finish(when);
  }

  void all_gather(const Tensor& in, Tensor& out, Completion when) override {
    expect_cuda(out, "all_gather");
    NH_CHECK(out.numel() == in.numel() * size_ && in.dtype() == out.dtype(),
             "all_gather: out must hold size() parts of in");
    start();
    check(ncclAllGather(in.raw(), out.raw(), size_t(in.numel()), nccl_type(in.dtype()), comm_,
                        stream_),
          "ncclAllGather");
    finish(when);
  }

  void broadcast(Tensor& t, int root) override {
    expect_cuda(t, "broadcast");
    start();
    check(ncclBroadcast(t.raw(), t.raw(), size_t(t.numel()), nccl_type(t.dtype()), root, comm_,
                        stream_),
          "ncclBroadcast");
    finish(Completion::Now);
  }

  void wait() override {
    if (!pending_) return;
    check(cudaEventRecord(done_, stream_), "cudaEventRecord");
    check(cudaStreamWaitEvent(compute_stream(), done_, 0), "cudaStreamWaitEvent");
    pending_ = false;
  }

  void barrier() override {
    Tensor one = Tensor::zeros({1}, DType::F32, Device::CUDA);
    all_reduce(one, ReduceOp::Sum, Completion::Now);
    check(cudaStreamSynchronize(compute_stream()), "cudaStreamSynchronize");
  }

  std::unique_ptr<Communicator> split(int color, int key) const override {
    ncclComm_t sub;
    check(ncclCommSplit(comm_, color, key, &sub, nullptr), "ncclCommSplit");
    return std::make_unique<NcclCommunicator>(sub);
  }

 private:
  // The collective starts after the work queued on the compute stream so far.
  void start() {
    check(cudaEventRecord(ready_, compute_stream()), "cudaEventRecord");
    check(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
  }
  void finish(Completion when) {
    pending_ = true;
    if (when == Completion::Now) wait();
  }

  ncclComm_t comm_;
  int rank_ = 0, size_ = 1;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  bool pending_ = false;
};

}  // namespace

std::unique_ptr<Communicator> nccl_world(const LaunchInfo& info) {
  int devices = 0;
  check(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
  if (info.local_rank >= devices)
    throw Error("launch", "local rank", "below this host's GPU count " + std::to_string(devices),
                std::to_string(info.local_rank));
  check(cudaSetDevice(info.local_rank), "cudaSetDevice");
  ncclUniqueId id{};
  if (info.rank == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  const std::string bytes =
      rendezvous_broadcast(info, std::string(reinterpret_cast<const char*>(&id), sizeof id));
  if (bytes.size() != sizeof id)
    throw Error("rendezvous", "NCCL id", std::to_string(sizeof id) + " bytes",
                std::to_string(bytes.size()));
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(&id));
  ncclComm_t comm;
  check(ncclCommInitRank(&comm, info.world_size, id, info.rank), "ncclCommInitRank");
  return std::make_unique<NcclCommunicator>(comm);
}

}  // namespace nh
