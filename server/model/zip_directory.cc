#include "server/model/zip_directory.h"

#include <algorithm>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace clipserve {
namespace {

constexpr uint32_t kEndOfDirectory = 0x06054b50;
constexpr uint32_t kZip64Locator = 0x07064b50;
constexpr uint32_t kZip64EndOfDirectory = 0x06064b50;
constexpr uint32_t kDirectoryEntry = 0x02014b50;
constexpr size_t kEndSize = 22;
constexpr size_t kLocatorSize = 20;
constexpr size_t kZip64EndSize = 56;
constexpr size_t kEntrySize = 46;

absl::Status Bad(absl::string_view path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": not a readable zip: ", what));
}

uint64_t Le(absl::string_view bytes, size_t at, int width) {
  uint64_t value = 0;
  for (int i = width - 1; i >= 0; --i) {
    value = (value << 8) | static_cast<uint8_t>(bytes[at + static_cast<size_t>(i)]);
  }
  return value;
}

// `length` bytes of the file at `offset`, or false when the file has fewer.
bool ReadAt(std::ifstream& in, uint64_t offset, uint64_t length, std::string* out) {
  out->assign(length, '\0');
  in.clear();
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(out->data(), static_cast<std::streamsize>(length));
  return in.gcount() == static_cast<std::streamsize>(length);
}

}  // namespace

absl::StatusOr<std::vector<ZipRecord>> ReadZipDirectory(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  // The end record is the last 22 bytes but for a comment of at most 64 KiB.
  const uint64_t tail_size = std::min<uint64_t>(file_size, kEndSize + 0xFFFF);
  std::string tail;
  if (!ReadAt(in, file_size - tail_size, tail_size, &tail))
    return Bad(path, "short read");
  // The directory checked here must be the one LibTorch's reader (miniz) then reads,
  // or a bomb could hide behind a harmless decoy: its rules are followed, and a file
  // they read ambiguously is refused. The end record is the last signature with a
  // whole record after it; its comment length is not looked at.
  size_t end = std::string::npos;
  for (size_t i = tail.size() >= kEndSize ? tail.size() - kEndSize + 1 : 0; i-- > 0;) {
    if (Le(tail, i, 4) == kEndOfDirectory) {
      end = i;
      break;
    }
  }
  if (end == std::string::npos) return Bad(path, "no end of central directory");
  const uint64_t end_offset = file_size - tail_size + end;
  uint64_t entries = Le(tail, end + 10, 2);
  uint64_t directory_size = Le(tail, end + 12, 4);
  uint64_t directory_offset = Le(tail, end + 16, 4);
  // Where the directory must end: right before the end record, or before the zip64
  // end record and its locator (miniz 3 reads a gap as data prepended to the archive
  // and moves every offset by it; miniz 2 does not: both agree only without one).
  uint64_t directory_end = end_offset;
  // zip64: a locator just before the end record (read from the file: the end record
  // may sit at the very start of the tail read above). miniz looks for it where there
  // is room for it and a zip64 end record, and then takes the zip64 values, whatever
  // the classic ones say.
  std::string locator;
  if (end_offset >= kLocatorSize + kZip64EndSize &&
      !ReadAt(in, end_offset - kLocatorSize, kLocatorSize, &locator)) {
    return Bad(path, "short read");
  }
  if (!locator.empty() && Le(locator, 0, 4) == kZip64Locator) {
    const uint64_t at = Le(locator, 8, 8);
    std::string record;
    if (at > file_size || !ReadAt(in, at, kZip64EndSize, &record) ||
        Le(record, 0, 4) != kZip64EndOfDirectory) {
      return Bad(path, "no zip64 end of central directory");
    }
    // miniz 3 looks right before the locator first, miniz 2 where the locator points.
    directory_end = end_offset - kLocatorSize - kZip64EndSize;
    if (at != directory_end) return Bad(path, "zip64 end record away from its locator");
    entries = Le(record, 32, 8);
    directory_size = Le(record, 40, 8);
    directory_offset = Le(record, 48, 8);
  } else if (entries == 0xFFFF || directory_size == 0xFFFFFFFF ||
             directory_offset == 0xFFFFFFFF) {
    return Bad(path, "zip64 sizes without a zip64 locator");
  }
  if (directory_offset > file_size || directory_size > file_size - directory_offset ||
      entries > directory_size / kEntrySize) {
    return Bad(path, "central directory outside the file");
  }
  if (directory_offset + directory_size != directory_end) {
    return Bad(path, "central directory not right before its end record");
  }
  std::string directory;
  if (!ReadAt(in, directory_offset, directory_size, &directory)) {
    return Bad(path, "short read");
  }
  std::vector<ZipRecord> records;
  records.reserve(entries);
  size_t at = 0;
  for (uint64_t i = 0; i < entries; ++i) {
    if (directory.size() - at < kEntrySize || Le(directory, at, 4) != kDirectoryEntry) {
      return Bad(path, "malformed central directory entry");
    }
    ZipRecord record;
    record.method = static_cast<uint16_t>(Le(directory, at + 10, 2));
    record.compressed_size = Le(directory, at + 20, 4);
    record.size = Le(directory, at + 24, 4);
    const size_t name_length = Le(directory, at + 28, 2);
    const size_t extra_length = Le(directory, at + 30, 2);
    const size_t comment_length = Le(directory, at + 32, 2);
    const size_t length = kEntrySize + name_length + extra_length + comment_length;
    if (directory.size() - at < length)
      return Bad(path, "malformed central directory entry");
    record.name = directory.substr(at + kEntrySize, name_length);
    // A zip64 extra field (id 1) holds the sizes the entry marks with 0xFFFFFFFF, in
    // this order.
    const absl::string_view extra(directory.data() + at + kEntrySize + name_length,
                                  extra_length);
    for (size_t e = 0; e + 4 <= extra.size();) {
      const uint64_t id = Le(extra, e, 2);
      const size_t field = Le(extra, e + 2, 2);
      if (extra.size() - e - 4 < field) break;
      if (id == 1) {
        size_t next = e + 4;
        for (uint64_t* value : {&record.size, &record.compressed_size}) {
          if (*value != 0xFFFFFFFF) continue;
          if (next + 8 > e + 4 + field) return Bad(path, "short zip64 extra field");
          *value = Le(extra, next, 8);
          next += 8;
        }
      }
      e += 4 + field;
    }
    records.push_back(std::move(record));
    at += length;
  }
  return records;
}

absl::Status CheckInflatedSize(const std::vector<ZipRecord>& records,
                               uint64_t file_size) {
  uint64_t inflated = 0;
  uint64_t stored = 0;
  const ZipRecord* largest = nullptr;
  for (const ZipRecord& record : records) {
    if (record.method == 0) {
      // Each stored record's bytes lie in the file, apart from the others': LibTorch
      // copies each whole, so entries sharing one record would multiply it in memory.
      const uint64_t bytes = std::max(record.size, record.compressed_size);
      stored += std::min<uint64_t>(bytes, UINT64_MAX - stored);
      continue;
    }
    inflated += std::min<uint64_t>(record.size, UINT64_MAX - inflated);
    if (largest == nullptr || record.size > largest->size) largest = &record;
  }
  if (stored > file_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("the archive's stored records hold ", stored,
                     " bytes in all, more than the file's ", file_size,
                     ": its entries overlap, which no zip writer does"));
  }
  if (largest == nullptr || inflated / kMaxInflatedToFileRatio <= file_size) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "the archive's compressed records would inflate to ", inflated,
      " bytes, more than ", kMaxInflatedToFileRatio, " times the file's ", file_size,
      " (the largest, ", largest->name, ", to ", largest->size,
      "); torch.save stores tensors uncompressed: re-save the checkpoint with it"));
}

}  // namespace clipserve
