#include "client/synthetic_image.h"

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>

// jpeglib.h needs FILE and size_t declared first.
#include <jpeglib.h>

#include "absl/strings/str_cat.h"

namespace clipserve {
namespace {

// SplitMix64: tiny, fast, and specified bit for bit.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }

 private:
  uint64_t state_;
};

struct Color {
  double r, g, b;
};

Color RandomColor(Rng& rng, double lo, double hi) {
  return {rng.Uniform(lo, hi), rng.Uniform(lo, hi), rng.Uniform(lo, hi)};
}

Color Mix(const Color& a, const Color& b, double t) {
  return {a.r + (b.r - a.r) * t, a.g + (b.g - a.g) * t, a.b + (b.b - a.b) * t};
}

struct Shape {
  bool ellipse;
  double cx, cy, rx, ry;  // centre and half-extents, pixels
  Color color, shade;     // lit side and shaded side
};

struct JpegError {
  jpeg_error_mgr manager;
  jmp_buf jump;
};

void OnJpegError(j_common_ptr info) {
  std::longjmp(reinterpret_cast<JpegError*>(info->err)->jump, 1);
}

}  // namespace

std::vector<uint8_t> SyntheticRgb(int width, int height, uint64_t seed) {
  Rng rng(seed * 0x2545F4914F6CDD1Dull + 1);
  const double w = width, h = height;
  const Color sky_top = RandomColor(rng, 40, 140);
  const Color sky_low = RandomColor(rng, 150, 240);
  const Color ground_top = RandomColor(rng, 60, 170);
  const Color ground_low = RandomColor(rng, 10, 90);
  const double horizon = rng.Uniform(0.35, 0.65) * h;
  struct Wave {
    double fx, fy, phase, amplitude;
  };
  Wave waves[3];
  for (Wave& wave : waves) {
    wave = {rng.Uniform(0.5, 4) * 2 * M_PI / w, rng.Uniform(0.5, 4) * 2 * M_PI / h,
            rng.Uniform(0, 2 * M_PI), rng.Uniform(4, 12)};
  }
  std::vector<Shape> shapes(4 + rng.Next() % 5);
  for (Shape& s : shapes) {
    s.ellipse = rng.Next() % 2 == 0;
    s.cx = rng.Uniform(0.05, 0.95) * w;
    s.cy = rng.Uniform(0.2, 0.95) * h;
    s.rx = rng.Uniform(0.04, 0.2) * w;
    s.ry = rng.Uniform(0.04, 0.25) * h;
    s.color = RandomColor(rng, 30, 250);
    s.shade = Mix(s.color, {0, 0, 0}, rng.Uniform(0.3, 0.6));
  }
  // Fractal value noise (octaves of 64, 16 and 4 pixels): the texture of foliage,
  // fabric or gravel that gives photos their mid and high frequencies.
  struct Octave {
    int cell;
    double amplitude;
    int grid_w, grid_h;
    std::vector<double> grid;
  };
  std::vector<Octave> octaves = {{64, 10, 0, 0, {}}, {16, 7, 0, 0, {}}, {4, 5, 0, 0, {}}};
  for (Octave& octave : octaves) {
    octave.grid_w = width / octave.cell + 2;
    octave.grid_h = height / octave.cell + 2;
    octave.grid.resize(static_cast<size_t>(octave.grid_w) * octave.grid_h);
    for (double& v : octave.grid) v = rng.Uniform(-1, 1);
  }
  auto texture = [&octaves](int x, int y) {
    double sum = 0;
    for (const Octave& o : octaves) {
      const double fx = static_cast<double>(x) / o.cell,
                   fy = static_cast<double>(y) / o.cell;
      // Periodic beyond the image, so shifted lookups stay inside the grid.
      const int gx = static_cast<int>(fx) % (o.grid_w - 1);
      const int gy = static_cast<int>(fy) % (o.grid_h - 1);
      const double tx = fx - std::floor(fx), ty = fy - std::floor(fy);
      const double* row0 = &o.grid[static_cast<size_t>(gy) * o.grid_w + gx];
      const double* row1 = row0 + o.grid_w;
      const double top = row0[0] + (row0[1] - row0[0]) * tx;
      const double bottom = row1[0] + (row1[1] - row1[0]) * tx;
      sum += o.amplitude * (top + (bottom - top) * ty);
    }
    return sum;
  };
  std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      Color c = y < horizon ? Mix(sky_top, sky_low, y / horizon)
                            : Mix(ground_top, ground_low, (y - horizon) / (h - horizon));
      double light = 0;
      for (const Wave& wave : waves) {
        light += wave.amplitude * std::sin(wave.fx * x + wave.fy * y + wave.phase);
      }
      light += texture(x, y);
      c = {c.r + light, c.g + light, c.b + light};
      for (const Shape& s : shapes) {
        const double dx = (x + 0.5 - s.cx) / s.rx, dy = (y + 0.5 - s.cy) / s.ry;
        // Signed distance to the edge in pixels (approximately), for a 1.5 px soft edge.
        double inside;
        if (s.ellipse) {
          inside = (1 - std::sqrt(dx * dx + dy * dy)) * std::min(s.rx, s.ry);
        } else {
          inside = std::min((1 - std::fabs(dx)) * s.rx, (1 - std::fabs(dy)) * s.ry);
        }
        const double alpha = std::clamp(inside / 1.5 + 0.5, 0.0, 1.0);
        if (alpha <= 0) continue;
        Color surface = Mix(s.color, s.shade, std::clamp((dx + dy + 2) / 4, 0.0, 1.0));
        const double grain = 0.6 * texture(x + 97, y + 31);
        surface = {surface.r + grain, surface.g + grain, surface.b + grain};
        c = Mix(c, surface, alpha);
      }
      const double ux = (x + 0.5) / w - 0.5, uy = (y + 0.5) / h - 0.5;
      const double vignette = 1 - 0.35 * (ux * ux + uy * uy) * 2;
      uint8_t* pixel = &rgb[(static_cast<size_t>(y) * width + x) * 3];
      const double channel[3] = {c.r, c.g, c.b};
      for (int k = 0; k < 3; ++k) {
        // Roughly Gaussian noise (sum of three uniforms), sigma about 5 levels.
        const double noise = (rng.Uniform() + rng.Uniform() + rng.Uniform() - 1.5) * 10;
        pixel[k] = static_cast<uint8_t>(
            std::clamp(std::lround(channel[k] * vignette + noise), 0l, 255l));
      }
    }
  }
  return rgb;
}

absl::StatusOr<std::string> EncodeJpeg(const std::vector<uint8_t>& rgb, int width,
                                       int height, int quality) {
  if (width < 1 || height < 1 || width > 16384 || height > 16384) {
    return absl::InvalidArgumentError(
        absl::StrCat("image size ", width, "x", height, " outside 1..16384"));
  }
  if (quality < 1 || quality > 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("JPEG quality ", quality, " outside 1..100"));
  }
  if (rgb.size() != static_cast<size_t>(width) * height * 3) {
    return absl::InvalidArgumentError("RGB buffer size does not match the image size");
  }
  jpeg_compress_struct info;
  JpegError error;
  info.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = OnJpegError;
  unsigned char* buffer = nullptr;
  unsigned long size = 0;  // NOLINT(runtime/int): libjpeg's type
  if (setjmp(error.jump)) {
    jpeg_destroy_compress(&info);
    std::free(buffer);
    return absl::InternalError("libjpeg failed to encode");
  }
  jpeg_create_compress(&info);
  jpeg_mem_dest(&info, &buffer, &size);
  info.image_width = static_cast<JDIMENSION>(width);
  info.image_height = static_cast<JDIMENSION>(height);
  info.input_components = 3;
  info.in_color_space = JCS_RGB;
  jpeg_set_defaults(&info);
  jpeg_set_quality(&info, quality, TRUE);
  jpeg_start_compress(&info, TRUE);
  while (info.next_scanline < info.image_height) {
    JSAMPROW row =
        const_cast<JSAMPROW>(&rgb[static_cast<size_t>(info.next_scanline) * width * 3]);
    jpeg_write_scanlines(&info, &row, 1);
  }
  jpeg_finish_compress(&info);
  jpeg_destroy_compress(&info);
  std::string out(reinterpret_cast<const char*>(buffer), size);
  std::free(buffer);
  return out;
}

absl::StatusOr<std::string> SyntheticJpeg(int width, int height, uint64_t seed,
                                          int quality) {
  if (width < 1 || height < 1 || width > 16384 || height > 16384) {
    return absl::InvalidArgumentError(
        absl::StrCat("image size ", width, "x", height, " outside 1..16384"));
  }
  return EncodeJpeg(SyntheticRgb(width, height, seed), width, height, quality);
}

}  // namespace clipserve
