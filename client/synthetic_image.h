#ifndef CLIPSERVE_CLIENT_SYNTHETIC_IMAGE_H_
#define CLIPSERVE_CLIENT_SYNTHETIC_IMAGE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace clipserve {

// Realistic stand-ins for photos, generated in the client so that `clip_client bench`
// needs no data set: a sky-and-ground gradient, soft lighting waves, a handful of
// shaded shapes with anti-aliased edges, a vignette and sensor-like noise. This has
// the spectrum of a photo, so the JPEG is about the size of a camera photo of the
// same resolution and decoding costs the server what a real upload costs; a flat or
// random-noise image would not. Deterministic: the same seed gives the same pixels
// on every platform (own PRNG, no std:: distributions). Thread-safe.

// Interleaved RGB8, row-major, width * height * 3 bytes. width, height >= 1.
std::vector<uint8_t> SyntheticRgb(int width, int height, uint64_t seed);

// SyntheticRgb() encoded as a baseline JPEG (libjpeg, 4:2:0) of `quality` (1..100).
// INVALID_ARGUMENT for sizes < 1 or > 16384 or a quality outside 1..100; INTERNAL when
// libjpeg fails.
absl::StatusOr<std::string> SyntheticJpeg(int width, int height, uint64_t seed,
                                          int quality = 90);

// Encodes RGB8 pixels as JPEG (the encoder behind SyntheticJpeg()).
absl::StatusOr<std::string> EncodeJpeg(const std::vector<uint8_t>& rgb, int width,
                                       int height, int quality);

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_SYNTHETIC_IMAGE_H_
