#include "client/npy_writer.h"

#include <cerrno>
#include <cstdint>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/input_files.h"

namespace clipserve {

std::string NpyHeader(size_t rows, size_t cols) {
  std::string dict = absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (",
                                  rows, ", ", cols, "), }");
  // magic (6) + version (2) + header length (2) + dict + padding + '\n'.
  constexpr size_t kPreamble = 10;
  const size_t unpadded = kPreamble + dict.size() + 1;
  const size_t total = (unpadded + 63) / 64 * 64;
  dict.append(total - unpadded, ' ');
  dict.push_back('\n');
  const size_t header_len = dict.size();
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(header_len & 0xff));
  out.push_back(static_cast<char>((header_len >> 8) & 0xff));
  out += dict;
  return out;
}

absl::Status WriteNpy(std::ostream& out, size_t rows, size_t cols,
                      absl::Span<const float> values) {
  if (values.size() != rows * cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        "npy: ", values.size(), " values for a ", rows, " x ", cols, " matrix"));
  }
  const std::string header = NpyHeader(rows, cols);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  for (float value : values) {
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    bits = __builtin_bswap32(bits);
    out.write(reinterpret_cast<const char*>(&bits), 4);
  }
#else
  out.write(reinterpret_cast<const char*>(values.data()),
            static_cast<std::streamsize>(values.size() * sizeof(float)));
#endif
  if (!out) return absl::DataLossError("npy: write failed");
  return absl::OkStatus();
}

absl::Status WriteNpyFile(const std::string& path, size_t rows, size_t cols,
                          absl::Span<const float> values, bool append) {
  std::ofstream file(path, std::ios::binary | (append ? std::ios::app : std::ios::trunc));
  if (!file) {
    return OpenError(path, "cannot open for writing", errno);
  }
  absl::Status status = WriteNpy(file, rows, cols, values);
  file.close();
  if (status.ok() && !file) status = absl::DataLossError("write failed");
  if (!status.ok())
    return absl::Status(status.code(), absl::StrCat(path, ": ", status.message()));
  return absl::OkStatus();
}

}  // namespace clipserve
