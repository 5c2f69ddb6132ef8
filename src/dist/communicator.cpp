#include "dist/communicator.h"

namespace nh {

double Communicator::all_reduce(double value, ReduceOp op) {
  Tensor t = Tensor::from(std::vector<double>{value}, {1}).to(device());
  all_reduce(t, op);
  return read_float(t.to(Device::CPU), 0);
}

Tensor all_gather_rows(Communicator& group, const Tensor& mine) {
  Shape shape = mine.shape();
  shape.at(0) *= group.size();
  Tensor all = Tensor::empty({mine.numel() * group.size()}, mine.dtype(), mine.device());
  group.all_gather(mine.reshape({mine.numel()}), all);
  return all.reshape(shape);
}

Tensor reduce_scatter_rows(Communicator& group, const Tensor& all) {
  Shape shape = all.shape();
  shape.at(0) /= group.size();
  Tensor mine = Tensor::empty(shape, all.dtype(), all.device());
  group.reduce_scatter(all, mine);
  return mine;
}

void SingleCommunicator::reduce_scatter(const Tensor& in, Tensor& out, Completion) {
  if (!same_memory(in, out)) out.copy_from(in.reshape(out.shape()));
}

void SingleCommunicator::all_gather(const Tensor& in, Tensor& out, Completion) {
  if (!same_memory(in, out)) out.copy_from(in.reshape(out.shape()));
}

}  // namespace nh
