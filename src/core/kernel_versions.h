// The kernel playground's switch. An op whose CUDA kernels come in several versions lists them
// here, its default first, and NH_KERNELS="op=version[,op=version…]" makes it run another one.
// The op harness (nemotronh-test-ops) checks every listed version against the CPU op and
// nemotronh-bench times every version side by side, so a new version is tried by naming it here
// and adding its branch to the op, without touching the engine.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace nh {

struct KernelVersions {
  std::string op;
  std::vector<std::string> versions;  // the default first
};

// Every op that has several versions.
const std::vector<KernelVersions>& kernel_playground();

// The versions of `op`: just "default" for an op not in the playground.
std::vector<std::string> kernel_versions(std::string_view op);

// The index in `op`'s versions of the one NH_KERNELS names for it (0 where it names none). Read
// at every call, so one process can switch. An entry that is not op=version of the playground
// is an Error naming NH_KERNELS.
int kernel_version(std::string_view op);

// NH_KERNELS set to op=version for the scope's lifetime (tests and benchmarks), then restored;
// an op or version the playground does not list is an Error.
class KernelVersionScope {
 public:
  KernelVersionScope(const std::string& op, const std::string& version);
  ~KernelVersionScope();
  KernelVersionScope(const KernelVersionScope&) = delete;
  KernelVersionScope& operator=(const KernelVersionScope&) = delete;

 private:
  bool had_ = false;
  std::string previous_;
};

}  // namespace nh
