// libFuzzer target: arbitrary bytes -> DecodeImage(), and, when that succeeds, the CLIP
// preprocessing of the result. Any crash, sanitizer report, leak or timeout is a bug;
// errors must come back as absl::Status.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/strings/string_view.h"
#include "server/image/image_decoder.h"
#include "server/image/preprocessor.h"

namespace {

const clipserve::image::Preprocessor& SharedPreprocessor() {
  static const auto* preprocessor =
      clipserve::image::Preprocessor::Create({})->release();  // Defaults are valid.
  return *preprocessor;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using clipserve::image::DecodeImage;
  using clipserve::image::DecodeOptions;
  DecodeOptions options;
  // Smaller than the production limit so each input decodes fast and under the fuzzer's
  // memory cap; the limit logic itself is the same.
  options.max_pixels = 4'000'000;
  // The low bit of the size picks the EXIF path, so both are fuzzed.
  options.honor_exif_orientation = (size & 1) != 0;
  const absl::StatusOr<clipserve::image::RgbImage> image =
      DecodeImage(absl::string_view(reinterpret_cast<const char*>(data), size), options);
  if (!image.ok()) return 0;
  const clipserve::image::Preprocessor& preprocessor = SharedPreprocessor();
  std::vector<float> out(static_cast<size_t>(preprocessor.floats_per_image()));
  // Every decoded image within the pixel limit must preprocess.
  if (!preprocessor.PreprocessInto(*image, absl::MakeSpan(out)).ok()) __builtin_trap();
  return 0;
}
