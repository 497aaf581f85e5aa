#include "server/common/small_file.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace clipserve {
namespace {

absl::Status ErrnoError(int error, absl::string_view verb, absl::string_view what,
                        const std::string& path) {
  const std::string message =
      absl::StrCat(verb, " ", what, " '", path, "': ", std::strerror(error));
  switch (error) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::UnknownError(message);
  }
}

}  // namespace

absl::Status FileError(int error, absl::string_view what, const std::string& path) {
  return ErrnoError(error, "cannot read", what, path);
}

absl::StatusOr<bool> IsRegularFile(const std::string& path, absl::string_view what) {
  struct stat info;
  if (stat(path.c_str(), &info) == 0) return S_ISREG(info.st_mode);
  const int error = errno;
  if (error == ENOENT || error == ENOTDIR) return false;
  return ErrnoError(error, "cannot look for", what, path);
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, absl::string_view what,
                                          size_t max_bytes) {
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no file given for the ", what));
  }
  // O_NONBLOCK: opening a FIFO would otherwise wait for a writer, before the check
  // below could refuse it. Reads of a regular file ignore it.
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return FileError(errno, what, path);
  struct stat info;
  if (fstat(fd, &info) != 0) {
    const int error = errno;
    close(fd);
    return FileError(error, what, path);
  }
  if (!S_ISREG(info.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read ", what, " '", path, "': not a regular file"));
  }
  std::string contents;
  contents.reserve(std::min(static_cast<size_t>(info.st_size), max_bytes));
  char buffer[8192];
  while (true) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      close(fd);
      return FileError(error, what, path);
    }
    if (n == 0) break;
    if (static_cast<size_t>(n) > max_bytes - contents.size()) {
      close(fd);
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot read ", what, " '", path, "': larger than ", max_bytes, " bytes"));
    }
    contents.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return contents;
}

}  // namespace clipserve
