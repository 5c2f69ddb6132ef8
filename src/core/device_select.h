// Which device a command or recipe runs on, and what that GPU can do.
#pragma once

#include <string>

#include "core/tensor.h"

namespace nh {

// "cpu", "cuda", or "auto" (cuda when this build has the CUDA kernels and a GPU is present,
// else cpu). Asking for cuda where it cannot run is an Error naming `where`.
Device select_device(const std::string& name, const std::string& where);

// The compute dtype for `device` from "fp32", "bf16" (the GPU only) or "" (the device's
// default: bf16 on the GPU, fp32 on the CPU). Anything else is an Error naming `where`.
DType select_compute_dtype(const std::string& name, Device device, const std::string& where);

// The dense bf16 tensor-core peak FLOP/s of the current GPU when it is one we know (H100, H200,
// A100), else 0 (MFU is then not reported).
double gpu_bf16_peak_flops();

}  // namespace nh
