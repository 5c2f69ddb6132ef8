// TensorBoard event files written directly, without protobuf or TensorFlow: a file
// `events.out.tfevents.<unix time>.<hostname>` in a run directory holding TFRecords, each a
// serialized `Event` message (tensorboard/compat/proto/event.proto):
//   record  = uint64 length (LE) | masked crc32c(length) | data | masked crc32c(data)  (LE u32)
//   Event   = wall_time (1, double) | step (2, int64) | file_version (3, string)
//             | summary (5, Summary) | session_log (7, SessionLog)
//   Summary = value (1, repeated Value);  Value = tag (1, string) | simple_value (2, float)
//   SessionLog = status (1, enum: START = 1)
// The first record is the header event {wall_time, file_version: "brain.Event:2"}. Fields
// holding proto3 defaults (step 0, wall_time 0) are left out, as protobuf itself does, so the
// bytes equal those of protobuf's serializer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace nh {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `size` bytes.
uint32_t crc32c(const void* data, size_t size);
// TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8, so a CRC stored inside the
// data it covers does not verify itself.
uint32_t masked_crc32c(const void* data, size_t size);
// `data` framed as one TFRecord.
std::string tfrecord(std::string_view data);

// The serialized header Event.
std::string encode_file_version_event(double wall_time);
// The serialized Event of one scalar summary.
std::string encode_scalar_event(double wall_time, int64_t step, std::string_view tag, float value);
// The serialized Event of a SessionLog START at `step`.
std::string encode_session_start_event(double wall_time, int64_t step);

class TensorBoardWriter {
 public:
  // Creates `dir` when missing and a new event file in it (a ".<n>" suffix is added when a file
  // of that name exists already), then writes the header event. Throws nh::Error naming the
  // directory or file when either cannot be created.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Appends one scalar event stamped with the current time. The record is handed to the kernel
  // before returning, so a killed run keeps every event written. `tag` must not be empty.
  // Throws nh::Error naming the file when the write fails.
  void add_scalar(const std::string& tag, double value, int64_t step);
  // Marks a restart at `step` (a run resumed from the checkpoint of step − 1): TensorBoard then
  // drops the events of earlier files whose step is >= `step`, which a run that died after its
  // last checkpoint had written, so the resumed run's steps replace them.
  void add_session_start(int64_t step);
  // Makes everything written so far durable on disk (fsync): for checkpoints and the end of a
  // run, not every step.
  void flush();
  // The event file's path.
  const std::string& path() const { return path_; }

 private:
  void write_record(std::string_view event);
  std::string path_;
  int fd_ = -1;
};

}  // namespace nh
