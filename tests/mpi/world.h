// The MPI world of the ranks mpiexec started for these tests (tests/CMakeLists.txt runs them
// with 2 and 4 ranks). Every rank runs every test; a failure on any rank fails the run.
#pragma once

#include "dist/launch.h"

namespace nh::test {

inline Communicator& world() {
  static const std::unique_ptr<Communicator> w = world_communicator(launch_info(), Device::CPU);
  return *w;
}

}  // namespace nh::test
