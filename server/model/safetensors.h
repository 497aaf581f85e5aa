#ifndef CLIPSERVE_SERVER_MODEL_SAFETENSORS_H_
#define CLIPSERVE_SERVER_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// A reader for the safetensors format: an 8-byte little-endian header length n, n
// bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, optional
// "__metadata__"}, then the raw little-endian tensor data. No LibTorch.

namespace clipserve {

// The dtypes torch.save's storages have, as safetensors names them (its own torch
// loader also maps U16/U32/U64 and the F8 types, which no CLIP checkpoint uses):
// floating weights in any of the four floating ones load, converted to the model's
// precision. The data is little-endian, as this host's.
enum class SafetensorsDtype {
  kF64,
  kF32,
  kF16,
  kBF16,
  kI64,
  kI32,
  kI16,
  kI8,
  kU8,
  kBool
};

struct SafetensorsEntry {
  std::string name;
  SafetensorsDtype dtype;
  std::vector<int64_t> shape;
  // Byte range of the tensor's data, relative to the start of the data section.
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Parses and validates the header of a safetensors file of `file_size` bytes, given
// at least its first 8 + n bytes in `prefix`. Every check happens before any tensor
// memory is touched: header length within the file (and at most 100 MiB), valid JSON
// object, known dtype, non-negative shape whose byte size matches data_offsets without
// overflow, and tensors that tile the data section exactly (no overlap, hole or
// trailing bytes).
// INVALID_ARGUMENT naming the problem (and the tensor) otherwise. Entries come back in
// name order.
absl::StatusOr<std::vector<SafetensorsEntry>> ParseSafetensorsHeader(
    absl::string_view prefix, uint64_t file_size);

// A safetensors file mapped read-only into memory. Thread-compatible.
class SafetensorsFile {
 public:
  // Maps and validates `path`. NOT_FOUND when it does not exist, INVALID_ARGUMENT
  // for a malformed file.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  // The bytes of `entry` (valid while this object lives).
  const uint8_t* data(const SafetensorsEntry& entry) const {
    return data_start_ + entry.begin;
  }

 private:
  SafetensorsFile(void* mapping, size_t size, const uint8_t* data_start,
                  std::vector<SafetensorsEntry> entries);
  void* mapping_;
  size_t size_;
  const uint8_t* data_start_;
  std::vector<SafetensorsEntry> entries_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_SAFETENSORS_H_
