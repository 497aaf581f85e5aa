#include "client/output_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/input_files.h"

namespace clipserve {

absl::StatusOr<OutputFile> OutputFile::Open(const std::string& path) {
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (!error && std::filesystem::is_directory(status)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot write: is a folder (name a file in it)"));
  }
  if (!error && std::filesystem::exists(status) &&
      !std::filesystem::is_regular_file(status)) {
    OutputFile in_place(path, path);
    in_place.pending_ = false;
    return in_place;
  }
  std::string temporary = absl::StrCat(path, ".partial-", getpid());
  const int fd =
      ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) return OpenError(path, "cannot write", errno);
  ::close(fd);
  return OutputFile(path, std::move(temporary));
}

OutputFile::OutputFile(OutputFile&& other) noexcept
    : path_(std::move(other.path_)),
      write_path_(std::move(other.write_path_)),
      pending_(std::exchange(other.pending_, false)) {}

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
