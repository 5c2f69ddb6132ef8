// How an op picks its backend: by the device of its first tensor. Every op
// header declares the same functions in nh::cpu and nh::cuda and forwards to
// one of them with NH_DISPATCH. Inside the CPU backend, with_float_type runs a
// templated body for float or double tensors (double is for gradient checks).
#pragma once

#include "core/error.h"
#include "core/tensor.h"

#ifndef NH_HAVE_CUDA
#define NH_HAVE_CUDA 0
#endif

#if NH_HAVE_CUDA
#define NH_DISPATCH(device, call)                 \
  do {                                            \
    if ((device) == ::nh::Device::CPU) cpu::call; \
    else cuda::call;                              \
  } while (0)
#else
#define NH_DISPATCH(device, call)                                                   \
  do {                                                                              \
    if ((device) == ::nh::Device::CPU) cpu::call;                                   \
    else throw ::nh::Error("this nemotronh was built without CUDA (NH_CUDA=OFF)"); \
  } while (0)
#endif

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
