// Used when the build has no CUDA backend: there is no GPU work to capture.
#include "core/cuda_graph.h"

#include "core/error.h"

namespace nh {

CudaGraph::CudaGraph(const std::function<void()>&) {
  throw Error("this nemotronh was built without CUDA (configure with -DNH_CUDA=ON)");
}
CudaGraph::~CudaGraph() = default;
CudaGraph::CudaGraph(CudaGraph&&) noexcept = default;
CudaGraph& CudaGraph::operator=(CudaGraph&&) noexcept = default;
void CudaGraph::launch() const {}

}  // namespace nh
