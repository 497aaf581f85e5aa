#ifndef CLIPSERVE_TESTS_IMAGE_IMAGE_TEST_UTIL_H_
#define CLIPSERVE_TESTS_IMAGE_IMAGE_TEST_UTIL_H_

#include <cstdint>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "server/image/rgb_image.h"

namespace clipserve::image {

// The bytes of the file at `path`; false when it cannot be read.
inline bool ReadFileBytes(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

// A width x height image of uniformly random bytes from std::mt19937(seed).
inline RgbImage RandomImage(int width, int height, uint32_t seed) {
  std::mt19937 rng(seed);
  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.resize(size_t{3} * width * height);
  for (uint8_t& v : image.pixels) v = static_cast<uint8_t>(rng());
  return image;
}

}  // namespace clipserve::image

#endif  // CLIPSERVE_TESTS_IMAGE_IMAGE_TEST_UTIL_H_
