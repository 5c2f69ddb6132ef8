// Files that are either fully written or not changed at all: the bytes go to
// "<path>.tmp-<pid>", which is flushed to disk and then renamed over <path>, so
// a crash, a full disk or a bad path never leaves a half-written checkpoint and
// never destroys the file that was there before.
#pragma once

#include <cstddef>
#include <string>

namespace nh {

class AtomicFileWriter {
 public:
  // Creates the temporary next to `path`; throws nh::Error naming path when it cannot.
  explicit AtomicFileWriter(const std::string& path);
  // Removes the temporary unless commit() succeeded.
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  // Appends bytes; throws nh::Error naming the path (and removes the temporary) on failure.
  void write(const void* data, size_t size);
  // Flushes the temporary to disk and renames it over the path.
  void commit();

 private:
  void fail(const std::string& what, int err);
  std::string path_;
  std::string tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// The whole of `contents` (config.json, an index file ...) written atomically.
void write_file_atomic(const std::string& path, const std::string& contents);

}  // namespace nh
