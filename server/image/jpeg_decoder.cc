// JPEG through libjpeg-turbo, with the settings Pillow 9.4 uses (libjpeg's defaults:
// ISLOW DCT, fancy upsampling), so pixels match Pillow's bit for bit.

#include <algorithm>
#include <csetjmp>
#include <cstdint>
#include <vector>

// jpeglib.h uses size_t and FILE without including their headers, and jerror.h needs
// jpeglib.h.
// clang-format off
#include <cstddef>
#include <cstdio>
#include <jpeglib.h>
#include <jerror.h>
// clang-format on

#include "absl/strings/str_cat.h"
#include "server/image/decoders.h"
#include "server/image/exif_orientation.h"

namespace clipserve::image::internal {
namespace {

constexpr absl::string_view kFormat = "JPEG";

// Progressive files can hold any number of scans, each a pass over (a component of)
// the whole coefficient buffer, and a scan of a few dozen bytes can cover every block
// (end-of-band runs). Measured with libjpeg-turbo 2.1 on a 6000x6000 file: 10 scans
// decode in 0.32 s, the same file with 400 copies of one small scan added (235 KB in
// all) in 11.5 s. So the scans allowed shrink with the image: a file as large as the
// pixel limit may have kScansAtPixelLimit, a quarter of that size four times as many,
// never fewer than kScansAtPixelLimit nor more than kMaxScans (libjpeg-turbo's own
// TurboJPEG limit). Encoders write 2 to ~12 scans.
constexpr int kMaxScans = 500;
constexpr int kScansAtPixelLimit = 32;

// Per-decode state. Error handling never touches globals: libjpeg reports through the
// error manager, which longjmps back to the setjmp of the phase in progress.
struct JpegContext {
  jpeg_decompress_struct cinfo;
  jpeg_error_mgr error_mgr;
  jpeg_progress_mgr progress;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {};
  bool out_of_memory = false;
  bool created = false;
  // Scans allowed for this file (AllowedScans()); set once the header is read.
  int max_scans = kMaxScans;
  // Set once every row has been read out, before jpeg_finish_decompress().
  bool all_rows_out = false;
};

int AllowedScans(int64_t width, int64_t height, int64_t max_pixels) {
  const double pixels = std::max(1.0, static_cast<double>(width) * height);
  const double by_work = kScansAtPixelLimit * static_cast<double>(max_pixels) / pixels;
  return static_cast<int>(std::clamp(by_work, static_cast<double>(kScansAtPixelLimit),
                                     static_cast<double>(kMaxScans)));
}

JpegContext* ContextOf(j_common_ptr cinfo) {
  return static_cast<JpegContext*>(cinfo->client_data);
}

[[noreturn]] void Fail(j_common_ptr cinfo) {
  JpegContext* context = ContextOf(cinfo);
  (*cinfo->err->format_message)(cinfo, context->message);
  context->out_of_memory = cinfo->err->msg_code == JERR_OUT_OF_MEMORY;
  std::longjmp(context->jump, 1);
}

void ErrorExit(j_common_ptr cinfo) { Fail(cinfo); }

// libjpeg reports recoverable corruption as warnings (msg_level -1) and carries on.
// Pillow ignores those, except that a stream ending before the last row makes Pillow
// raise ("image file is truncated"); libjpeg would pad it with gray, so that warning
// is an error here until every row is out. After that (the file ends inside a marker
// past the scan) Pillow has its image, and so has this decoder.
void EmitMessage(j_common_ptr cinfo, int msg_level) {
  if (msg_level != -1) return;  // Trace messages.
  if (cinfo->err->msg_code == JWRN_JPEG_EOF && !ContextOf(cinfo)->all_rows_out) {
    Fail(cinfo);
  }
  ++cinfo->err->num_warnings;
}

void OutputMessage(j_common_ptr) {}  // Never print to stderr.

void Progress(j_common_ptr cinfo) {
  auto* dinfo = reinterpret_cast<j_decompress_ptr>(cinfo);
  JpegContext* context = ContextOf(cinfo);
  if (dinfo->input_scan_number > context->max_scans) {
    std::snprintf(context->message, JMSG_LENGTH_MAX,
                  "progressive JPEG has more than %d scans, the most allowed at %ux%u",
                  context->max_scans, dinfo->image_width, dinfo->image_height);
    std::longjmp(context->jump, 1);
  }
}

// Phase 1: header. No object with a destructor lives in the setjmp frames below, so
// longjmp skips nothing that needs cleanup; *context is cleaned up by its owner.
bool ReadHeader(JpegContext* context, const uint8_t* data, size_t size, bool save_exif) {
  jpeg_decompress_struct& cinfo = context->cinfo;
  cinfo.err = jpeg_std_error(&context->error_mgr);
  context->error_mgr.error_exit = ErrorExit;
  context->error_mgr.emit_message = EmitMessage;
  context->error_mgr.output_message = OutputMessage;
  cinfo.client_data = context;  // jpeg_create_decompress keeps err and client_data.
  if (setjmp(context->jump)) return false;
  jpeg_create_decompress(&cinfo);
  context->created = true;
  context->progress.progress_monitor = Progress;
  cinfo.progress = &context->progress;
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));  // NOLINT(runtime/int)
  if (save_exif) jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  return true;
}

// With Huffman coding, every block of every component costs at least one bit in the
// scan that carries its DC coefficient (the DC difference's code), and every component
// of a valid file has one. So a header that declares more blocks than the bytes after
// the first scan header have bits is refused before the image is allocated. Otherwise
// a few hundred bytes ending in an end-of-image marker make libjpeg (and Pillow)
// decode the whole declared image, padding it with gray: a 634-byte file declaring
// 6000x6000 took 120 ms and 108 MB. The first scan alone is not enough: a file whose
// first scan holds only a subsampled component would pass with a sixth of the bytes
// (far less with extreme sampling factors). Arithmetic coding can spend less than a
// bit on a block of a flat area, so an arithmetic-coded image of mostly one color is
// refused too, where Pillow decodes it.
absl::Status CheckCodedSize(const jpeg_decompress_struct& cinfo) {
  double blocks = 0;
  for (int i = 0; i < cinfo.num_components; ++i) {
    const jpeg_component_info& component = cinfo.comp_info[i];
    blocks += static_cast<double>(component.width_in_blocks) * component.height_in_blocks;
  }
  const size_t coded_bytes = cinfo.src->bytes_in_buffer;
  if (8.0 * static_cast<double>(coded_bytes) < blocks) {
    return FormatError(
        kFormat,
        absl::StrCat("declared size ", cinfo.image_width, "x", cinfo.image_height,
                     " needs at least one bit for each of its ",
                     static_cast<int64_t>(blocks), " blocks, more than the ", coded_bytes,
                     " bytes after its first scan header hold"));
  }
  return absl::OkStatus();
}

// Pillow's CMYK -> RGB (Convert.c cmyk2rgb) on Adobe-inverted samples, which Pillow
// un-inverts first (raw mode "CMYK;I"): with c, m, y, k the stored bytes,
// channel = clip(nk - nk * (255 - c) / 255) with nk = k and Pillow's MULDIV255 rounding.
inline uint8_t CmykChannel(int inverted_c, int nk) {
  const int c = 255 - inverted_c;
  const int t = c * nk + 128;
  const int v = nk - (((t >> 8) + t) >> 8);
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Phase 2: pixels, into `out` (width * height * 3 bytes). When the file is CMYK or
// YCCK, `cmyk` (width * height * 4 bytes) receives the samples as Pillow holds them,
// un-inverted.
bool Decompress(JpegContext* context, uint8_t* out, uint8_t* cmyk) {
  if (setjmp(context->jump)) return false;
  jpeg_decompress_struct& cinfo = context->cinfo;
  jpeg_start_decompress(&cinfo);
  const size_t width = cinfo.output_width;
  const bool is_cmyk = cinfo.out_color_space == JCS_CMYK;
  // Up to 16 rows per call: libjpeg returns at most one row group per call (two rows
  // for 4:2:0), where asking for one row at a time would take two calls per group.
  constexpr JDIMENSION kRowsPerCall = 16;
  while (cinfo.output_scanline < cinfo.output_height) {
    const size_t first = cinfo.output_scanline;
    const JDIMENSION wanted =
        std::min<JDIMENSION>(kRowsPerCall, cinfo.output_height - cinfo.output_scanline);
    JSAMPROW rows[kRowsPerCall];
    for (JDIMENSION i = 0; i < wanted; ++i) {
      rows[i] = is_cmyk ? cmyk + (first + i) * width * 4 : out + (first + i) * width * 3;
    }
    const JDIMENSION got = jpeg_read_scanlines(&cinfo, rows, wanted);
    if (got == 0) {
      std::snprintf(context->message, JMSG_LENGTH_MAX, "decoder returned no scanline");
      return false;
    }
    if (!is_cmyk) continue;
    for (JDIMENSION i = 0; i < got; ++i) {
      uint8_t* dst = out + (first + i) * width * 3;
      uint8_t* row = rows[i];
      for (size_t x = 0; x < width; ++x) {
        uint8_t* s = row + x * 4;
        const int nk = s[3];  // 255 - K after un-inverting.
        dst[x * 3 + 0] = CmykChannel(s[0], nk);
        dst[x * 3 + 1] = CmykChannel(s[1], nk);
        dst[x * 3 + 2] = CmykChannel(s[2], nk);
        for (int c = 0; c < 4; ++c) s[c] = static_cast<uint8_t>(255 - s[c]);
      }
    }
  }
  context->all_rows_out = true;
  jpeg_finish_decompress(&cinfo);
  return true;
}

absl::Status LibjpegError(const JpegContext& context) {
  if (context.out_of_memory) {
    return OutOfMemoryError("JPEG", context.message);
  }
  return FormatError(kFormat, context.message);
}

// Destroys the libjpeg state on every path out of DecodeJpeg.
class ContextCleanup {
 public:
  explicit ContextCleanup(JpegContext* context) : context_(context) {}
  ~ContextCleanup() {
    if (context_->created) jpeg_destroy_decompress(&context_->cinfo);
  }
  ContextCleanup(const ContextCleanup&) = delete;
  ContextCleanup& operator=(const ContextCleanup&) = delete;

 private:
  JpegContext* context_;
};

}  // namespace

absl::StatusOr<RgbImage> DecodeJpeg(absl::string_view encoded,
                                    const DecodeOptions& options, int* exif_orientation) {
  JpegContext context;
  ContextCleanup cleanup(&context);
  if (!ReadHeader(&context, reinterpret_cast<const uint8_t*>(encoded.data()),
                  encoded.size(), options.honor_exif_orientation)) {
    return LibjpegError(context);
  }
  jpeg_decompress_struct& cinfo = context.cinfo;
  const absl::Status size_ok =
      CheckDeclaredSize(kFormat, cinfo.image_width, cinfo.image_height, options);
  if (!size_ok.ok()) return size_ok;
  const absl::Status coded_ok = CheckCodedSize(cinfo);
  if (!coded_ok.ok()) return coded_ok;
  context.max_scans =
      AllowedScans(cinfo.image_width, cinfo.image_height, options.max_pixels);

  // Pillow's modes by component count: 1 -> L, 3 -> RGB, 4 -> CMYK (always read as
  // Adobe-inverted); libjpeg picks the stored color space (YCbCr, RGB, YCCK, ...).
  switch (cinfo.num_components) {
    case 1:
    case 3:
      cinfo.out_color_space = JCS_RGB;  // Gray is replicated, as L -> RGB does.
      break;
    case 4:
      cinfo.out_color_space = JCS_CMYK;
      break;
    default:
      return FormatError(
          kFormat, absl::StrCat("unsupported component count ", cinfo.num_components));
  }

  if (options.honor_exif_orientation) {
    for (jpeg_saved_marker_ptr m = cinfo.marker_list; m != nullptr; m = m->next) {
      const absl::string_view payload(reinterpret_cast<const char*>(m->data),
                                      m->data_length);
      // Pillow takes the first APP1 segment starting "Exif\0" as the EXIF, and
      // reads no orientation from it unless "Exif\0\0" and a TIFF header follow.
      if (m->marker == JPEG_APP0 + 1 &&
          payload.substr(0, 5) == absl::string_view("Exif\0", 5)) {
        *exif_orientation = ExifOrientation(payload);
        break;
      }
    }
  }

  RgbImage image = NewRgbImage(static_cast<int>(cinfo.image_width),
                               static_cast<int>(cinfo.image_height));
  if (cinfo.num_components == 4) {
    // Pillow's "CMYK", which it resizes before converting.
    image.resample = ResampleMode::kCmyk;
    image.cmyk.resize(image.pixels.size() / 3 * 4);
  }
  if (!Decompress(&context, image.pixels.data(), image.cmyk.data())) {
    return LibjpegError(context);
  }
  return image;
}

}  // namespace clipserve::image::internal
