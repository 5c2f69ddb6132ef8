#include "core/kernel_versions.h"

#include <algorithm>
#include <cstdlib>

#include "core/error.h"

namespace nh {

const std::vector<KernelVersions>& kernel_playground() {
  static const std::vector<KernelVersions> table = {
      // ops/cuda/ssd.cu: the fused bf16 kernels, or the tile kernels (fp32, any shape).
      {"ssd", {"fused", "tiles"}},
      // ops/cuda/attention.cu: tensor-core kernels with two or one 16-row query tiles per warp,
      // or the CUDA-core kernels (fp32, any head dim).
      {"attention", {"flash", "flash16", "simt"}},
      // ops/cuda/adamw.cu: four elements per thread where the arrays are aligned, or one.
      {"adamw", {"vec4", "scalar"}},
      // ops/cuda/rmsnorm.cu and gated_rmsnorm.cu: 16-byte packs of a row (or group) per
      // thread where its length and alignment allow, or single elements.
      {"rmsnorm", {"packed", "scalar"}},
      {"gated_rmsnorm", {"packed", "scalar"}},
      // ops/cuda/lm_head_loss.cu, for training: loss and gradients in one pass over the chunks
      // (three matrix products each), or the forward and then the backward (four).
      {"lm_head_loss", {"one_pass", "two_pass"}},
  };
  return table;
}

namespace {

const KernelVersions* find_op(std::string_view op) {
  for (const auto& entry : kernel_playground())
    if (entry.op == op) return &entry;
  return nullptr;
}

std::string known_entries() {
  std::string text;
  for (const auto& entry : kernel_playground())
    for (const auto& version : entry.versions)
      text += (text.empty() ? "" : ", ") + entry.op + "=" + version;
  return text;
}

}  // namespace

std::vector<std::string> kernel_versions(std::string_view op) {
  const KernelVersions* entry = find_op(op);
  return entry ? entry->versions : std::vector<std::string>{"default"};
}

int kernel_version(std::string_view op) {
  const char* value = std::getenv("NH_KERNELS");
  if (value == nullptr) return 0;
  int chosen = 0;
  const std::string_view all(value);
  for (size_t begin = 0; begin <= all.size();) {
    const size_t end = std::min(all.find(',', begin), all.size());
    const std::string_view item = all.substr(begin, end - begin);
    begin = end + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    const KernelVersions* entry = eq == item.npos ? nullptr : find_op(item.substr(0, eq));
    const auto at =
        entry ? std::find(entry->versions.begin(), entry->versions.end(), item.substr(eq + 1))
              : std::vector<std::string>::const_iterator();
    if (entry == nullptr || at == entry->versions.end())
      throw Error("NH_KERNELS", "entry", "op=version, one of " + known_entries(),
                  "\"" + std::string(item) + "\"");
    if (entry->op == op) chosen = int(at - entry->versions.begin());
  }
  return chosen;
}

KernelVersionScope::KernelVersionScope(const std::string& op, const std::string& version) {
  const KernelVersions* entry = find_op(op);
  if (entry == nullptr ||
      std::find(entry->versions.begin(), entry->versions.end(), version) == entry->versions.end())
    throw Error("kernel playground", "version", "one of " + known_entries(), op + "=" + version);
  if (const char* value = std::getenv("NH_KERNELS")) {
    had_ = true;
    previous_ = value;
  }
  setenv("NH_KERNELS", (op + "=" + version).c_str(), 1);
}

KernelVersionScope::~KernelVersionScope() {
  if (had_)
    setenv("NH_KERNELS", previous_.c_str(), 1);
  else
    unsetenv("NH_KERNELS");
}

}  // namespace nh
