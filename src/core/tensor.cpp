#include "core/tensor.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/cuda_memory.h"

namespace nh {

namespace {
std::atomic<int64_t> g_host_current{0}, g_host_peak{0};

void* host_allocate(size_t bytes) {
  // 64-byte alignment for vector loads; rounded up as aligned_alloc requires.
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) throw Error("out of host memory allocating " + std::to_string(bytes) + " bytes");
  const int64_t now = g_host_current += int64_t(bytes);
  int64_t peak = g_host_peak.load();
  while (now > peak && !g_host_peak.compare_exchange_weak(peak, now)) {
  }
  return p;
}
}  // namespace

HostMemoryStats host_memory_stats() { return {g_host_current.load(), g_host_peak.load()}; }
void reset_host_memory_peak() { g_host_peak = g_host_current.load(); }

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) throw Error("shape", "dimension", "a size >= 0", std::to_string(d));
    if (__builtin_mul_overflow(n, d, &n))
      throw Error("shape", "number of elements", "at most 2^63 - 1", shape_str(s));
  }
  return n;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  const size_t bytes = std::max<size_t>(t.nbytes(), 1);
  if (device == Device::CPU) {
    t.storage_ = std::shared_ptr<void>(host_allocate(bytes), [bytes](void* q) {
      g_host_current -= int64_t(bytes);
      std::free(q);
    });
  } else {
    t.storage_ = cuda_allocate(bytes);
  }
  t.data_ = t.storage_.get();
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device == Device::CPU)
    std::memset(t.data_, 0, t.nbytes());
  else
    cuda_memset_zero(t.data_, t.nbytes());
  return t;
}

Tensor Tensor::view(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> keepalive,
                    Device device) {
  Tensor t;
  t.shape_ = shape;
  t.numel_ = shape_numel(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::move(keepalive);
  t.data_ = data;
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  if (shape_numel(shape) != numel_)
    throw Error("reshape", "number of elements", std::to_string(numel_),
                shape_str(shape) + " with " + std::to_string(shape_numel(shape)));
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  NH_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "slice0 out of range");
  Tensor t = *this;
  const int64_t row = shape_[0] ? numel_ / shape_[0] : 0;
  t.shape_[0] = end - begin;
  t.numel_ = row * (end - begin);
  t.data_ = static_cast<char*>(data_) + size_t(begin * row) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::clone() const { return to(dtype_); }

Tensor Tensor::to(DType dtype) const {
  Tensor t = empty(shape_, dtype, device_);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

namespace {
template <class T>
void store_all(const Tensor& src, T* dst) {
  const int64_t n = src.numel();
  for (int64_t i = 0; i < n; ++i) dst[i] = T(read_float(src, i));
}
}  // namespace

double read_float(const Tensor& t, int64_t i) {
  const void* p = t.raw();
  switch (t.dtype()) {
    case DType::F64: return static_cast<const double*>(p)[i];
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return f16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::I64: return double(static_cast<const int64_t*>(p)[i]);
    case DType::I32: return static_cast<const int32_t*>(p)[i];
    case DType::U8: return static_cast<const uint8_t*>(p)[i];
  }
  return 0;
}

namespace {
// The float dtypes cuda_convert handles.
bool gpu_converts(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16; }
}  // namespace

void Tensor::copy_from(const Tensor& src) {
  if (src.shape_ != shape_)
    throw Error("copy", "shape", shape_str(shape_), shape_str(src.shape_));
  if (device_ != Device::CPU || src.device_ != Device::CPU) {
    if (src.dtype_ == dtype_)
      cuda_copy(data_, device_, src.data_, src.device_, nbytes());
    else if (device_ == src.device_)
      cuda_convert(data_, dtype_, src.data_, src.dtype_, numel_);
    else if (src.device_ == Device::CPU || (gpu_converts(src.dtype_) && gpu_converts(dtype_)))
      copy_from(src.to(dtype_));  // convert where src is (fast on the GPU), then copy
    else
      copy_from(src.to(Device::CPU));  // dtypes the GPU does not convert: on the host
    return;
  }
  if (src.dtype_ == dtype_) {
    std::memmove(data_, src.data_, nbytes());
    return;
  }
  const int64_t n = numel_;
  switch (dtype_) {
    case DType::F64: store_all(src, static_cast<double*>(data_)); break;
    case DType::F32: store_all(src, static_cast<float*>(data_)); break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i)
        static_cast<uint16_t*>(data_)[i] = float_to_f16(float(read_float(src, i)));
      break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i)
        static_cast<uint16_t*>(data_)[i] = float_to_bf16(float(read_float(src, i)));
      break;
    case DType::I64: store_all(src, static_cast<int64_t*>(data_)); break;
    case DType::I32: store_all(src, static_cast<int32_t*>(data_)); break;
    case DType::U8: store_all(src, static_cast<uint8_t*>(data_)); break;
  }
}

void Tensor::fill(double value) {
  Tensor one = Tensor::from(std::vector<double>(size_t(numel_), value), shape_);
  copy_from(one);
}

void expect_shape(const Tensor& t, const Shape& shape, const std::string& what) {
  if (t.shape() != shape) throw Error(what, "shape", shape_str(shape), shape_str(t.shape()));
}

}  // namespace nh
