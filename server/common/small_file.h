#ifndef CLIPSERVE_SERVER_COMMON_SMALL_FILE_H_
#define CLIPSERVE_SERVER_COMMON_SMALL_FILE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace clipserve {

// Reads a small file named on the command line (a PEM certificate, a token list, a
// model configuration) whole, at start-up. `what` describes it in errors ("TLS private
// key (--tls_key)"). Only regular files of at most `max_bytes` are read: a FIFO fails
// at once rather than waiting for a writer, /dev/zero fails after `max_bytes` rather
// than filling the memory. The check is made on the opened file, and the cap counts the
// bytes read, so a file swapped or grown meanwhile cannot get past either.
//
// Errors, each naming `what` and `path` but never the contents: INVALID_ARGUMENT for an
// empty path, a directory, a device, a FIFO or a file over `max_bytes`; NOT_FOUND;
// PERMISSION_DENIED; other read errors as UNKNOWN with the errno text. Blocks on the
// file system.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, absl::string_view what,
                                          size_t max_bytes);

// The status for `error` (an errno value) from opening or reading `what` at `path`, as
// ReadSmallFile gives it: NOT_FOUND (ENOENT, ENOTDIR), PERMISSION_DENIED (EACCES,
// EPERM), else UNKNOWN; "cannot read <what> '<path>': <strerror>".
absl::Status FileError(int error, absl::string_view what, const std::string& path);

// Whether `path` is a regular file (links followed): false when nothing is there or
// when it is something else. The file system's refusal to say (a folder on the way that
// may not be searched) is an error, as FileError gives it but "cannot look for": a
// missing permission must not pass for a missing file.
absl::StatusOr<bool> IsRegularFile(const std::string& path, absl::string_view what);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_SMALL_FILE_H_
