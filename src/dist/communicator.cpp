#include "dist/communicator.h"

namespace nh {

double Communicator::all_reduce(double value, ReduceOp op) {
  Tensor t = Tensor::from(std::vector<double>{value}, {1}).to(device());
  all_reduce(t, op);
  return read_float(t.to(Device::CPU), 0);
}

void SingleCommunicator::reduce_scatter(const Tensor& in, Tensor& out, Completion) {
  if (!same_memory(in, out)) out.copy_from(in.reshape(out.shape()));
}

void SingleCommunicator::all_gather(const Tensor& in, Tensor& out, Completion) {
  if (!same_memory(in, out)) out.copy_from(in.reshape(out.shape()));
}

}  // namespace nh
