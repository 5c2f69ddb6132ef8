// Where a process stands in a job, from each launcher's variables, and the errors for bad ones.
#include "dist/launch.h"

#include <gtest/gtest.h>

#include "support/expect.h"

namespace nh {
namespace {

using Env = std::map<std::string, std::string>;

TEST(LaunchInfo, NoLauncherIsOneProcess) {
  const Env env;
  const LaunchInfo info = launch_info(&env);
  EXPECT_EQ(info.world_size, 1);
  EXPECT_EQ(info.rank, 0);
  EXPECT_EQ(info.launcher, "none");
  EXPECT_EQ(info.master_port, 29500);
}

TEST(LaunchInfo, ReadsTorchrunMpirunAndSlurmVariablesInThatOrder) {
  const Env torchrun = {{"RANK", "3"},           {"WORLD_SIZE", "8"},
                        {"LOCAL_RANK", "1"},     {"MASTER_ADDR", "node7"},
                        {"MASTER_PORT", "1234"}, {"SLURM_PROCID", "5"},
                        {"SLURM_NTASKS", "16"}};
  LaunchInfo info = launch_info(&torchrun);
  EXPECT_EQ(info.launcher, "torchrun");
  EXPECT_EQ(info.rank, 3);
  EXPECT_EQ(info.world_size, 8);
  EXPECT_EQ(info.local_rank, 1);
  EXPECT_EQ(info.master_addr, "node7");
  EXPECT_EQ(info.master_port, 1234);

  const Env mpirun = {{"OMPI_COMM_WORLD_RANK", "2"},
                      {"OMPI_COMM_WORLD_SIZE", "4"},
                      {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
                      {"SLURM_PROCID", "9"},
                      {"SLURM_NTASKS", "10"}};
  info = launch_info(&mpirun);
  EXPECT_EQ(info.launcher, "mpirun");
  EXPECT_EQ(info.rank, 2);
  EXPECT_EQ(info.world_size, 4);

  const Env slurm = {{"SLURM_PROCID", "9"}, {"SLURM_NTASKS", "10"}, {"SLURM_LOCALID", "1"}};
  info = launch_info(&slurm);
  EXPECT_EQ(info.launcher, "slurm");
  EXPECT_EQ(info.rank, 9);
  EXPECT_EQ(info.local_rank, 1);
}

TEST(LaunchInfo, UnderTorchrunsAgentStoreRank0ListensOnTheNextPort) {
  const Env env = {{"RANK", "0"},
                   {"WORLD_SIZE", "2"},
                   {"MASTER_PORT", "29500"},
                   {"TORCHELASTIC_USE_AGENT_STORE", "True"}};
  EXPECT_EQ(launch_info(&env).master_port, 29501);
}

TEST(LaunchInfo, BadVariablesAreErrorsNamingThem) {
  const std::vector<std::pair<Env, std::string>> cases = {
      {{{"RANK", "x"}, {"WORLD_SIZE", "2"}}, "RANK"},
      {{{"RANK", "2"}, {"WORLD_SIZE", "2"}}, "RANK"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "0"}}, "WORLD_SIZE"},
      {{{"RANK", "0"}}, "WORLD_SIZE"},
      {{{"WORLD_SIZE", "2"}}, "RANK"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "-1"}}, "LOCAL_RANK"},
      {{{"MASTER_PORT", "70000"}}, "MASTER_PORT"},
      {{{"MASTER_PORT", "12ab"}}, "MASTER_PORT"},
      {{{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "1"}}, "SLURM_PROCID"},
  };
  for (const auto& [env, name] : cases)
    test::expect_error([&] { launch_info(&env); }, "environment", name);
}

TEST(WorldCommunicator, OneProcessNeedsNoBackend) {
  const Env env;
  const auto world = world_communicator(launch_info(&env), Device::CPU);
  EXPECT_EQ(world->size(), 1);
  EXPECT_STREQ(world->backend(), "single");
  Tensor t = Tensor::from(std::vector<float>{1.5f, -2.0f}, {2});
  world->all_reduce(t);
  EXPECT_EQ(t.data<float>()[0], 1.5f);
  Tensor out = Tensor::empty({2}, DType::F32);
  world->all_gather(t, out);
  EXPECT_EQ(out.data<float>()[1], -2.0f);
  EXPECT_EQ(world->all_reduce(4.0), 4.0);
}

}  // namespace
}  // namespace nh
