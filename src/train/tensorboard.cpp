#include "train/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "core/error.h"

namespace nh {

namespace {

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

void append_le(std::string& out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(char(uint8_t(v >> (8 * i))));
}

// Protobuf wire format, only what Event needs (wire types 0, 1, 2 and 5), little-endian.
class ProtoWriter {
 public:
  void varint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(char(uint8_t(v) | 0x80));
      v >>= 7;
    }
    out_.push_back(char(v));
  }
  void tag(int field, int wire_type) { varint(uint64_t(field) << 3 | uint64_t(wire_type)); }
  void int64_field(int field, int64_t v) {
    tag(field, 0);
    varint(uint64_t(v));  // negative numbers take ten bytes, as in protobuf
  }
  void double_field(int field, double v) {
    tag(field, 1);
    append_le(out_, std::bit_cast<uint64_t>(v), 8);
  }
  void float_field(int field, float v) {
    tag(field, 5);
    append_le(out_, std::bit_cast<uint32_t>(v), 4);
  }
  void bytes_field(int field, std::string_view bytes) {
    tag(field, 2);
    varint(bytes.size());
    out_.append(bytes);
  }
  const std::string& bytes() const { return out_; }

 private:
  std::string out_;
};

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) c = kCrc32cTable[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  append_le(out, data.size(), 8);
  append_le(out, masked_crc32c(out.data(), 8), 4);
  out.append(data);
  append_le(out, masked_crc32c(data.data(), data.size()), 4);
  return out;
}

std::string encode_file_version_event(double wall_time) {
  ProtoWriter w;
  if (wall_time != 0) w.double_field(1, wall_time);
  w.bytes_field(3, "brain.Event:2");
  return w.bytes();
}

std::string encode_scalar_event(double wall_time, int64_t step, std::string_view tag, float value) {
  ProtoWriter v;
  v.bytes_field(1, tag);
  v.float_field(2, value);  // in a oneof: written even when 0
  ProtoWriter summary;
  summary.bytes_field(1, v.bytes());
  ProtoWriter event;
  if (wall_time != 0) event.double_field(1, wall_time);
  if (step != 0) event.int64_field(2, step);
  event.bytes_field(5, summary.bytes());
  return event.bytes();
}

std::string encode_session_start_event(double wall_time, int64_t step) {
  ProtoWriter session_log;
  session_log.int64_field(1, 1);  // status: START
  ProtoWriter event;
  if (wall_time != 0) event.double_field(1, wall_time);
  if (step != 0) event.int64_field(2, step);
  event.bytes_field(7, session_log.bytes());
  return event.bytes();
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    throw Error(dir, "tensorboard directory", "a directory that can be created", ec.message());
  const std::string base =
      dir + "/events.out.tfevents." + std::to_string(std::time(nullptr)) + "." + host_name();
  // Two writers started in the same second (a quick restart) must not share a file.
  for (int n = 0; fd_ < 0; ++n) {
    path_ = n == 0 ? base : base + "." + std::to_string(n);
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0666);
    if (fd_ < 0 && (errno != EEXIST || n == 1000))
      throw Error(path_, "tensorboard event file", "a new writable file", std::strerror(errno));
  }
  write_record(encode_file_version_event(now_seconds()));
}

TensorBoardWriter::~TensorBoardWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  if (tag.empty()) throw Error(path_, "scalar tag", "a non-empty tag", "an empty one");
  write_record(encode_scalar_event(now_seconds(), step, tag, float(value)));
}

void TensorBoardWriter::add_session_start(int64_t step) {
  write_record(encode_session_start_event(now_seconds(), step));
}

void TensorBoardWriter::flush() {
  if (::fsync(fd_) != 0) throw Error(path_, "flush", "the events on disk", std::strerror(errno));
}

void TensorBoardWriter::write_record(std::string_view event) {
  const std::string record = tfrecord(event);
  const char* p = record.data();
  size_t left = record.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw Error(path_, "event record", "all bytes written",
                  std::strerror(n < 0 ? errno : ENOSPC));
    p += n;
    left -= size_t(n);
  }
}

}  // namespace nh
