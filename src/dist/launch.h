// Where this process stands in a multi-process job, read from the environment its launcher
// set. One process per GPU (or per CPU rank), started by any of:
//   torchrun-style     RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//   mpirun (OpenMPI)   OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
//   Slurm srun         SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID
// in that order of precedence. NCCL's first contact goes through MASTER_ADDR:MASTER_PORT
// (default 127.0.0.1:29500, which is right on one node); under torchrun, whose agent holds
// MASTER_PORT itself, through MASTER_PORT + 1.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "dist/communicator.h"

namespace nh {

struct LaunchInfo {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string launcher = "none";  // "torchrun", "mpirun", "slurm" or "none"
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;  // where rank 0 listens for the others (tcp_rendezvous.h)
};

// Reads `env` (the process environment when null). A malformed or inconsistent variable is an
// Error naming it.
LaunchInfo launch_info(const std::map<std::string, std::string>* env = nullptr);

// The world group for tensors on `device`: single-rank when world_size is 1, else NCCL on CUDA
// (NCCL_NVLS_ENABLE is set to 0 unless already set), MPI on the CPU. A backend this build lacks
// is an Error.
std::unique_ptr<Communicator> world_communicator(const LaunchInfo& info, Device device);

}  // namespace nh
