#ifndef CLIPSERVE_CLIENT_OUTPUT_FILE_H_
#define CLIPSERVE_CLIENT_OUTPUT_FILE_H_

#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace clipserve {

// A file that clip_client writes whole or not at all. Open() creates an empty
// temporary file beside `path` ("<path>.partial-<pid>", or with a random suffix after
// the pid when that name is taken; with the permission bits of a file already there), so
// that a path that cannot be written fails before any work is done; the caller writes
// write_path(), and Commit() renames it over `path`, so that a run that fails midway
// leaves a file already at `path` as it was. The temporary file is removed when the
// object is destroyed uncommitted (not when the process is killed).
//
// Written in place instead (write_path() is `path`, Commit() does nothing): a path
// that is a symbolic link (/dev/stdout, written through; Open() checks that a link to
// a regular file opens for writing) or exists and is not a regular file (a pipe, a
// device), where Open() checks nothing; and a file that may be written in a folder
// where no file may be created, or in a sticky folder (/tmp) where this user may not
// rename over it (neither the file nor the folder is theirs), where Open() checks that
// the file opens for writing.
//
// A name of one of this process's descriptors other than stdout's (/dev/stderr,
// /dev/fd/N, /proc/self/fd/N) is written in place and appended to (appends()): it
// reopens the file the shell redirected that descriptor to, which truncating would
// empty of what was written there before (`2>>log`).
//
// Not thread-safe; move-only.
class OutputFile {
 public:
  // FAILED_PRECONDITION when `path` is a folder; other errors as OpenError()
  // (input_files.h), naming `path`.
  static absl::StatusOr<OutputFile> Open(const std::string& path);

  OutputFile(OutputFile&& other) noexcept;
  OutputFile& operator=(OutputFile&&) = delete;
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  ~OutputFile();

  const std::string& path() const { return path_; }
  const std::string& write_path() const { return write_path_; }
  // Whether write_path() is written after what it holds (std::ios::app), not
  // truncated: a descriptor's name, see above.
  bool appends() const { return appends_; }

  // Moves write_path() to path(). Errors as OpenError(), naming path().
  absl::Status Commit();

 private:
  OutputFile(std::string path, std::string write_path)
      : path_(std::move(path)), write_path_(std::move(write_path)) {}
  // Written in place: write_path() is `path`, Commit() does nothing.
  static OutputFile InPlace(const std::string& path);

  std::string path_;
  std::string write_path_;
  bool pending_ = true;  // write_path() is a temporary file still to be moved or removed
  bool appends_ = false;
};

// The descriptor that `path` names in this process: 0, 1 and 2 for /dev/stdin,
// /dev/stdout and /dev/stderr, N for /dev/fd/N and /proc/self/fd/N as the kernel
// spells N (decimal, no leading zero); nullopt for any other path (a number past int
// included).
std::optional<int> DescriptorNamed(absl::string_view path);

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_OUTPUT_FILE_H_
