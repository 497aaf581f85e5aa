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

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_SMALL_FILE_H_
