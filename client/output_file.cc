#include "client/output_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <random>
#include <system_error>
#include <utility>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "client/input_files.h"

namespace clipserve {
namespace {

namespace fs = std::filesystem;

// 0 when `path` can be opened for writing (checked without changing it), else errno.
// `extra_flags` (O_CREAT) asks as an open that may create the file would.
int WriteError(const std::string& path, int extra_flags = 0) {
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | extra_flags, 0666);
  if (fd < 0) return errno;
  ::close(fd);
  return 0;
}

// Whether renaming over `path`, a file this user may write, would be refused: in a
// folder with the sticky bit (/tmp), only the owner of the file or of the folder (or
// root) may replace or remove it, while a shell's `>` may still write it.
bool StickyFolderKeepsFile(const std::string& path) {
  fs::path folder = fs::path(path).parent_path();
  if (folder.empty()) folder = ".";
  struct stat file_info, folder_info;
  if (::stat(path.c_str(), &file_info) != 0 ||
      ::stat(folder.c_str(), &folder_info) != 0) {
    return false;
  }
  const uid_t me = geteuid();
  return (folder_info.st_mode & S_ISVTX) != 0 && me != 0 && file_info.st_uid != me &&
         folder_info.st_uid != me;
}

}  // namespace

std::optional<int> DescriptorNamed(absl::string_view path) {
  if (path == "/dev/stdin") return 0;
  if (path == "/dev/stdout") return 1;
  if (path == "/dev/stderr") return 2;
  for (absl::string_view folder : {"/dev/fd/", "/proc/self/fd/"}) {
    absl::string_view number = path;
    int descriptor;
    // Digits as the kernel names the entries: no sign, no zero before others.
    if (absl::ConsumePrefix(&number, folder) && !number.empty() &&
        absl::c_all_of(number, absl::ascii_isdigit) &&
        (number.size() == 1 || number[0] != '0') &&
        absl::SimpleAtoi(number, &descriptor)) {
      return descriptor;
    }
  }
  return std::nullopt;
}

absl::StatusOr<OutputFile> OutputFile::Open(const std::string& path) {
  if (DescriptorNamed(path).has_value()) {
    // Refused now if the descriptor is closed or was not opened for writing.
    if (const int error = WriteError(path); error != 0) {
      return OpenError(path, "cannot write", error);
    }
    OutputFile descriptor = InPlace(path);
    descriptor.appends_ = true;
    return descriptor;
  }
  std::error_code error;
  const fs::file_status link = fs::symlink_status(path, error);
  const bool exists = !error && fs::exists(link);
  if (exists && fs::is_directory(fs::status(path, error))) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot write: is a folder (name a file in it)"));
  }
  if (exists && !fs::is_regular_file(link)) {
    // A link (/dev/stdout, a user's link) is written through, a pipe or a device
    // as it is: renaming over either would replace it. A link to a file this user may
    // not write is refused now, as the file itself would be.
    if (fs::is_symlink(link) && fs::is_regular_file(fs::status(path, error))) {
      if (const int error = WriteError(path); error != 0) {
        return OpenError(path, "cannot write", error);
      }
    }
    return InPlace(path);
  }
  // A file that may not be written (read-only) is refused now, as a shell's `>` would
  // refuse it, not replaced, nor failed after the work: its replacement would get its
  // permission bits before being written.
  if (exists) {
    if (const int error = WriteError(path); error != 0) {
      return OpenError(path, "cannot write", error);
    }
    // Written in place, as `>` would, rather than failed after the work. `>` opens
    // with O_CREAT, which the kernel refuses there (fs.protected_regular) for a file
    // of another user: checked now the same way, without changing the file.
    if (StickyFolderKeepsFile(path)) {
      if (const int error = WriteError(path, O_CREAT); error != 0) {
        return OpenError(path, "cannot write", error);
      }
      return InPlace(path);
    }
  }
  // Created, never reused: a file or link already at that name (left by a killed run
  // of the same pid, as in a container; or put there in a folder others may write
  // to) is not written through, nor renamed over the output. Another name is tried.
  std::string temporary = absl::StrCat(path, ".partial-", getpid());
  int fd = -1;
  std::random_device random;
  for (int attempt = 0; attempt < 8; ++attempt) {
    if (attempt > 0) {
      temporary = absl::StrCat(path, ".partial-", getpid(), "-", absl::Hex(random()));
    }
    fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                0666);
    if (fd >= 0 || errno != EEXIST) break;
  }
  if (fd < 0) {
    const int open_error = errno;
    // A file that may be written in a folder that may not: written in place.
    if (exists) {
      return InPlace(path);
    }
    return OpenError(path, "cannot write", open_error);
  }
  ::close(fd);
  if (exists) {  // the replacement keeps the file's permission bits
    fs::permissions(temporary, link.permissions(), error);
  }
  return OutputFile(path, std::move(temporary));
}

OutputFile OutputFile::InPlace(const std::string& path) {
  OutputFile in_place(path, path);
  in_place.pending_ = false;
  return in_place;
}

OutputFile::OutputFile(OutputFile&& other) noexcept
    : path_(std::move(other.path_)),
      write_path_(std::move(other.write_path_)),
      pending_(std::exchange(other.pending_, false)),
      appends_(other.appends_) {}

OutputFile::~OutputFile() {
  if (pending_) std::remove(write_path_.c_str());
}

absl::Status OutputFile::Commit() {
  if (!pending_) return absl::OkStatus();
  if (std::rename(write_path_.c_str(), path_.c_str()) != 0) {
    return OpenError(path_, "cannot replace", errno);
  }
  pending_ = false;
  return absl::OkStatus();
}

}  // namespace clipserve
