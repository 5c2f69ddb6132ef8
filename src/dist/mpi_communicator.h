// The CPU communicator: MPI (OpenMPI from Debian), for ranks started by mpirun or srun. It
// reduces fp32, fp64 and integer tensors; bf16 is gathered and broadcast but not reduced (CPU
// ranks compute in fp32).
#pragma once

#include <memory>

#include "dist/launch.h"

namespace nh {

// MPI_COMM_WORLD, after initialising MPI once per process (finalised at exit). An Error when
// this build has no MPI, or when MPI's world does not match `info` (ranks not started by an
// MPI launcher).
std::unique_ptr<Communicator> mpi_world(const LaunchInfo& info);

}  // namespace nh
