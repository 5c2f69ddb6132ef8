#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <unordered_set>

#include "io/atomic_file.h"

namespace nh {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is viewed without conversion");

namespace {

using ojson = nlohmann::ordered_json;

// The reference reader's limit; a larger header is a corrupt length field.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr int kMaxDepth = 16;
constexpr uint64_t kMaxInt64 = uint64_t(std::numeric_limits<int64_t>::max());

// Strings from the file go into error messages shortened and with bytes
// outside printable ASCII escaped, so a message stays one readable line.
std::string clip(const std::string& s, size_t max = 120) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (s.size() > max) out += "...";
  return out;
}
std::string in_quotes(const std::string& s) {
  std::string q = "\"";
  q += clip(s, 80);
  q += '"';
  return q;
}

// A JSON value for an error message. Containers other than short flat arrays
// are only named: dump() recurses, and a hostile header can nest deeply.
std::string describe(const ojson& v) {
  bool flat = v.is_primitive() || (v.is_array() && v.size() <= 8);
  if (v.is_array())
    for (const auto& e : v) flat = flat && e.is_primitive();
  return flat ? clip(v.dump()) : std::string("a JSON ") + v.type_name();
}

// Reads a JSON integer in [0, 2^63) into out; false for anything else.
bool read_size(const ojson& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
    return out <= kMaxInt64;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    out = uint64_t(v.get<int64_t>());
    return true;
  }
  return false;
}

std::string too_short(uint64_t size) { return std::to_string(size) + " bytes"; }

std::map<std::string, std::string> parse_metadata(const ojson& m, const std::string& where) {
  if (!m.is_object()) throw Error(where, "__metadata__", "an object of string values", describe(m));
  std::map<std::string, std::string> out;
  for (auto it = m.begin(); it != m.end(); ++it) {
    if (!it.value().is_string())
      throw Error(where, "__metadata__: " + in_quotes(it.key()), "a string", describe(it.value()));
    out[it.key()] = it.value().get<std::string>();
  }
  return out;
}

SafetensorsTensorInfo parse_entry(const ojson& entry, const std::string& where,
                                  const std::string& field, uint64_t data_size) {
  if (!entry.is_object())
    throw Error(where, field, "an object with dtype, shape and data_offsets", describe(entry));
  auto member = [&](const char* key) -> const ojson& {
    const auto it = entry.find(key);
    if (it == entry.end()) throw Error(where, field + ": " + key, "a value", "none");
    return *it;
  };
  SafetensorsTensorInfo info;

  const ojson& dtype = member("dtype");
  const std::optional<DType> dt =
      dtype.is_string() ? dtype_from_name(dtype.get_ref<const std::string&>()) : std::nullopt;
  if (!dt)
    throw Error(where, field + ": dtype", "one of F64 F32 F16 BF16 I64 I32 U8", describe(dtype));
  info.dtype = *dt;

  const ojson& shape = member("shape");
  if (!shape.is_array())
    throw Error(where, field + ": shape", "a list of non-negative integers", describe(shape));
  // Multiplied in file order, as Tensor does, so no partial product can overflow there either.
  uint64_t numel = 1;
  for (const ojson& d : shape) {
    uint64_t n = 0;
    if (!read_size(d, n))
      throw Error(where, field + ": shape", "a list of non-negative integers", describe(shape));
    if (__builtin_mul_overflow(numel, n, &numel) || numel > kMaxInt64)
      throw Error(where, field + ": shape", "fewer than 2^63 elements", describe(shape));
    info.shape.push_back(int64_t(n));
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, dtype_size(info.dtype), &nbytes) || nbytes > kMaxInt64)
    throw Error(where, field + ": shape", "fewer than 2^63 bytes", describe(shape));

  const ojson& offsets = member("data_offsets");
  uint64_t begin = 0, end = 0;
  if (!offsets.is_array() || offsets.size() != 2 || !read_size(offsets[0], begin) ||
      !read_size(offsets[1], end) || begin > end)
    throw Error(where, field + ": data_offsets", "[begin, end] with 0 <= begin <= end",
                describe(offsets));
  if (end > data_size)
    throw Error(where, field + ": data_offsets",
                "end <= " + std::to_string(data_size) + " (the size of the data section)",
                describe(offsets));
  if (end - begin != nbytes)
    throw Error(where, field + ": data_offsets",
                "end - begin = " + std::to_string(nbytes) + " bytes (" + std::to_string(numel) +
                    " " + dtype_name(info.dtype) + " elements)",
                std::to_string(end - begin) + " bytes");
  info.begin = begin;
  info.end = end;
  return info;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size,
                                           const std::string& where) {
  if (size < 8) throw Error(where, "header length", "a file of at least 8 bytes", too_short(size));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > kMaxHeaderBytes)
    throw Error(where, "header length", "at most " + std::to_string(kMaxHeaderBytes) + " bytes",
                std::to_string(n));
  if (n > size - 8)
    throw Error(where, "header length",
                "at most the " + std::to_string(size - 8) + " bytes that follow it",
                std::to_string(n));
  SafetensorsHeader h;
  h.data_start = 8 + n;
  const uint64_t data_size = size - h.data_start;

  // Watched while parsing: duplicate top-level keys (a JSON object keeps only
  // the last, but two tensors of one name is a corrupt file) and nesting (a
  // real header is 3 deep; a hostile one could spend gigabytes on brackets).
  std::unordered_set<std::string> seen;
  std::string duplicate;
  bool has_duplicate = false;
  auto watch = [&](int depth, ojson::parse_event_t event, ojson& parsed) {
    if ((event == ojson::parse_event_t::object_start ||
         event == ojson::parse_event_t::array_start) &&
        depth >= kMaxDepth)
      throw Error(where, "header", "JSON nested at most " + std::to_string(kMaxDepth) + " deep",
                  "deeper nesting");
    if (event == ojson::parse_event_t::key && depth == 1 && !has_duplicate &&
        !seen.insert(parsed.get_ref<const std::string&>()).second) {
      has_duplicate = true;
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  ojson j;
  try {
    j = ojson::parse(data + 8, data + 8 + n, watch);
  } catch (const ojson::exception& e) {
    throw Error(where, "header", "valid JSON", clip(e.what(), 200));
  }
  if (!j.is_object()) throw Error(where, "header", "a JSON object", describe(j));
  if (has_duplicate)
    throw Error(where, "tensor " + in_quotes(duplicate), "one entry per name", "two or more");

  struct Range {
    uint64_t begin, end;
    size_t index;  // into h.names
  };
  std::vector<Range> ranges;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      h.metadata = parse_metadata(it.value(), where);
      continue;
    }
    SafetensorsTensorInfo info =
        parse_entry(it.value(), where, "tensor " + in_quotes(it.key()), data_size);
    if (info.end > info.begin) ranges.push_back({info.begin, info.end, h.names.size()});
    h.names.push_back(it.key());
    h.tensors.emplace(it.key(), std::move(info));
  }

  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].begin < ranges[i - 1].end)
      throw Error(where, "tensor " + in_quotes(h.names[ranges[i].index]) + ": data_offsets",
                  "bytes not shared with another tensor",
                  "an overlap with tensor " + in_quotes(h.names[ranges[i - 1].index]));
  return h;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path, "file", "a readable safetensors file", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path, "file", "a regular file", "something else (a directory?)");
  }
  const uint64_t size = uint64_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error(path, "header length", "a file of at least 8 bytes", too_short(size));
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file open
  if (p == MAP_FAILED)
    throw Error(path, "file", "a file that can be mapped", std::strerror(map_errno));
  mapping_ = std::shared_ptr<void>(p, [size](void* q) { ::munmap(q, size); });
  header_ = parse_safetensors_header(static_cast<const uint8_t*>(p), size, path);
}

const SafetensorsTensorInfo& SafetensorsFile::info(const std::string& name) const {
  const auto it = header_.tensors.find(name);
  if (it == header_.tensors.end())
    throw Error(path_, "tensor " + in_quotes(name), "a tensor of this file", "no such name");
  return it->second;
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const SafetensorsTensorInfo& i = info(name);
  char* p = static_cast<char*>(mapping_.get()) + header_.data_start + i.begin;
  Tensor view = Tensor::view(p, i.shape, i.dtype, mapping_);
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(i.dtype) == 0) return view;
  return view.clone();
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::unordered_set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    const std::string field = "tensor " + in_quotes(name);
    if (!t.defined()) throw Error(path, field, "a defined tensor", "an undefined one");
    if (name == "__metadata__") throw Error(path, field, "a tensor name", "the metadata key");
    if (!seen.insert(name).second) throw Error(path, field, "a unique name", "a repeated one");
  }
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_size(tensors[a].second.dtype()) > dtype_size(tensors[b].second.dtype());
  });
  std::vector<uint64_t> begin(tensors.size());
  uint64_t offset = 0;
  for (size_t i : order) {
    begin[i] = offset;
    offset += tensors[i].second.nbytes();
  }

  ojson h = ojson::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i].second;
    ojson entry = ojson::object();
    entry["dtype"] = dtype_name(t.dtype());
    entry["shape"] = t.shape();
    entry["data_offsets"] = ojson::array({begin[i], begin[i] + t.nbytes()});
    h[tensors[i].first] = std::move(entry);
  }
  std::string json;
  try {
    json = h.dump();
  } catch (const ojson::exception& e) {
    throw Error(path, "tensor names and metadata", "valid UTF-8", clip(e.what(), 200));
  }
  json.append((8 - json.size() % 8) % 8, ' ');
  uint8_t length[8];
  for (int b = 0; b < 8; ++b) length[b] = uint8_t(uint64_t(json.size()) >> (8 * b));

  AtomicFileWriter f(path);
  f.write(length, 8);
  f.write(json.data(), json.size());
  for (size_t i : order) {
    const Tensor host = tensors[i].second.to(Device::CPU);  // one tensor at a time off the GPU
    f.write(host.raw(), host.nbytes());
  }
  f.commit();
}

}  // namespace nh
