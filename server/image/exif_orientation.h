#ifndef CLIPSERVE_SERVER_IMAGE_EXIF_ORIENTATION_H_
#define CLIPSERVE_SERVER_IMAGE_EXIF_ORIENTATION_H_

#include "absl/strings/string_view.h"
#include "server/image/rgb_image.h"

namespace clipserve::image {

// The Orientation tag (0x0112) of IFD0 in an EXIF payload: a TIFF structure ("II*\0" or
// "MM\0*", then IFDs), optionally preceded by the "Exif\0\0" marker JPEG APP1 segments
// carry. Returns 1 (upright) when the payload is malformed, has no such tag, or holds a
// value outside 1-8. Every offset is bounds-checked. Thread-safe; never blocks.
int ExifOrientation(absl::string_view exif);

// What an EXIF payload says about orientation, in the detail a PNG needs: Pillow 9.4
// falls back on a PNG's XMP only where the EXIF it read holds no orientation tag.
struct ExifOrientationTag {
  // False where Pillow's Exif.load() raises: a non-empty payload (after the optional
  // "Exif\0\0") that is not a classic TIFF header with its first IFD offset. BigTIFF
  // headers are among them: Pillow 9.4 reads their 8-byte offset past the 8 bytes it
  // has. ImageOps.exif_transpose() then raises; clipserve leaves the image upright.
  bool readable = true;
  // Whether IFD0 holds an orientation entry Pillow stores, whatever its value.
  bool present = false;
  // 1-8, as ExifOrientation() returns it.
  int orientation = 1;
};
ExifOrientationTag ReadExifOrientationTag(absl::string_view exif);

// `image` turned upright for EXIF `orientation`, exactly as Pillow's
// ImageOps.exif_transpose() does it: 2 mirror left-right, 3 rotate 180, 4 mirror
// top-bottom, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90
// counter-clockwise (5-8 swap width and height). Any other value returns `image`
// unchanged. Alpha and CMYK values turn with the pixels; the resample mode is kept.
// `image` must be consistent (ValidateRgbView() OK). Thread-safe.
RgbImage ApplyExifOrientation(RgbImage image, int orientation);

}  // namespace clipserve::image

#endif  // CLIPSERVE_SERVER_IMAGE_EXIF_ORIENTATION_H_
