#include "server/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/model/json_excerpt.h"

namespace clipserve {
namespace {

// The format allows 100 MB, but the header is parsed into a JSON tree of some 30 to
// 35 times its size (a 16 MiB header of empty objects or nested arrays took a
// failing load's peak RSS from about 180 MB to 670 to 757 MB, in a review): a CLIP
// checkpoint's (ViT-bigG: about 1,000 entries of about 100 bytes) needs a small
// fraction of this.
constexpr uint64_t kMaxHeaderBytes = 16ull << 20;

absl::Status Bad(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed safetensors: ", what));
}

struct DtypeName {
  absl::string_view name;
  SafetensorsDtype dtype;
  uint64_t size;
};
constexpr DtypeName kDtypes[] = {
    {"F64", SafetensorsDtype::kF64, 8}, {"F32", SafetensorsDtype::kF32, 4},
    {"F16", SafetensorsDtype::kF16, 2}, {"BF16", SafetensorsDtype::kBF16, 2},
    {"I64", SafetensorsDtype::kI64, 8}, {"I32", SafetensorsDtype::kI32, 4},
    {"I16", SafetensorsDtype::kI16, 2}, {"I8", SafetensorsDtype::kI8, 1},
    {"U8", SafetensorsDtype::kU8, 1},   {"BOOL", SafetensorsDtype::kBool, 1},
};

bool ParseDtype(const std::string& name, SafetensorsDtype* dtype, uint64_t* size) {
  for (const DtypeName& known : kDtypes) {
    if (known.name == name) {
      *dtype = known.dtype;
      *size = known.size;
      return true;
    }
  }
  return false;
}

}  // namespace

absl::StatusOr<std::vector<SafetensorsEntry>> ParseSafetensorsHeader(
    absl::string_view prefix, uint64_t file_size) {
  if (file_size < 8 || prefix.size() < 8)
    return Bad("shorter than its 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(prefix[i]);
  if (n > kMaxHeaderBytes)
    return Bad(absl::StrCat("header length ", n, " exceeds 16 MiB"));
  if (n > file_size - 8) {
    return Bad(absl::StrCat("header length ", n, " runs past the end of the ", file_size,
                            "-byte file"));
  }
  if (prefix.size() < 8 + n) return Bad("header truncated");
  const uint64_t data_size = file_size - 8 - n;
  const absl::string_view text = prefix.substr(8, n);
  nlohmann::json header = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                                /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object())
    return Bad("header is not a JSON object");

  std::vector<SafetensorsEntry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const nlohmann::json& value = it.value();
    const std::string where = absl::StrCat("tensor '", it.key(), "'");
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") ||
        !value.contains("data_offsets")) {
      return Bad(absl::StrCat(where, " needs dtype, shape and data_offsets"));
    }
    SafetensorsEntry entry;
    entry.name = it.key();
    uint64_t element_size = 0;
    if (!value["dtype"].is_string() ||
        !ParseDtype(value["dtype"].get<std::string>(), &entry.dtype, &element_size)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unsupported safetensors dtype ", JsonExcerpt(value["dtype"]), " for ", where,
          " (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)"));
    }
    const nlohmann::json& shape = value["shape"];
    if (!shape.is_array() || shape.size() > 8)
      return Bad(absl::StrCat(where, ": bad shape"));
    uint64_t bytes = element_size;
    for (const auto& dim : shape) {
      if (!dim.is_number_unsigned() &&
          !(dim.is_number_integer() && dim.get<int64_t>() >= 0)) {
        return Bad(absl::StrCat(where, ": shape entries must be non-negative integers"));
      }
      const uint64_t d = dim.get<uint64_t>();
      // Past int64 it would turn negative in a tensor's shape (beside a 0, which keeps
      // the byte count from overflowing).
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (d != 0 && bytes > std::numeric_limits<uint64_t>::max() / d)) {
        return Bad(absl::StrCat(where, ": shape overflows"));
      }
      bytes *= d;
      entry.shape.push_back(static_cast<int64_t>(d));
    }
    const nlohmann::json& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      return Bad(absl::StrCat(where, ": data_offsets must be two non-negative integers"));
    }
    entry.begin = offsets[0].get<uint64_t>();
    entry.end = offsets[1].get<uint64_t>();
    if (entry.begin > entry.end || entry.end > data_size) {
      return Bad(absl::StrCat(where, ": data_offsets [", entry.begin, ", ", entry.end,
                              "] outside the ", data_size, "-byte data section"));
    }
    if (entry.end - entry.begin != bytes) {
      return Bad(absl::StrCat(where, ": data_offsets span ", entry.end - entry.begin,
                              " bytes but dtype and shape need ", bytes));
    }
    entries.push_back(std::move(entry));
  }
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  // As the format requires, the tensors must tile the data section exactly: no
  // overlap, no hole (which also keeps every tensor aligned to its element size when
  // the writer aligned the first), no trailing bytes.
  uint64_t expected_begin = 0;
  for (size_t i = 0; i < by_offset.size(); ++i) {
    const SafetensorsEntry& e = *by_offset[i];
    if (e.begin < expected_begin) {
      return Bad(absl::StrCat("tensors '", by_offset[i - 1]->name, "' and '", e.name,
                              "' overlap"));
    }
    if (e.begin > expected_begin) {
      return Bad(absl::StrCat("tensor '", e.name, "' starts at byte ", e.begin,
                              ", leaving a ", e.begin - expected_begin,
                              "-byte hole before it"));
    }
    expected_begin = e.end;
  }
  if (expected_begin != data_size) {
    return Bad(absl::StrCat("data section has ", data_size - expected_begin,
                            " bytes that belong to no tensor"));
  }
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  return entries;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string message =
        absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(message)
                         : absl::PermissionDeniedError(message);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", Bad("shorter than its 8-byte header length").message()));
  }
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping == MAP_FAILED) {
    return absl::InternalError(absl::StrCat("mmap ", path, ": ", std::strerror(errno)));
  }
  const auto* bytes = static_cast<const uint8_t*>(mapping);
  auto entries = ParseSafetensorsHeader(
      absl::string_view(reinterpret_cast<const char*>(bytes), size), size);
  if (!entries.ok()) {
    ::munmap(mapping, size);
    return absl::Status(entries.status().code(),
                        absl::StrCat(path, ": ", entries.status().message()));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  return std::unique_ptr<SafetensorsFile>(
      new SafetensorsFile(mapping, size, bytes + 8 + n, *std::move(entries)));
}

SafetensorsFile::SafetensorsFile(void* mapping, size_t size, const uint8_t* data_start,
                                 std::vector<SafetensorsEntry> entries)
    : mapping_(mapping),
      size_(size),
      data_start_(data_start),
      entries_(std::move(entries)) {}

SafetensorsFile::~SafetensorsFile() { ::munmap(mapping_, size_); }

}  // namespace clipserve
