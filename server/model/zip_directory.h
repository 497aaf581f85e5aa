#ifndef CLIPSERVE_SERVER_MODEL_ZIP_DIRECTORY_H_
#define CLIPSERVE_SERVER_MODEL_ZIP_DIRECTORY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// The central directory of a zip archive, as torch.save and torch.jit.save write them
// (miniz, zip64 past 4 GiB): what each record is called, how it is stored and how big
// it says it is, read without inflating anything. No LibTorch.

namespace clipserve {

struct ZipRecord {
  std::string name;
  // 0 stored, 8 deflated, ...
  uint16_t method = 0;
  uint64_t compressed_size = 0;
  // The size the record says it inflates to: what a reader allocates for it.
  uint64_t size = 0;
};

// The records of the zip file at `path`. INVALID_ARGUMENT when no end-of-central-
// directory record is found, or the directory it points to runs past the file or
// is malformed; NOT_FOUND when the file cannot be read. Reads the file's last 64 KiB
// and its directory only.
absl::StatusOr<std::vector<ZipRecord>> ReadZipDirectory(const std::string& path);

// torch.save and torch.jit.save store every record uncompressed; a zip written by
// other tools may deflate some. LibTorch's reader inflates a record whole, into the
// size the directory declares, before its contents can be checked, so a few
// megabytes could make it allocate gigabytes. INVALID_ARGUMENT, naming the largest
// such record, when the compressed records of `records` declare more than
// kMaxInflatedToFileRatio times `file_size` in all (tensor data compresses far less).
inline constexpr uint64_t kMaxInflatedToFileRatio = 4;
absl::Status CheckInflatedSize(const std::vector<ZipRecord>& records, uint64_t file_size);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_ZIP_DIRECTORY_H_
