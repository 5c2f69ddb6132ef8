// nh::Tensor: a dense, contiguous, row-major array with a dtype, a shape and a
// device. Storage is shared (copies of a Tensor alias the same memory); it may
// own its bytes or view memory kept alive by someone else (an mmap'ed file).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace nh {

enum class Device : uint8_t { CPU, CUDA };
const char* device_name(Device d);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3]"
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised memory.
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::CPU);
  // A view of memory owned by `keepalive` (not copied).
  static Tensor view(void* data, const Shape& shape, DType dtype,
                     std::shared_ptr<void> keepalive, Device device = Device::CPU);
  // A CPU tensor holding a copy of `values`.
  template <class T>
  static Tensor from(const std::vector<T>& values, const Shape& shape);

  bool defined() const { return storage_ != nullptr || data_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return int(shape_.size()); }
  int64_t size(int i) const { return shape_.at(i < 0 ? i + ndim() : i); }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return size_t(numel_) * dtype_size(dtype_); }

  void* raw() const { return data_; }
  // Typed access; throws when T does not match the dtype.
  template <class T>
  T* data() const;

  // Same storage, new shape of the same number of elements.
  Tensor reshape(const Shape& shape) const;
  // Rows [begin, end) along dimension 0, sharing storage.
  Tensor slice0(int64_t begin, int64_t end) const;
  // Deep copy on the same device, optionally converting the dtype (on the GPU: float dtypes).
  Tensor clone() const;
  Tensor to(DType dtype) const;
  // A copy on `device` (this tensor itself when it is already there).
  Tensor to(Device device) const;
  // Same shape; converts the dtype and crosses devices as needed.
  void copy_from(const Tensor& src);
  void fill(double value);  // float and integer dtypes, any device

 private:
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<double>() { return DType::F64; }
template <>
constexpr DType dtype_of<float>() { return DType::F32; }
template <>
constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <>
constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <>
constexpr DType dtype_of<uint8_t>() { return DType::U8; }

template <class T>
T* Tensor::data() const {
  if (dtype_ != dtype_of<T>())
    throw Error("tensor", "dtype", dtype_name(dtype_of<T>()), dtype_name(dtype_));
  return static_cast<T*>(data_);
}

template <class T>
Tensor Tensor::from(const std::vector<T>& values, const Shape& shape) {
  Tensor t = empty(shape, dtype_of<T>());
  NH_CHECK(int64_t(values.size()) == t.numel(), "Tensor::from: size does not match shape");
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}

// Bytes of host memory held by tensors now, and the most held since the last reset (for
// measuring what activation recomputation saves).
struct HostMemoryStats {
  int64_t current = 0, peak = 0;
};
HostMemoryStats host_memory_stats();
void reset_host_memory_peak();

// Reads element i of a float tensor of any float dtype as double (CPU).
double read_float(const Tensor& t, int64_t i);
// Throws an Error naming `what` unless t has this shape.
void expect_shape(const Tensor& t, const Shape& shape, const std::string& what);

}  // namespace nh
