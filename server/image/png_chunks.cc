// What Pillow 9.4's PngStream makes of a PNG's chunks beside the pixels libpng reads:
// the files it refuses for a chunk libpng skips, and the EXIF orientation that
// ImageOps.exif_transpose(Image.open(f)) finds in its eXIf chunk, in the EXIF
// ImageMagick stores hex-coded in a "Raw profile type exif" text chunk, or in the
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
#include "server/common/status_macros.h"
#include "server/image/decoders.h"
#include "server/image/exif_orientation.h"
#include "server/tokenizer/unicode_text.h"

namespace clipserve::image::internal {
namespace {

constexpr absl::string_view kFormat = "PNG";

// Pillow's MAX_TEXT_CHUNK: a compressed text chunk or ICC profile that inflates to
// more is refused, and so is a file whose text chunks hold more than MAX_TEXT_MEMORY.
constexpr size_t kMaxTextChunk = size_t{1} << 20;
constexpr size_t kMaxTextMemory = 64 * kMaxTextChunk;
// What this reader inflates in all before it refuses the file. Pillow has no such
// limit for what it does not count as text (ICC profiles, chunks with an empty key or
// text that is not UTF-8), so files of many such chunks are a deliberate difference:
// otherwise a few hundred kilobytes could cost gigabytes of inflating.
constexpr size_t kMaxInflated = kMaxTextMemory;

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

// The walk over a file's chunks, in order, as Pillow's PngStream reads them.
class ChunkReader {
 public:
  // One chunk other than IDAT and IEND: INVALID_ARGUMENT where Pillow raises for it.
  absl::Status Read(absl::string_view type, absl::string_view body) {
    if (type == "eXIf") {
      // Pillow prefixes the marker JPEG carries, so Exif.load() strips it only there.
      Store(kExifKey,
            InfoValue{false, absl::StrCat(absl::string_view("Exif\0\0", 6), body)});
      return absl::OkStatus();
    }
    if (type == "tEXt" || type == "zTXt" || type == "iTXt") return ReadText(type, body);
    if (type == "iCCP") return ReadIccProfile(body);
    if (type == "sRGB" && body.empty()) {
      return FormatError(kFormat, "an sRGB chunk is empty");
    }
    if (type == "pHYs" && body.size() < 9) {
      return FormatError(kFormat, "a pHYs chunk is shorter than 9 bytes");
    }
    return absl::OkStatus();
  }

  // From the image data on, the chunks change the orientation only where none before
  // it held EXIF (getexif() loads the image, which reads them, only then).
  void ReachedImageData() { frozen_ = info_.exif.has_value(); }

  const PngInfo& info() const { return info_; }

 private:
  absl::Status ReadText(absl::string_view type, absl::string_view body) {
    const size_t nul = body.find('\0');
    const absl::string_view key = body.substr(0, nul);
    const absl::string_view rest =
        nul == absl::string_view::npos ? absl::string_view() : body.substr(nul + 1);
    if (type == "tEXt") {
      if (key.empty()) return absl::OkStatus();
      // The value of key "exif" stays bytes; text otherwise (Latin-1, which the ASCII
      // patterns read below see as the bytes themselves).
      CLIPSERVE_RETURN_IF_ERROR(CountText(rest.size()));
      if (Wanted(key)) Store(key, InfoValue{key != kExifKey, std::string(rest)});
      return absl::OkStatus();
    }
    if (type == "zTXt") {
      const uint8_t method = rest.empty() ? 0 : static_cast<uint8_t>(rest[0]);
      if (method != 0) {
        return FormatError(kFormat, absl::StrCat("a zTXt chunk names compression method ",
                                                 method, ", which does not exist"));
      }
      CLIPSERVE_RETURN_IF_ERROR(InflateChunk("zTXt", rest.substr(rest.empty() ? 0 : 1)));
      if (corrupt_) scratch_.clear();  // as Pillow takes it
      if (key.empty()) return absl::OkStatus();
      CLIPSERVE_RETURN_IF_ERROR(CountText(scratch_.size()));
      if (Wanted(key)) Store(key, InfoValue{true, scratch_});
      return absl::OkStatus();
    }
    // iTXt: key, compression flag and method, language, translated key, text. A chunk
    // short of any part, compressed by an unknown method, corrupt, or not UTF-8 where
    // it must be is skipped.
    if (nul == absl::string_view::npos || rest.size() < 2) return absl::OkStatus();
    const bool compressed = rest[0] != 0;
    const uint8_t method = static_cast<uint8_t>(rest[1]);
    const std::vector<absl::string_view> parts =
        absl::StrSplit(rest.substr(2), absl::MaxSplits('\0', 2));
    if (parts.size() < 3 || (compressed && method != 0)) return absl::OkStatus();
    absl::string_view text = parts[2];
    if (compressed) {
      CLIPSERVE_RETURN_IF_ERROR(InflateChunk("iTXt", text));
      if (corrupt_) return absl::OkStatus();
      text = scratch_;
    }
    if (!IsValidUtf8(parts[0]) || !IsValidUtf8(parts[1]) || !IsValidUtf8(text)) {
      return absl::OkStatus();
    }
    const size_t characters = static_cast<size_t>(std::count_if(
        text.begin(), text.end(), [](char c) { return (c & 0xC0) != 0x80; }));
    CLIPSERVE_RETURN_IF_ERROR(CountText(characters));
    if (Wanted(key)) Store(key, InfoValue{true, std::string(text)});
    return absl::OkStatus();
  }

  // Pillow reads the method at the profile name's NUL itself (always 0), or, with no
  // NUL, at the last byte (an empty chunk raises), and inflates from two bytes on.
  absl::Status ReadIccProfile(absl::string_view body) {
    if (body.empty()) return FormatError(kFormat, "an iCCP chunk is empty");
    const size_t nul = body.find('\0');
    const uint8_t method =
        static_cast<uint8_t>(nul == absl::string_view::npos ? body.back() : 0);
    if (method != 0) {
      return FormatError(kFormat, absl::StrCat("an iCCP chunk names compression method ",
                                               method, ", which does not exist"));
    }
    const size_t from = nul == absl::string_view::npos ? 1 : nul + 2;
    return InflateChunk("iCCP",
                        from <= body.size() ? body.substr(from) : absl::string_view());
  }

  // Inflates into scratch_, setting corrupt_; INVALID_ARGUMENT past 1 MiB, as Pillow,
  // or past kMaxInflated in all.
  absl::Status InflateChunk(absl::string_view type, absl::string_view data) {
    const Inflated inflated = Inflate(data, &scratch_);
    if (inflated == Inflated::kTooLarge) {
      return FormatError(kFormat, absl::StrCat(type == "zTXt" ? "a " : "an ", type,
                                               " chunk inflates to more than ",
                                               kMaxTextChunk >> 20, " MiB"));
    }
    corrupt_ = inflated == Inflated::kCorrupt;
    inflated_ += scratch_.size();
    if (inflated_ > kMaxInflated) {
      return FormatError(kFormat, absl::StrCat("compressed chunks inflate to more than ",
                                               kMaxInflated >> 20, " MiB"));
    }
    return absl::OkStatus();
  }

  // Pillow's check_text_memory().
  absl::Status CountText(size_t characters) {
    text_memory_ += characters;
    if (text_memory_ > kMaxTextMemory) {
      return FormatError(kFormat, absl::StrCat("text chunks hold more than ",
                                               kMaxTextMemory >> 20, " MiB"));
    }
    return absl::OkStatus();
  }

  // Whether a value of `key` would still change the orientation.
  bool Wanted(absl::string_view key) const { return !frozen_ && IsKeyOfInterest(key); }

  void Store(absl::string_view key, InfoValue value) {
    if (frozen_) return;
    if (key == kExifKey) {
      info_.exif = std::move(value);
    } else if (key == kRawProfileKey) {
      info_.raw_profile = std::move(value.data);
    } else if (key == kXmpKey) {
      info_.xmp = std::move(value.data);
    }
  }

  PngInfo info_;
  bool frozen_ = false;
  size_t text_memory_ = 0;
  size_t inflated_ = 0;
  std::string scratch_;
  bool corrupt_ = false;
};

// bytes.fromhex("".join(value.split("\n")[3:])): pairs of hex digits, ASCII white
// space skipped between pairs. False where Python raises. Read in place: a text of
// newlines (64 MiB from a small zTXt) split into lines would take 16 bytes a line.
bool HexProfile(absl::string_view value, std::string* bytes) {
  bytes->clear();
  // The first three lines dropped, the others joined without their newlines.
  for (int line = 0; line < 3; ++line) {
    const size_t end = value.find('\n');
    if (end == absl::string_view::npos) return true;
    value.remove_prefix(end + 1);
  }
  int high = -1;
  for (const char c : value) {
    if (c == '\n') continue;
    const bool space = c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
    if (space && high < 0) continue;
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
    const int digit = absl::ascii_isdigit(static_cast<unsigned char>(c))
                          ? c - '0'
                          : absl::ascii_tolower(static_cast<unsigned char>(c)) - 'a' + 10;
    if (high < 0) {
      high = digit;
    } else {
      bytes->push_back(static_cast<char>(high * 16 + digit));
      high = -1;
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

absl::StatusOr<int> ReadPngChunks(absl::string_view png, bool want_orientation) {
  ChunkReader reader;
  bool seen_idat = false;
  bool animated = false;
  size_t offset = 8;
  // As Pillow: up to IEND, a chunk type it cannot read, or a header cut short.
  while (offset <= png.size() && png.size() - offset >= 8) {
    const auto* p = reinterpret_cast<const uint8_t*>(png.data()) + offset;
    const uint32_t length = (uint32_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
    const absl::string_view type = png.substr(offset + 4, 4);
    if (!IsChunkType(type) || type == "IEND") break;
    // An APNG's frames after the image data are not read (Pillow stops at them too).
    if (seen_idat && animated && type == "fcTL") break;
    if (type == "acTL") animated = true;
    if (type == "IDAT" && !seen_idat) {
      reader.ReachedImageData();
      seen_idat = true;
    }
    if (length > png.size() - offset - 8) {
      // libpng judges the image data, and refuses what it needs and misses; Pillow
      // refuses any other chunk the file cuts short.
      if (type == "IDAT") break;
      return FormatError(kFormat, absl::StrCat("the ", type, " chunk at byte ", offset,
                                               " runs past the end of the file"));
    }
    if (type != "IDAT") {
      CLIPSERVE_RETURN_IF_ERROR(reader.Read(type, png.substr(offset + 8, length)));
    }
    offset += size_t{length} + 12;
  }
  return want_orientation ? Orientation(reader.info()) : 1;
}

}  // namespace clipserve::image::internal
