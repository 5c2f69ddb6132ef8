// Which device a command or recipe runs on, and what that GPU can do.
#pragma once

#include <string>

#include "core/tensor.h"

namespace nh {

// "cpu", "cuda", or "auto" (cuda when this build has the CUDA kernels and a GPU is present,
// else cpu). Asking for cuda where it cannot run is an Error naming `where`.
Device select_device(const std::string& name, const std::string& where);

// The dense bf16 tensor-core peak FLOP/s of the current GPU when it is one we know (H100, H200,
// A100), else 0 (MFU is then not reported).
double gpu_bf16_peak_flops();

}  // namespace nh
