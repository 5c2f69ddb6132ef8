// nh::Communicator: collectives over the ranks of one process group, on the tensors of one
// device. NCCL on GPUs (dist/nccl_communicator), MPI on CPUs (dist/mpi_communicator), and a
// single-rank group that needs neither. Every rank of a group calls the same collectives in
// the same order with tensors of the same shapes and dtypes.
//
// A collective either finishes before it returns (Completion::Now) or is only started
// (Completion::Later): on the GPU it then runs on the communicator's own stream beside the
// compute stream, and wait() makes the compute stream (and, on the CPU, the host) wait for every
// collective started so far. The tensors of a started collective must stay alive and untouched
// until wait().
#pragma once

#include <memory>
#include <string>

#include "core/tensor.h"

namespace nh {

enum class ReduceOp { Sum, Max };
enum class Completion { Now, Later };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual Device device() const = 0;  // where the tensors it reduces live
  // "nccl", "mpi" or "single".
  virtual const char* backend() const = 0;

  // t = op over ranks of t, in place.
  virtual void all_reduce(Tensor& t, ReduceOp op = ReduceOp::Sum,
                          Completion when = Completion::Now) = 0;
  // out = rank's part of Σ over ranks of in, where in holds size() parts of out.numel() each,
  // rank-major (in may alias the rank's part of a larger buffer; out may alias in's part).
  virtual void reduce_scatter(const Tensor& in, Tensor& out, Completion when = Completion::Now) = 0;
  // out = the in of every rank, concatenated rank-major (out.numel() = size() · in.numel());
  // in may be out's own part for this rank (in place).
  virtual void all_gather(const Tensor& in, Tensor& out, Completion when = Completion::Now) = 0;
  // t = root's t.
  virtual void broadcast(Tensor& t, int root) = 0;
  // Waits for the collectives started with Completion::Later.
  virtual void wait() = 0;
  virtual void barrier() = 0;
  // The ranks that pass the same color form a new group, ordered by key, then by rank.
  virtual std::unique_ptr<Communicator> split(int color, int key) const = 0;

  // A host value reduced over the ranks (through a one-element tensor on device()).
  double all_reduce(double value, ReduceOp op = ReduceOp::Sum);
};

// The group of this process alone: every collective is a copy or nothing.
class SingleCommunicator final : public Communicator {
 public:
  explicit SingleCommunicator(Device device) : device_(device) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  Device device() const override { return device_; }
  const char* backend() const override { return "single"; }
  void all_reduce(Tensor&, ReduceOp, Completion) override {}
  void reduce_scatter(const Tensor& in, Tensor& out, Completion) override;
  void all_gather(const Tensor& in, Tensor& out, Completion) override;
  void broadcast(Tensor&, int) override {}
  void wait() override {}
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) const override {
    return std::make_unique<SingleCommunicator>(device_);
  }

 private:
  Device device_;
};

// Every rank's `mine` stacked along dimension 0 in rank order: [size() · rows, ...], new.
Tensor all_gather_rows(Communicator& group, const Tensor& mine);
// This rank's 1/size() of the rows of Σ over ranks of `all` (its rows divide by size()), new.
Tensor reduce_scatter_rows(Communicator& group, const Tensor& all);

// True when two tensors share their first byte (an in-place collective).
inline bool same_memory(const Tensor& a, const Tensor& b) { return a.raw() == b.raw(); }

}  // namespace nh
