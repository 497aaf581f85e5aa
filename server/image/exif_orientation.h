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

// `image` turned upright for EXIF `orientation`, exactly as Pillow's
// ImageOps.exif_transpose() does it: 2 mirror left-right, 3 rotate 180, 4 mirror
// top-bottom, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90
// counter-clockwise (5-8 swap width and height). Any other value returns `image`
// unchanged. Alpha and CMYK values turn with the pixels; the resample mode is kept.
// `image` must be consistent (ValidateRgbView() OK). Thread-safe.
RgbImage ApplyExifOrientation(RgbImage image, int orientation);

}  // namespace clipserve::image

#endif  // CLIPSERVE_SERVER_IMAGE_EXIF_ORIENTATION_H_
