#include "io/indexed_dataset_format.h"

#include <bit>
#include <cstring>

#include "core/error.h"

namespace nh {

static_assert(std::endian::native == std::endian::little,
              "the .idx arrays are little-endian and are read without conversion");

namespace {

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <class T>
void append(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

std::string bytes(uint64_t n) { return std::to_string(n) + " bytes"; }

// The magic as it appears in error messages: printable ASCII kept, the rest as \xNN.
std::string escaped(const uint8_t* p, size_t n) {
  static const char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (size_t i = 0; i < n; ++i) {
    if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\') {
      out += char(p[i]);
    } else {
      out += "\\x";
      out += kHex[p[i] >> 4];
      out += kHex[p[i] & 15];
    }
  }
  return out + "\"";
}

std::string at(const char* array, int64_t i) {
  return std::string(array) + "[" + std::to_string(i) + "]";
}

}  // namespace

size_t token_dtype_size(TokenDType t) {
  switch (t) {
    case TokenDType::U8:
    case TokenDType::I8:
      return 1;
    case TokenDType::I16:
    case TokenDType::U16:
      return 2;
    case TokenDType::I32:
    case TokenDType::F32:
      return 4;
    case TokenDType::I64:
    case TokenDType::F64:
      return 8;
  }
  return 0;
}

const char* token_dtype_name(TokenDType t) {
  switch (t) {
    case TokenDType::U8:
      return "uint8";
    case TokenDType::I8:
      return "int8";
    case TokenDType::I16:
      return "int16";
    case TokenDType::I32:
      return "int32";
    case TokenDType::I64:
      return "int64";
    case TokenDType::F64:
      return "float64";
    case TokenDType::F32:
      return "float32";
    case TokenDType::U16:
      return "uint16";
  }
  return "unknown";
}

int32_t MegatronIndex::length(int64_t i) const { return load<int32_t>(lengths + 4 * i); }
int64_t MegatronIndex::pointer(int64_t i) const { return load<int64_t>(pointers + 8 * i); }
int64_t MegatronIndex::document_index(int64_t d) const {
  return load<int64_t>(document_indices + 8 * d);
}

MegatronIndex parse_megatron_index(const uint8_t* data, size_t size, uint64_t bin_size,
                                   const std::string& idx_path, const std::string& bin_path) {
  if (size < kMegatronIndexHeaderBytes)
    throw Error(idx_path, "header", "at least 34 bytes (magic, version, dtype code, counts)",
                bytes(size));
  if (std::memcmp(data, kMegatronIndexMagic, sizeof kMegatronIndexMagic) != 0)
    throw Error(idx_path, "magic", "\"MMIDIDX\\x00\\x00\" (a Megatron mmap index)",
                escaped(data, sizeof kMegatronIndexMagic));
  const uint64_t version = load<uint64_t>(data + 9);
  if (version != 1) throw Error(idx_path, "version", "1", std::to_string(version));
  const uint8_t code = data[17];
  if (code < 1 || code > 8)
    throw Error(idx_path, "dtype code",
                "1..8 (uint8 int8 int16 int32 int64 float64 float32 uint16)", std::to_string(code));

  MegatronIndex ix;
  ix.dtype = TokenDType(code);
  const uint64_t n = load<uint64_t>(data + 18);
  const uint64_t d = load<uint64_t>(data + 26);
  const uint64_t body = size - kMegatronIndexHeaderBytes;
  // Each sequence takes 12 bytes (length + pointer) and each document index 8, so counts are
  // compared by division first: products of hostile counts would overflow.
  if (n > body / 12)
    throw Error(idx_path, "sequence count",
                "at most " + std::to_string(body / 12) + " (what the file's size holds)",
                std::to_string(n));
  if (d > (body - 12 * n) / 8)
    throw Error(idx_path, "document count",
                "at most " + std::to_string((body - 12 * n) / 8) + " (what the file's size holds)",
                std::to_string(d));
  const uint64_t expected = kMegatronIndexHeaderBytes + 12 * n + 8 * d;
  if (size != expected) {
    if (n > 0 && size - expected == n)
      throw Error(idx_path, "sequence modes", "a text dataset (no per-sequence modes)",
                  "a multimodal index with " + std::to_string(n) + " sequence modes");
    throw Error(idx_path, "file size",
                bytes(expected) + " (header, " + std::to_string(n) + " sequences, " +
                    std::to_string(d) + " document indices)",
                bytes(size));
  }
  if (d == 0)
    throw Error(idx_path, "document count", "at least 1 (the document indices start with 0)", "0");
  ix.num_sequences = int64_t(n);
  ix.num_document_indices = int64_t(d);
  ix.lengths = data + kMegatronIndexHeaderBytes;
  ix.pointers = ix.lengths + 4 * n;
  ix.document_indices = ix.pointers + 8 * n;

  const uint64_t item = token_dtype_size(ix.dtype);
  uint64_t end = 0;  // where the next sequence must start in .bin
  for (int64_t i = 0; i < ix.num_sequences; ++i) {
    const int32_t len = ix.length(i);
    if (len < 0) throw Error(idx_path, at("sequence_lengths", i), ">= 0", std::to_string(len));
    const int64_t ptr = ix.pointer(i);
    if (ptr < 0 || uint64_t(ptr) != end)
      throw Error(idx_path, at("sequence_pointers", i),
                  std::to_string(end) + " (the previous pointer + length * " +
                      std::to_string(item) + " bytes)",
                  std::to_string(ptr));
    end += uint64_t(len) * item;
    // Checked per sequence so that `end` stays far below 2^64 whatever the lengths say.
    if (end > bin_size)
      throw Error(bin_path, "file size",
                  "at least " + bytes(end) + " (sequence " + std::to_string(i) + " of " + idx_path +
                      " ends there)",
                  bytes(bin_size));
  }
  if (end != bin_size)
    throw Error(bin_path, "file size", bytes(end) + " (the tokens " + idx_path + " lists)",
                bytes(bin_size));
  ix.total_tokens = int64_t(end / item);

  if (ix.document_index(0) != 0)
    throw Error(idx_path, "document_indices[0]", "0", std::to_string(ix.document_index(0)));
  for (int64_t k = 1; k < ix.num_document_indices; ++k) {
    const int64_t prev = ix.document_index(k - 1), cur = ix.document_index(k);
    if (cur < prev || cur > ix.num_sequences)
      throw Error(idx_path, at("document_indices", k),
                  "a value in [" + std::to_string(prev) + ", " + std::to_string(n) +
                      "] (non-decreasing sequence indices)",
                  std::to_string(cur));
  }
  const int64_t last = ix.document_index(ix.num_document_indices - 1);
  if (last != ix.num_sequences)
    throw Error(idx_path, at("document_indices", ix.num_document_indices - 1),
                std::to_string(n) + " (the sequence count)", std::to_string(last));
  return ix;
}

std::string serialize_megatron_index(TokenDType dtype, const std::vector<int32_t>& lengths,
                                     const std::vector<int64_t>& document_indices) {
  std::string out;
  out.reserve(kMegatronIndexHeaderBytes + 12 * lengths.size() + 8 * document_indices.size());
  out.append(kMegatronIndexMagic, sizeof kMegatronIndexMagic);
  append<uint64_t>(out, 1);
  append<uint8_t>(out, uint8_t(dtype));
  append<uint64_t>(out, lengths.size());
  append<uint64_t>(out, document_indices.size());
  for (int32_t len : lengths) append<int32_t>(out, len);
  const int64_t item = int64_t(token_dtype_size(dtype));
  int64_t pointer = 0;
  for (int32_t len : lengths) {
    append<int64_t>(out, pointer);
    pointer += int64_t(len) * item;
  }
  for (int64_t d : document_indices) append<int64_t>(out, d);
  return out;
}

}  // namespace nh
