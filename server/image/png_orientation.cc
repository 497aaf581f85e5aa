// The EXIF orientation of a PNG as Pillow 9.4 finds it: its eXIf chunk, the EXIF
// ImageMagick stores hex-coded in a "Raw profile type exif" text chunk, or the
// tiff:Orientation of its XMP packet.

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "server/image/decoders.h"
#include "server/image/exif_orientation.h"
#include "server/tokenizer/unicode_text.h"

namespace clipserve::image::internal {
namespace {

// Pillow's MAX_TEXT_CHUNK: a compressed text chunk that inflates to more is refused.
// So is a file whose text chunks hold more than MAX_TEXT_MEMORY in all; only the keys
// below are counted here, which bounds what a file can make clipserve inflate.
constexpr size_t kMaxTextChunk = size_t{1} << 20;
constexpr size_t kMaxTextMemory = 64 * kMaxTextChunk;

constexpr absl::string_view kExifKey = "exif";
constexpr absl::string_view kRawProfileKey = "Raw profile type exif";
constexpr absl::string_view kXmpKey = "XML:com.adobe.xmp";

// A value of PngImageFile.info: bytes for eXIf chunks and tEXt "exif", text for the
// rest (text Exif.load() cannot take).
struct InfoValue {
  bool is_text = false;
  std::string data;
};

// The entries of PngImageFile.info the orientation depends on; a later chunk with the
// same key replaces an earlier one's value.
struct PngInfo {
  std::optional<InfoValue> exif;
  std::optional<std::string> raw_profile;
  std::optional<std::string> xmp;
  // Characters of text stored, as Pillow's check_text_memory() counts them.
  size_t text_memory = 0;
};

enum class Inflated { kOk, kCorrupt, kTooLarge };

// Pillow's _safe_zlib_decompress(): at most kMaxTextChunk bytes of output, kTooLarge
// (its ValueError) when more input waits beyond them; kCorrupt for what zlib refuses
// (its zlib.error). A stream cut short gives what it holds, as Python's decompress
// object does. The output grows with what the stream holds, so many small chunks
// cost no more than their text.
Inflated Inflate(absl::string_view in, std::string* out) {
  out->clear();
  z_stream z = {};
  if (inflateInit(&z) != Z_OK) return Inflated::kCorrupt;
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  char buffer[16384];
  int ret = Z_OK;
  // Output zlib holds back for want of room counts even once the input is all read.
  bool filled = true;
  while (ret == Z_OK && out->size() < kMaxTextChunk && (z.avail_in > 0 || filled)) {
    const size_t room = std::min(sizeof(buffer), kMaxTextChunk - out->size());
    z.next_out = reinterpret_cast<Bytef*>(buffer);
    z.avail_out = static_cast<uInt>(room);
    ret = inflate(&z, Z_SYNC_FLUSH);
    filled = z.avail_out == 0;
    out->append(buffer, room - z.avail_out);
  }
  const bool more_input = z.avail_in > 0;
  inflateEnd(&z);
  if (ret == Z_STREAM_END) return Inflated::kOk;
  if (ret != Z_OK && ret != Z_BUF_ERROR) return Inflated::kCorrupt;
  return out->size() == kMaxTextChunk && more_input ? Inflated::kTooLarge : Inflated::kOk;
}

bool IsKeyOfInterest(absl::string_view key) {
  return key == kExifKey || key == kRawProfileKey || key == kXmpKey;
}

// Stores the value of one of the keys above; false where Pillow raises because the
// text chunks hold too much. `characters` is the value's length as Python counts it.
bool Store(absl::string_view key, InfoValue value, size_t characters, PngInfo* info) {
  info->text_memory += characters;
  if (info->text_memory > kMaxTextMemory) return false;
  if (key == kExifKey) {
    info->exif = std::move(value);
  } else if (key == kRawProfileKey) {
    info->raw_profile = std::move(value.data);
  } else if (key == kXmpKey) {
    info->xmp = std::move(value.data);
  }
  return true;
}

// One chunk other than IDAT and IEND, as Pillow's PngStream reads it into `info`.
// False where Pillow raises, which makes it refuse the file.
bool ReadChunk(absl::string_view type, absl::string_view body, PngInfo* info) {
  if (type == "eXIf") {
    // Pillow prefixes the marker JPEG carries, so Exif.load() strips it only there.
    info->exif = InfoValue{false, absl::StrCat(absl::string_view("Exif\0\0", 6), body)};
    return true;
  }
  if (type != "tEXt" && type != "zTXt" && type != "iTXt") return true;
  const size_t nul = body.find('\0');
  const absl::string_view key = body.substr(0, nul);
  absl::string_view rest =
      nul == absl::string_view::npos ? absl::string_view() : body.substr(nul + 1);
  if (type == "tEXt") {
    // The value of key "exif" stays bytes; text otherwise (Latin-1, which the ASCII
    // patterns read below see as the bytes themselves).
    return !IsKeyOfInterest(key) ||
           Store(key, InfoValue{key != kExifKey, std::string(rest)}, rest.size(), info);
  }
  if (type == "zTXt") {
    const uint8_t method = rest.empty() ? 0 : static_cast<uint8_t>(rest[0]);
    if (method != 0) return false;  // "Unknown compression method"
    if (!IsKeyOfInterest(key)) return true;
    std::string text;
    const Inflated inflated = Inflate(rest.substr(rest.empty() ? 0 : 1), &text);
    if (inflated == Inflated::kTooLarge) return false;
    if (inflated == Inflated::kCorrupt) text.clear();
    const size_t characters = text.size();
    return Store(key, InfoValue{true, std::move(text)}, characters, info);
  }
  // iTXt: key, compression flag and method, language, translated key, text. A chunk
  // short of any part, compressed by an unknown method, corrupt, or not UTF-8 where
  // it must be is skipped.
  if (nul == absl::string_view::npos || rest.size() < 2 || !IsKeyOfInterest(key)) {
    return true;
  }
  const bool compressed = rest[0] != 0;
  const uint8_t method = static_cast<uint8_t>(rest[1]);
  const std::vector<absl::string_view> parts =
      absl::StrSplit(rest.substr(2), absl::MaxSplits('\0', 2));
  if (parts.size() < 3) return true;
  std::string text(parts[2]);
  if (compressed) {
    if (method != 0) return true;
    const Inflated inflated = Inflate(parts[2], &text);
    if (inflated == Inflated::kTooLarge) return false;
    if (inflated == Inflated::kCorrupt) return true;
  }
  if (!IsValidUtf8(parts[0]) || !IsValidUtf8(parts[1]) || !IsValidUtf8(text)) return true;
  const size_t characters = static_cast<size_t>(
      std::count_if(text.begin(), text.end(), [](char c) { return (c & 0xC0) != 0x80; }));
  return Store(key, InfoValue{true, std::move(text)}, characters, info);
}

// bytes.fromhex("".join(value.split("\n")[3:])): pairs of hex digits, ASCII white
// space skipped between pairs. False where Python raises.
bool HexProfile(absl::string_view value, std::string* bytes) {
  std::vector<absl::string_view> lines = absl::StrSplit(value, '\n');
  bytes->clear();
  int high = -1;
  for (size_t i = 3; i < lines.size(); ++i) {
    for (const char c : lines[i]) {
      const bool space = c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
      if (space && high < 0) continue;
      if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
      const int digit =
          absl::ascii_isdigit(static_cast<unsigned char>(c))
              ? c - '0'
              : absl::ascii_tolower(static_cast<unsigned char>(c)) - 'a' + 10;
      if (high < 0) {
        high = digit;
      } else {
        bytes->push_back(static_cast<char>(high * 16 + digit));
        high = -1;
      }
    }
  }
  return high < 0;
}

// re.search(r'tiff:Orientation(="|>)([0-9])', xmp): the digit, or -1.
int XmpOrientation(absl::string_view xmp) {
  constexpr absl::string_view kName = "tiff:Orientation";
  for (size_t at = xmp.find(kName); at != absl::string_view::npos;
       at = xmp.find(kName, at + 1)) {
    const absl::string_view after = xmp.substr(at + kName.size());
    const size_t digit = after.substr(0, 1) == ">"     ? 1
                         : after.substr(0, 2) == "=\"" ? 2
                                                       : 0;
    if (digit != 0 && after.size() > digit && absl::ascii_isdigit(after[digit])) {
      return after[digit] - '0';
    }
  }
  return -1;
}

// Image.getexif() then exif_transpose() on what the chunks left in `info`.
int Orientation(const PngInfo& info) {
  std::optional<std::string> exif;
  if (info.exif.has_value()) {
    // Exif.load() takes an empty text as no EXIF and raises on any other text.
    if (info.exif->is_text && !info.exif->data.empty()) return 1;
    exif = info.exif->data;
  } else if (info.raw_profile.has_value()) {
    std::string bytes;
    if (!HexProfile(*info.raw_profile, &bytes)) return 1;
    exif = std::move(bytes);
  }
  if (exif.has_value()) {
    const ExifOrientationTag tag = ReadExifOrientationTag(*exif);
    if (!tag.readable) return 1;
    if (tag.present) return tag.orientation;
  }
  if (info.xmp.has_value()) {
    const int orientation = XmpOrientation(*info.xmp);
    if (orientation >= 1 && orientation <= 8) return orientation;
  }
  return 1;
}

// Chunk types as Pillow's ChunkStream accepts them: four of [A-Za-z0-9_].
bool IsChunkType(absl::string_view type) {
  for (const char c : type) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

}  // namespace

int PngExifOrientation(absl::string_view png) {
  PngInfo info;
  bool seen_idat = false;
  size_t offset = 8;
  while (offset <= png.size() && png.size() - offset >= 8) {
    const auto* p = reinterpret_cast<const uint8_t*>(png.data()) + offset;
    const uint32_t length = (uint32_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
    const absl::string_view type = png.substr(offset + 4, 4);
    if (!IsChunkType(type) || type == "IEND" || length > png.size() - offset - 8) break;
    if (type == "IDAT") {
      // Image.open() reads the chunks up to the image data. Only where they held no
      // "exif" does getexif() load the image, reading the chunks after it too.
      if (!seen_idat && info.exif.has_value()) break;
      seen_idat = true;
    } else if (!ReadChunk(type, png.substr(offset + 8, length), &info)) {
      return 1;
    }
    offset += size_t{length} + 12;
  }
  return Orientation(info);
}

}  // namespace clipserve::image::internal
