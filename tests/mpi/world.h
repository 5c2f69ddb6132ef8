// The world of the ranks a launcher started for these tests: MPI on CPU ranks (mpiexec with 2
// and 4 ranks, tests/CMakeLists.txt), or NCCL on GPUs when built as nemotronh-test-nccl
// (NH_TEST_NCCL; scripts/gpu_distributed.sh starts one process per GPU). Every rank runs every
// test; a failure on any rank fails the run.
#pragma once

#include "dist/launch.h"

namespace nh::test {

inline Communicator& world() {
#ifdef NH_TEST_NCCL
  constexpr Device kDevice = Device::CUDA;
#else
  constexpr Device kDevice = Device::CPU;
#endif
  static const std::unique_ptr<Communicator> w = world_communicator(launch_info(), kDevice);
  return *w;
}

}  // namespace nh::test
