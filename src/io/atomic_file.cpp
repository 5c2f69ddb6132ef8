#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace nh {

AtomicFileWriter::AtomicFileWriter(const std::string& path)
    : path_(path), tmp_(path + ".tmp-" + std::to_string(::getpid())) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd_ < 0) fail("a writable temporary file " + tmp_, errno);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFileWriter::fail(const std::string& what, int err) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  throw Error(path_, "writing", what, std::strerror(err));
}

void AtomicFileWriter::write(const void* data, size_t size) {
  NH_CHECK(fd_ >= 0 && !committed_, "AtomicFileWriter used after commit or failure");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("all bytes written", n < 0 ? errno : ENOSPC);
    p += n;
    size -= size_t(n);
  }
}

void AtomicFileWriter::commit() {
  NH_CHECK(fd_ >= 0 && !committed_, "AtomicFileWriter used after commit or failure");
  // fsync before rename: otherwise a power cut can leave the new name with no data.
  if (::fsync(fd_) != 0) fail("the data flushed to disk", errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("the file closed", errno);
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) fail("the temporary renamed over it", errno);
  committed_ = true;
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  AtomicFileWriter f(path);
  f.write(contents.data(), contents.size());
  f.commit();
}

}  // namespace nh
