// How an op picks its backend: by the device of its first tensor. Every op
// header declares the same functions in nh::cpu and nh::cuda and forwards to
// one of them with NH_DISPATCH (NH_DISPATCH_RETURN for ops that return a value).
// Inside the CPU backend, with_float_type runs a templated body for float or
// double tensors (double is for gradient checks).
//
// NH_HAVE_CUDA_OPS is defined by the build when the CUDA op kernels
// (src/ops/cuda/*.cu) are compiled in; without them an op on a CUDA tensor is
// an Error saying so.
#pragma once

#include "core/error.h"
#include "core/tensor.h"

#ifndef NH_HAVE_CUDA_OPS
#define NH_HAVE_CUDA_OPS 0
#endif

#if NH_HAVE_CUDA_OPS
#define NH_DISPATCH_RETURN(device, call) \
  return (device) == ::nh::Device::CPU ? cpu::call : cuda::call
#else
#define NH_DISPATCH_RETURN(device, call)                                                   \
  do {                                                                                     \
    if ((device) != ::nh::Device::CPU)                                                     \
      throw ::nh::Error("this nemotronh has no CUDA kernels for its ops (built with "      \
                        "NH_CUDA=OFF, or before the CUDA backend): use --device cpu");     \
    return cpu::call;                                                                      \
  } while (0)
#endif
#define NH_DISPATCH(device, call) NH_DISPATCH_RETURN(device, call)

namespace nh {

// Calls f(T{}) with T = float or double according to dtype.
template <class F>
void with_float_type(DType dtype, F&& f) {
  if (dtype == DType::F32)
    f(float{});
  else if (dtype == DType::F64)
    f(double{});
  else
    throw Error("cpu op", "dtype", "F32 or F64", dtype_name(dtype));
}

}  // namespace nh
