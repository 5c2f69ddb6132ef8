#include "io/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/indexed_dataset_format.h"

namespace nh {

namespace {

// A read-only mapping of a whole file; an empty file (a dataset of empty sequences has an
// empty .bin) has no mapping, since mmap of zero bytes fails.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(path, "file", "a readable file", std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw Error(path, "file", "a regular file", "something else (a directory?)");
    }
    size_ = size_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
      const int map_errno = errno;
      ::close(fd);  // the mapping keeps the file open
      if (p == MAP_FAILED)
        throw Error(path, "file", "a file that can be mapped", std::strerror(map_errno));
      data_ = static_cast<const uint8_t*>(p);
    } else {
      ::close(fd);
    }
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Whether int32 holds a stored token exactly (int64 beyond its range, fractional or huge floats
// do not).
template <class T>
bool fits_int32(T v) {
  if constexpr (std::is_integral_v<T>) {
    return std::in_range<int32_t>(v);
  } else {
    return std::trunc(v) == v && double(v) >= -2147483648.0 && double(v) <= 2147483647.0;
  }
}

// Tokens of one dtype widened to int32; one int32 cannot hold is an Error rather than a
// silently wrong id.
template <class T>
void widen(const uint8_t* p, int64_t n, int32_t* out, const std::string& where,
           const std::string& what) {
  for (int64_t j = 0; j < n; ++j) {
    T v;
    std::memcpy(&v, p + j * int64_t(sizeof(T)), sizeof(T));
    if (!fits_int32(v))
      throw Error(where, what + " token " + std::to_string(j), "an id that fits int32",
                  std::to_string(v));
    out[j] = int32_t(v);
  }
}

std::string range_text(int64_t lo, int64_t hi, TokenDType t) {
  return "an id in [" + std::to_string(lo) + ", " + std::to_string(hi) + "] (" +
         token_dtype_name(t) + ")";
}

// The ids a dtype stores exactly: float32 holds every integer up to 2^24.
std::pair<int64_t, int64_t> id_range(TokenDType t) {
  switch (t) {
    case TokenDType::U8:
      return {0, 255};
    case TokenDType::I8:
      return {-128, 127};
    case TokenDType::I16:
      return {-32768, 32767};
    case TokenDType::U16:
      return {0, 65535};
    case TokenDType::F32:
      return {-(int64_t(1) << 24), int64_t(1) << 24};
    case TokenDType::I32:
    case TokenDType::I64:
    case TokenDType::F64:
      break;
  }
  return {std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()};
}

template <class T>
void encode_as(const std::vector<int32_t>& tokens, std::vector<char>& out) {
  const size_t start = out.size();
  out.resize(start + tokens.size() * sizeof(T));
  for (size_t j = 0; j < tokens.size(); ++j) {
    const T v = T(tokens[j]);
    std::memcpy(out.data() + start + j * sizeof(T), &v, sizeof(T));
  }
}

// Bytes of the .bin are gathered up to this size before one write call.
constexpr size_t kWriteBufferBytes = size_t(1) << 20;

}  // namespace

// ------------------------------------------------------------------------------------------
// Reader

struct IndexedDataset::Impl {
  explicit Impl(const std::string& prefix)
      : prefix(prefix),
        idx_path(prefix + ".idx"),
        bin_path(prefix + ".bin"),
        idx(idx_path),
        bin(bin_path),
        index(parse_megatron_index(idx.data(), idx.size(), bin.size(), idx_path, bin_path)) {}

  void check_sequence(int64_t i) const {
    if (i < 0 || i >= index.num_sequences)
      throw Error(prefix, "sequence index",
                  "a value in [0, " + std::to_string(index.num_sequences) + ")", std::to_string(i));
  }

  std::string prefix, idx_path, bin_path;
  MappedFile idx, bin;
  MegatronIndex index;
};

IndexedDataset::IndexedDataset(const std::string& prefix) : impl_(std::make_unique<Impl>(prefix)) {}
IndexedDataset::~IndexedDataset() = default;
IndexedDataset::IndexedDataset(IndexedDataset&&) noexcept = default;

int64_t IndexedDataset::num_sequences() const { return impl_->index.num_sequences; }
int64_t IndexedDataset::num_documents() const { return impl_->index.num_document_indices - 1; }
TokenDType IndexedDataset::dtype() const { return impl_->index.dtype; }
int64_t IndexedDataset::total_tokens() const { return impl_->index.total_tokens; }

int64_t IndexedDataset::sequence_length(int64_t i) const {
  impl_->check_sequence(i);
  return impl_->index.length(i);
}

std::vector<int32_t> IndexedDataset::get(int64_t i, int64_t offset, int64_t length) const {
  impl_->check_sequence(i);
  const MegatronIndex& ix = impl_->index;
  const int64_t n = ix.length(i);
  if (offset < 0 || offset > n)
    throw Error(impl_->prefix, "sequence " + std::to_string(i) + " offset",
                "a value in [0, " + std::to_string(n) + "]", std::to_string(offset));
  if (length < 0) length = n - offset;
  if (length > n - offset)
    throw Error(
        impl_->prefix, "sequence " + std::to_string(i) + " length",
        "at most " + std::to_string(n - offset) + " tokens after offset " + std::to_string(offset),
        std::to_string(length));
  std::vector<int32_t> out(size_t(length), 0);
  if (length == 0) return out;
  const size_t item = token_dtype_size(ix.dtype);
  const uint8_t* p = impl_->bin.data() + ix.pointer(i) + offset * int64_t(item);
  const std::string what = "sequence " + std::to_string(i);
  const std::string& where = impl_->bin_path;
  switch (ix.dtype) {
    case TokenDType::U8:
      widen<uint8_t>(p, length, out.data(), where, what);
      break;
    case TokenDType::I8:
      widen<int8_t>(p, length, out.data(), where, what);
      break;
    case TokenDType::I16:
      widen<int16_t>(p, length, out.data(), where, what);
      break;
    case TokenDType::U16:
      widen<uint16_t>(p, length, out.data(), where, what);
      break;
    case TokenDType::I32:
      widen<int32_t>(p, length, out.data(), where, what);
      break;
    case TokenDType::I64:
      widen<int64_t>(p, length, out.data(), where, what);
      break;
    case TokenDType::F32:
      widen<float>(p, length, out.data(), where, what);
      break;
    case TokenDType::F64:
      widen<double>(p, length, out.data(), where, what);
      break;
  }
  return out;
}

std::pair<int64_t, int64_t> IndexedDataset::document(int64_t d) const {
  const MegatronIndex& ix = impl_->index;
  if (d < 0 || d >= num_documents())
    throw Error(impl_->prefix, "document index",
                "a value in [0, " + std::to_string(num_documents()) + ")", std::to_string(d));
  return {ix.document_index(d), ix.document_index(d + 1)};
}

// ------------------------------------------------------------------------------------------
// Writer

struct IndexedDatasetWriter::Impl {
  Impl(const std::string& prefix, TokenDType dtype)
      : idx_path(prefix + ".idx"), bin_path(prefix + ".bin"), dtype(dtype), bin(bin_path) {}

  void flush() {
    bin.write(buffer.data(), buffer.size());
    buffer.clear();
  }

  std::string idx_path, bin_path;
  TokenDType dtype;
  AtomicFileWriter bin;
  std::vector<char> buffer;
  std::vector<int32_t> lengths;
  std::vector<int64_t> document_indices{0};
  bool finalized = false;
};

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix, TokenDType dtype) {
  if (token_dtype_size(dtype) == 0)
    throw Error(prefix + ".idx", "dtype code", "1..8", std::to_string(int(dtype)));
  impl_ = std::make_unique<Impl>(prefix, dtype);
}

IndexedDatasetWriter::~IndexedDatasetWriter() = default;

void IndexedDatasetWriter::add_sequence(const std::vector<int32_t>& tokens) {
  Impl& w = *impl_;
  NH_CHECK(!w.finalized, "IndexedDatasetWriter used after finalize");
  const std::string what = "sequence " + std::to_string(w.lengths.size());
  if (tokens.size() > size_t(std::numeric_limits<int32_t>::max()))
    throw Error(w.bin_path, what, "at most 2^31 - 1 tokens (lengths are int32)",
                std::to_string(tokens.size()));
  const auto [lo, hi] = id_range(w.dtype);
  // Checked before anything is buffered, so a rejected sequence leaves the writer usable.
  for (size_t j = 0; j < tokens.size(); ++j)
    if (tokens[j] < lo || tokens[j] > hi)
      throw Error(w.bin_path, what + " token " + std::to_string(j), range_text(lo, hi, w.dtype),
                  std::to_string(tokens[j]));
  switch (w.dtype) {
    case TokenDType::U8:
      encode_as<uint8_t>(tokens, w.buffer);
      break;
    case TokenDType::I8:
      encode_as<int8_t>(tokens, w.buffer);
      break;
    case TokenDType::I16:
      encode_as<int16_t>(tokens, w.buffer);
      break;
    case TokenDType::U16:
      encode_as<uint16_t>(tokens, w.buffer);
      break;
    case TokenDType::I32:
      encode_as<int32_t>(tokens, w.buffer);
      break;
    case TokenDType::I64:
      encode_as<int64_t>(tokens, w.buffer);
      break;
    case TokenDType::F32:
      encode_as<float>(tokens, w.buffer);
      break;
    case TokenDType::F64:
      encode_as<double>(tokens, w.buffer);
      break;
  }
  w.lengths.push_back(int32_t(tokens.size()));
  if (w.buffer.size() >= kWriteBufferBytes) w.flush();
}

void IndexedDatasetWriter::end_document() {
  NH_CHECK(!impl_->finalized, "IndexedDatasetWriter used after finalize");
  impl_->document_indices.push_back(int64_t(impl_->lengths.size()));
}

void IndexedDatasetWriter::finalize() {
  Impl& w = *impl_;
  NH_CHECK(!w.finalized, "IndexedDatasetWriter finalized twice");
  w.finalized = true;
  // Megatron's reader needs the last document index to be the sequence count.
  if (w.document_indices.back() != int64_t(w.lengths.size()))
    w.document_indices.push_back(int64_t(w.lengths.size()));
  w.flush();
  AtomicFileWriter idx(w.idx_path);
  const std::string bytes = serialize_megatron_index(w.dtype, w.lengths, w.document_indices);
  idx.write(bytes.data(), bytes.size());
  w.bin.commit();
  try {
    idx.commit();
  } catch (...) {
    // A .bin without its .idx would look like a dataset to a directory listing.
    ::unlink(w.bin_path.c_str());
    throw;
  }
}

TokenDType token_dtype_for_vocab(int64_t vocab_size) {
  return vocab_size < 65500 ? TokenDType::U16 : TokenDType::I32;
}

}  // namespace nh
