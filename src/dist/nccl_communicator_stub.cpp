#include "dist/nccl_communicator.h"

namespace nh {

std::unique_ptr<Communicator> nccl_world(const LaunchInfo&) {
  throw Error("launch", "device", "the CPU: this build has no CUDA", "cuda");
}

}  // namespace nh
