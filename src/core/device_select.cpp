#include "core/device_select.h"

#include "core/cuda_memory.h"
#include "ops/dispatch.h"

namespace nh {

Device select_device(const std::string& name, const std::string& where) {
  const bool gpu = NH_HAVE_CUDA_OPS && cuda_available();
  if (name == "cpu") return Device::CPU;
  if (name == "auto") return gpu ? Device::CUDA : Device::CPU;
  if (name != "cuda") throw Error(where, "device", "one of cpu, cuda, auto", name);
  if (!NH_HAVE_CUDA_OPS)
    throw Error(where, "device", "cpu (this nemotronh was built without CUDA kernels)", name);
  if (!gpu) throw Error(where, "device", "cpu (no CUDA GPU is visible)", name);
  return Device::CUDA;
}

DType select_compute_dtype(const std::string& name, Device device, const std::string& where) {
  if (name.empty()) return device == Device::CUDA ? DType::BF16 : DType::F32;
  if (name == "fp32") return DType::F32;
  if (name != "bf16") throw Error(where, "value", "fp32 or bf16", name);
  if (device == Device::CPU)
    throw Error(where, "value", "fp32 on the CPU (bf16 compute runs on cuda)", name);
  return DType::BF16;
}

double gpu_bf16_peak_flops() {
  const std::string n = cuda_device_name();
  auto has = [&](const char* s) { return n.find(s) != std::string::npos; };
  if (has("H200") || (has("H100") && (has("SXM") || has("HBM3")))) return 989.4e12;
  if (has("H100") && has("NVL")) return 835e12;
  if (has("H100")) return 756.5e12;  // PCIe
  if (has("A100")) return 312e12;
  return 0;
}

}  // namespace nh
