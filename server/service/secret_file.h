#ifndef CLIPSERVE_SERVER_SERVICE_SECRET_FILE_H_
#define CLIPSERVE_SERVER_SERVICE_SECRET_FILE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace clipserve {

// Largest file ReadSecretFile() reads: certificates, keys and token lists are a few
// KiB; 1 MiB leaves room for long CA bundles and refuses /dev/zero or a wrong path to
// a large file quickly.
inline constexpr size_t kMaxSecretFileBytes = 1 << 20;

// Reads a small file named on the command line (a PEM certificate or key, a token
// list) at start-up. `what` describes it in errors ("TLS private key"). Errors, each
// naming `what` and `path` but never the contents: INVALID_ARGUMENT for an empty path,
// a directory or a file over kMaxSecretFileBytes; NOT_FOUND; PERMISSION_DENIED; other
// read errors as UNKNOWN with the errno text. Blocks on the file system.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path,
                                           absl::string_view what);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_SECRET_FILE_H_
