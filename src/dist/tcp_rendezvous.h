// The first contact of a job's processes, before any communicator exists: rank 0 listens on
// MASTER_ADDR:MASTER_PORT and hands every other rank the same bytes (NCCL's unique id).
#pragma once

#include <string>

#include "dist/launch.h"

namespace nh {

// Rank 0 passes `payload` and gets it back once all world_size - 1 other ranks have it; the
// others pass anything and get rank 0's payload. Peers that do not appear within
// `timeout_s` seconds are an Error naming the address.
std::string rendezvous_broadcast(const LaunchInfo& info, const std::string& payload,
                                 int timeout_s = 600);

}  // namespace nh
