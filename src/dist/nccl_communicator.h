// The GPU communicator: NCCL, one process per GPU. The world's unique id travels from rank 0 to
// the others over TCP (dist/tcp_rendezvous.h at MASTER_ADDR:MASTER_PORT), so any launcher works;
// sub-groups come from ncclCommSplit. Collectives run on a stream of their own, ordered after
// the compute stream's work with events.
#pragma once

#include <memory>

#include "dist/launch.h"

namespace nh {

// The world communicator on GPU `info.local_rank`. An Error when this build has no CUDA.
std::unique_ptr<Communicator> nccl_world(const LaunchInfo& info);

}  // namespace nh
