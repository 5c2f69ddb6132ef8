#include "core/cuda_graph.h"

#include <cuda_runtime.h>

#include <string>
#include <utility>

#include "core/error.h"

namespace nh {

namespace {

cudaStream_t ops_stream() { return cudaStreamPerThread; }

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(std::string("CUDA graph: ") + what + ": " + cudaGetErrorString(e));
}

}  // namespace

CudaGraph::CudaGraph(const std::function<void()>& work) {
  // Thread-local mode: other threads' CUDA calls (a server's) neither break the capture nor
  // are refused by it.
  check(cudaStreamBeginCapture(ops_stream(), cudaStreamCaptureModeThreadLocal), "begin capture");
  cudaGraph_t graph = nullptr;
  try {
    work();
  } catch (...) {
    cudaStreamEndCapture(ops_stream(), &graph);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();  // the capture's error is reported by the exception
    throw;
  }
  const cudaError_t ended = cudaStreamEndCapture(ops_stream(), &graph);
  if (ended != cudaSuccess) {
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    check(ended, "end capture");
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  check(made, "instantiate");
  exec_ = exec;
}

CudaGraph::~CudaGraph() {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
}

CudaGraph::CudaGraph(CudaGraph&& other) noexcept : exec_(std::exchange(other.exec_, nullptr)) {}

CudaGraph& CudaGraph::operator=(CudaGraph&& other) noexcept {
  if (this != &other) {
    if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
    exec_ = std::exchange(other.exec_, nullptr);
  }
  return *this;
}

void CudaGraph::launch() const {
  check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), ops_stream()), "launch");
}

}  // namespace nh
