#include "dist/launch.h"

#include <cstdlib>
#include <optional>

#include "dist/mpi_communicator.h"
#include "dist/nccl_communicator.h"

extern char** environ;

namespace nh {

namespace {

std::map<std::string, std::string> process_environment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return env;
}

std::optional<int> int_var(const std::map<std::string, std::string>& env, const std::string& name,
                           int min) {
  auto it = env.find(name);
  if (it == env.end()) return std::nullopt;
  size_t used = 0;
  long v = -1;
  try {
    v = std::stol(it->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != it->second.size() || v < min || v > (1 << 24))
    throw Error("environment", name, "an integer of at least " + std::to_string(min),
                "'" + it->second + "'");
  return int(v);
}

}  // namespace

LaunchInfo launch_info(const std::map<std::string, std::string>* env_in) {
  const std::map<std::string, std::string> env = env_in ? *env_in : process_environment();
  LaunchInfo info;
  struct Scheme {
    const char *launcher, *rank, *size, *local;
  };
  for (const Scheme s : {Scheme{"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
                         Scheme{"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                                "OMPI_COMM_WORLD_LOCAL_RANK"},
                         Scheme{"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"}}) {
    const auto rank = int_var(env, s.rank, 0);
    const auto size = int_var(env, s.size, 1);
    if (!rank && !size) continue;
    if (!rank || !size)
      throw Error("environment", rank ? s.size : s.rank,
                  std::string("set together with ") + (rank ? s.rank : s.size), "unset");
    if (*rank >= *size)
      throw Error("environment", s.rank,
                  "below " + std::string(s.size) + " = " + std::to_string(*size),
                  std::to_string(*rank));
    info.launcher = s.launcher;
    info.rank = *rank;
    info.world_size = *size;
    info.local_rank = int_var(env, s.local, 0).value_or(0);
    break;
  }
  if (auto it = env.find("MASTER_ADDR"); it != env.end() && !it->second.empty())
    info.master_addr = it->second;
  info.master_port = int_var(env, "MASTER_PORT", 1).value_or(info.master_port);
  // torchrun's agent holds its own store on MASTER_PORT; ours then listens on the next port.
  if (auto it = env.find("TORCHELASTIC_USE_AGENT_STORE"); it != env.end() && it->second == "True")
    ++info.master_port;
  if (info.master_port > 65535)
    throw Error("environment", "MASTER_PORT", "a TCP port (1-65535)",
                std::to_string(info.master_port));
  return info;
}

std::unique_ptr<Communicator> world_communicator(const LaunchInfo& info, Device device) {
  if (info.world_size == 1) return std::make_unique<SingleCommunicator>(device);
  if (device == Device::CUDA) {
    setenv("NCCL_NVLS_ENABLE", "0", 0);  // NVLink multicast stays off (docs/DISTRIBUTED.md)
    return nccl_world(info);
  }
  return mpi_world(info);
}

}  // namespace nh
