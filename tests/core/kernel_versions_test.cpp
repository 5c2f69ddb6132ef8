#include "core/kernel_versions.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include "core/error.h"

namespace nh {
namespace {

// Sets NH_KERNELS (or clears it for null) and puts back what was there.
class KernelsVariable {
 public:
  explicit KernelsVariable(const char* value) {
    if (const char* old = std::getenv("NH_KERNELS")) saved_ = old, had_ = true;
    if (value)
      setenv("NH_KERNELS", value, 1);
    else
      unsetenv("NH_KERNELS");
  }
  ~KernelsVariable() {
    if (had_)
      setenv("NH_KERNELS", saved_.c_str(), 1);
    else
      unsetenv("NH_KERNELS");
  }

 private:
  std::string saved_;
  bool had_ = false;
};

TEST(KernelVersions, EveryPlaygroundOpHasADefaultAndAnotherVersion) {
  for (const auto& entry : kernel_playground()) {
    EXPECT_GE(entry.versions.size(), 2u) << entry.op;
    EXPECT_EQ(kernel_versions(entry.op), entry.versions);
  }
  EXPECT_EQ(kernel_versions("causal_conv1d"), std::vector<std::string>{"default"});
}

TEST(KernelVersions, UnsetOrSilentAboutTheOpMeansTheDefault) {
  const KernelsVariable unset(nullptr);
  EXPECT_EQ(kernel_version("attention"), 0);
  const KernelsVariable other("ssd=tiles");
  EXPECT_EQ(kernel_version("attention"), 0);
  EXPECT_EQ(kernel_version("ssd"), 1);
}

TEST(KernelVersions, PicksTheNamedVersionAmongSeveralEntries) {
  const KernelsVariable v("ssd=fused,attention=simt,,adamw=scalar");
  EXPECT_EQ(kernel_version("ssd"), 0);
  EXPECT_EQ(kernel_version("attention"), 2);
  EXPECT_EQ(kernel_version("adamw"), 1);
}

TEST(KernelVersions, AnUnknownOpOrVersionOrAMissingEqualsSignIsAnErrorNamingTheVariable) {
  for (const char* bad : {"attention=fast", "atention=simt", "attention", "=simt", "ssd=tiles,x"}) {
    const KernelsVariable v(bad);
    try {
      kernel_version("ssd");
      FAIL() << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("NH_KERNELS"), std::string::npos) << e.what();
    }
  }
}

TEST(KernelVersions, ScopeSetsTheVersionAndRestoresTheVariable) {
  const KernelsVariable v("ssd=tiles");
  {
    const KernelVersionScope scope("attention", "flash16");
    EXPECT_EQ(kernel_version("attention"), 1);
    EXPECT_EQ(kernel_version("ssd"), 0);  // the scope names only its op
  }
  EXPECT_EQ(kernel_version("ssd"), 1);
  EXPECT_EQ(kernel_version("attention"), 0);
  EXPECT_THROW(KernelVersionScope("attention", "fast"), Error);
  EXPECT_THROW(KernelVersionScope("causal_conv1d", "default"), Error);
}

}  // namespace
}  // namespace nh
