// libFuzzer target: bytes as the value of NH_KERNELS. Every op of the kernel playground must get
// the index of one of its versions, or an nh::Error naming the variable (no other exception
// escapes, no crash).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "core/kernel_versions.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string value(reinterpret_cast<const char*>(data), size);
  if (value.find('\0') != std::string::npos) return 0;  // an environment value holds no NUL
  setenv("NH_KERNELS", value.c_str(), 1);
  for (const auto& entry : nh::kernel_playground()) {
    try {
      const int version = nh::kernel_version(entry.op);
      if (version < 0 || version >= int(entry.versions.size())) __builtin_trap();
    } catch (const nh::Error& e) {
      if (std::string(e.what()).rfind("NH_KERNELS", 0) != 0) __builtin_trap();
    }
  }
  return 0;
}
