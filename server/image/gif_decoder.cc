// GIF through giflib: the first frame, placed as Pillow 9.4 places it, then
// convert("RGB").

#include <gif_lib.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/image/decoders.h"

namespace clipserve::image::internal {
namespace {

constexpr absl::string_view kFormat = "GIF";
constexpr int kGraphicControlExtension = 0xF9;

struct MemoryInput {
  const uint8_t* data;
  size_t size;
  size_t position;
  // Whether a read past the end gets one block terminator (a zero byte), once.
  bool pad_terminator = false;
};

int ReadInput(GifFileType* gif, GifByteType* out, int length) {
  auto* input = static_cast<MemoryInput*>(gif->UserData);
  const size_t n =
      std::min(static_cast<size_t>(std::max(length, 0)), input->size - input->position);
  std::memcpy(out, input->data + input->position, n);
  input->position += n;
  if (n < static_cast<size_t>(std::max(length, 0)) && input->pad_terminator) {
    out[n] = 0;
    input->pad_terminator = false;
    return static_cast<int>(n + 1);
  }
  return static_cast<int>(n);
}

absl::Status GiflibError(int code) {
  if (code == D_GIF_ERR_NOT_ENOUGH_MEM) {
    return OutOfMemoryError("GIF", "out of memory");
  }
  if (code == D_GIF_ERR_READ_FAILED) return FormatError(kFormat, "data is truncated");
  const char* text = GifErrorString(code);
  return FormatError(kFormat,
                     text != nullptr ? text : absl::StrCat("giflib error ", code));
}

}  // namespace

absl::StatusOr<RgbImage> DecodeGif(absl::string_view encoded,
                                   const DecodeOptions& options) {
  MemoryInput input = {reinterpret_cast<const uint8_t*>(encoded.data()), encoded.size(),
                       0};
  int error = D_GIF_SUCCEEDED;
  GifFileType* gif = DGifOpen(&input, ReadInput, &error);
  if (gif == nullptr) return GiflibError(error);
  struct Cleanup {
    GifFileType* gif;
    ~Cleanup() {
      int ignored;
      DGifCloseFile(gif, &ignored);
    }
  } cleanup{gif};

  // Records up to the first image descriptor. As in Pillow, the last graphic control
  // extension that sets the transparency flag before the image gives its index.
  int transparency = -1;
  for (;;) {
    // Pillow skips any byte that starts no record (some encoders leave stray ones, a
    // spare block terminator for one); giflib would refuse the file.
    while (input.position < input.size && input.data[input.position] != ',' &&
           input.data[input.position] != '!' && input.data[input.position] != ';') {
      ++input.position;
    }
    GifRecordType record;
    if (DGifGetRecordType(gif, &record) == GIF_ERROR) return GiflibError(gif->Error);
    if (record == IMAGE_DESC_RECORD_TYPE) break;
    if (record == TERMINATE_RECORD_TYPE) return FormatError(kFormat, "no image in file");
    int code = 0;
    GifByteType* block = nullptr;
    if (DGifGetExtension(gif, &code, &block) == GIF_ERROR) return GiflibError(gif->Error);
    if (code == kGraphicControlExtension && block != nullptr && block[0] >= 4 &&
        (block[1] & 1) != 0) {
      transparency = block[4];
    }
    while (block != nullptr) {
      if (DGifGetExtensionNext(gif, &block) == GIF_ERROR) return GiflibError(gif->Error);
    }
  }
  if (DGifGetImageDesc(gif) == GIF_ERROR) return GiflibError(gif->Error);

  // Pillow grows the canvas (the logical screen) to hold a first frame that extends
  // past it, and fills it with the transparency index, or 0, before decoding.
  const GifImageDesc& frame = gif->Image;
  const int64_t canvas_width =
      std::max<int64_t>(gif->SWidth, int64_t{frame.Left} + frame.Width);
  const int64_t canvas_height =
      std::max<int64_t>(gif->SHeight, int64_t{frame.Top} + frame.Height);
  const absl::Status size_ok =
      CheckDeclaredSize(kFormat, canvas_width, canvas_height, options);
  if (!size_ok.ok()) return size_ok;

  // The canvas costs no bytes: 35 bytes (a 6000x6000 screen, one 1x1 frame) took 155 ms
  // and 141 MB to decode before this check.
  const absl::Status bytes_ok =
      CheckPixelsPerByte(kFormat, canvas_width, canvas_height, encoded.size());
  if (!bytes_ok.ok()) return bytes_ok;

  const int width = static_cast<int>(canvas_width);
  const int height = static_cast<int>(canvas_height);
  std::vector<uint8_t> indices(
      static_cast<size_t>(width) * height,
      static_cast<uint8_t>(transparency >= 0 ? transparency : 0));
  // After the last pixel giflib reads on to the frame's block terminator. Pillow stops
  // at the last pixel, so a file that ends there (no terminator, no trailer) decodes
  // in Pillow: one terminator is supplied. A frame whose pixels are cut short still
  // fails, as in Pillow: the supplied terminator ends its data early.
  input.pad_terminator = true;
  if (frame.Width > 0 && frame.Height > 0) {
    // Interlaced frames store rows 0, 8, 16, ..., then 4, 12, ..., then 2, 6, ...,
    // then 1, 3, ...
    static constexpr int kPassStart[] = {0, 4, 2, 1};
    static constexpr int kPassStep[] = {8, 8, 4, 2};
    const int passes = frame.Interlace ? 4 : 1;
    for (int pass = 0; pass < passes; ++pass) {
      const int start = frame.Interlace ? kPassStart[pass] : 0;
      const int step = frame.Interlace ? kPassStep[pass] : 1;
      for (int y = start; y < frame.Height; y += step) {
        uint8_t* row =
            &indices[(static_cast<size_t>(frame.Top) + y) * width + frame.Left];
        if (DGifGetLine(gif, row, frame.Width) == GIF_ERROR) {
          return GiflibError(gif->Error);
        }
      }
    }
  }

  // The frame's local palette, else the global one; with neither, indices read as gray
  // (Pillow's mode "L"), as do indices past the end of a short palette.
  Palette palette;
  const ColorMapObject* map = frame.ColorMap != nullptr ? frame.ColorMap : gif->SColorMap;
  if (map != nullptr) {
    for (int i = 0; i < map->ColorCount && i < 256; ++i) {
      palette.Set(i, map->Colors[i].Red, map->Colors[i].Green, map->Colors[i].Blue);
    }
  }
  RgbImage image = NewRgbImage(width, height);
  palette.Expand(indices.data(), static_cast<int64_t>(indices.size()),
                 image.pixels.data());
  // Pillow's mode: "P" (resized with NEAREST) unless the palette is missing or the gray
  // ramp, which Pillow reads as "L".
  if (map != nullptr && !palette.IsGrayRamp(map->ColorCount)) {
    image.resample = ResampleMode::kNearest;
  }
  return image;
}

}  // namespace clipserve::image::internal
