// A CUDA graph: the GPU work a function enqueues on the ops' stream, captured once and replayed
// with one launch, which removes the per-kernel launch cost of a step that runs the same kernels
// on the same buffers every time (a decode step). Built from cuda_graph.cu with the CUDA backend,
// from cuda_graph_stub.cpp otherwise.
#pragma once

#include <functional>

namespace nh {

class CudaGraph {
 public:
  CudaGraph() = default;
  // Captures what `work` enqueues (it runs nothing on the GPU while capturing). Throws nh::Error
  // when the work cannot be captured (it synchronised with the host, say); nothing stays
  // captured then.
  explicit CudaGraph(const std::function<void()>& work);
  ~CudaGraph();
  CudaGraph(CudaGraph&& other) noexcept;
  CudaGraph& operator=(CudaGraph&& other) noexcept;
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Enqueues the captured work on the ops' stream.
  void launch() const;

 private:
  void* exec_ = nullptr;  // cudaGraphExec_t
};

}  // namespace nh
