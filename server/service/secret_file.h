#ifndef CLIPSERVE_SERVER_SERVICE_SECRET_FILE_H_
#define CLIPSERVE_SERVER_SERVICE_SECRET_FILE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/common/small_file.h"

namespace clipserve {

// Largest file ReadSecretFile() reads: certificates, keys and token lists are a few
// KiB; 1 MiB leaves room for long CA bundles and refuses /dev/zero or a wrong path to
// a large file quickly.
inline constexpr size_t kMaxSecretFileBytes = 1 << 20;

// A PEM certificate or key, or a token list: ReadSmallFile() capped at
// kMaxSecretFileBytes. Its errors never quote the contents.
inline absl::StatusOr<std::string> ReadSecretFile(const std::string& path,
                                                  absl::string_view what) {
  return ReadSmallFile(path, what, kMaxSecretFileBytes);
}

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_SECRET_FILE_H_
