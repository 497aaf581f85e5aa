#include "server/engine/device_image_preprocessor.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/image/bicubic_resize.h"
#include "server/model/clip_model.h"
#include "server/model/device.h"

namespace clipserve {
namespace {

// One axis' taps as two count x k tables (k: the most taps any output has), shorter
// rows padded with weight 0 on a valid source position, so that every output is one
// fixed-size gather and sum.
struct PaddedTaps {
  int64_t k = 0;
  std::vector<int64_t> index;   // count * k source positions, minus `offset`
  std::vector<int64_t> weight;  // count * k fixed-point weights
};

PaddedTaps Pad(const image::BicubicTaps& taps, int offset) {
  PaddedTaps padded;
  const size_t count = taps.start.size();
  for (size_t i = 0; i < count; ++i)
    padded.k = std::max<int64_t>(padded.k, taps.length[i]);
  padded.k = std::max<int64_t>(padded.k, 1);
  padded.index.assign(count * padded.k, 0);
  padded.weight.assign(count * padded.k, 0);
  for (size_t i = 0; i < count; ++i) {
    for (int64_t t = 0; t < padded.k; ++t) {
      const size_t at = i * padded.k + t;
      if (t < taps.length[i]) {
        padded.index[at] = taps.start[i] + t - offset;
        padded.weight[at] = taps.weights[taps.weights_offset[i] + t];
      } else {
        // A tap that adds nothing, on the output's first source position.
        padded.index[at] = std::max(taps.start[i] - offset, 0);
      }
    }
  }
  return padded;
}

// What one image needs on the device: the source rows the crop reads, and both axes'
// tables, each at an offset into the batch's packed host buffers.
struct ImagePlan {
  int64_t width = 0;
  int64_t row_begin = 0;
  int64_t rows = 0;
  int64_t pixels_offset = 0;  // bytes into the pixel buffer
  PaddedTaps horizontal;
  PaddedTaps vertical;
  int64_t tables_offset = 0;  // int64s into the table buffer
};

// Pillow's 8-bit result of fixed-point sums: (2^21 + sum) >> 22, clamped to [0, 255].
torch::Tensor RoundToByte(torch::Tensor sums) {
  sums.add_(int64_t{1} << (image::kBicubicPrecisionBits - 1));
  return torch::bitwise_right_shift(sums, image::kBicubicPrecisionBits).clamp_(0, 255);
}

// One resampling pass over `values` (A x B x 3, integer values 0..255) along `dim` (0:
// rows, 1: columns): output position j is the weighted sum of the `k` source positions
// index[j * k ...], rounded as Pillow rounds. Returns int32, count x B x 3 (dim 0) or
// A x count x 3 (dim 1). Works in pieces whose int32 intermediate stays within
// `max_bytes`, along A for dim 1 and along the outputs for dim 0.
torch::Tensor Resample(const torch::Tensor& values, int dim, const torch::Tensor& index,
                       const torch::Tensor& weight, int64_t count, int64_t k,
                       int64_t max_bytes) {
  const int64_t other = values.size(1 - dim);  // the extent not resampled
  const int64_t bytes_per_unit =
      (dim == 0 ? k * other : count * k) * 3 * static_cast<int64_t>(sizeof(int32_t));
  const int64_t units = dim == 0 ? count : other;
  const int64_t step = std::clamp<int64_t>(max_bytes / bytes_per_unit, 1, units);
  torch::Tensor out = torch::empty(dim == 0 ? std::vector<int64_t>{count, other, 3}
                                            : std::vector<int64_t>{other, count, 3},
                                   values.options().dtype(torch::kInt));
  for (int64_t begin = 0; begin < units; begin += step) {
    const int64_t n = std::min(step, units - begin);
    torch::Tensor sums;
    if (dim == 0) {
      // Outputs [begin, begin + n): their source rows, weighted and summed.
      const torch::Tensor rows =
          values.index_select(0, index.narrow(0, begin * k, n * k));
      // uint8 or int32 times int32 is int32 (type promotion): one kernel.
      sums = rows.view({n, k, other, 3})
                 .mul(weight.narrow(0, begin * k, n * k).view({n, k, 1, 1}))
                 .sum(1, /*keepdim=*/false, torch::kInt);
    } else {
      // Source rows [begin, begin + n), every output column.
      const torch::Tensor columns = values.narrow(0, begin, n).index_select(1, index);
      sums = columns.view({n, count, k, 3})
                 .mul(weight.view({1, count, k, 1}))
                 .sum(2, /*keepdim=*/false, torch::kInt);
    }
    out.narrow(0, begin, n).copy_(RoundToByte(std::move(sums)));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceImagePreprocessor>> DeviceImagePreprocessor::Create(
    const image::Preprocessor* host, const torch::Device& device,
    const Options& options) {
  if (host == nullptr) {
    return absl::InvalidArgumentError(
        "the device preprocessor needs a host preprocessor");
  }
  if (options.max_scratch_bytes < 1) {
    return absl::InvalidArgumentError("max_scratch_bytes must be >= 1");
  }
  torch::Tensor table;
  CLIPSERVE_RETURN_IF_ERROR(CatchTorchErrors(
      [&] {
        torch::Tensor host_table = torch::empty({3, 256}, torch::kFloat);
        float* values = host_table.data_ptr<float>();
        for (int c = 0; c < 3; ++c) {
          for (int v = 0; v < 256; ++v) {
            values[c * 256 + v] = host->NormalizedValue(c, static_cast<uint8_t>(v));
          }
        }
        table = host_table.to(device);
      },
      "copying the normalization table to the device"));
  return std::unique_ptr<DeviceImagePreprocessor>(new DeviceImagePreprocessor(
      host->options().image_size, device, options, std::move(table)));
}

DeviceImagePreprocessor::DeviceImagePreprocessor(int64_t size,
                                                 const torch::Device& device,
                                                 const Options& options,
                                                 torch::Tensor table)
    : device_(device), options_(options), size_(size), table_(std::move(table)) {}

absl::Status DeviceImagePreprocessor::PreprocessInto(
    absl::Span<const image::RgbImageView> images, absl::Span<const int64_t> rows,
    torch::Tensor& batch) const {
  const int64_t s = size_;
  if (images.size() != rows.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(images.size(), " images but ", rows.size(), " rows"));
  }
  const bool same_device =
      batch.defined() && batch.device().type() == device_.type() &&
      (!device_.has_index() || batch.device().index() == device_.index());
  if (!same_device || batch.scalar_type() != torch::kFloat || batch.dim() != 4 ||
      batch.size(1) != 3 || batch.size(2) != s || batch.size(3) != s) {
    return absl::InvalidArgumentError(absl::StrCat("the batch must be a float32 N x 3 x ",
                                                   s, " x ", s, " tensor on ",
                                                   device_.str()));
  }
  // Plan every image first, so that a bad one fails the call before any work.
  std::vector<ImagePlan> plans(images.size());
  int64_t pixel_bytes = 0;
  int64_t table_values = 0;
  for (size_t i = 0; i < images.size(); ++i) {
    if (rows[i] < 0 || rows[i] >= batch.size(0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("row ", rows[i], " is outside a batch of ", batch.size(0)));
    }
    const image::RgbImageView& view = images[i];
    CLIPSERVE_RETURN_IF_ERROR(image::ValidateRgbView(view));
    if (view.resample != image::ResampleMode::kDirect) {
      return absl::InvalidArgumentError(
          "the device resize is RGB's; palette, alpha and CMYK images "
          "(image::ResampleMode) "
          "are resized by the host preprocessor");
    }
    CLIPSERVE_ASSIGN_OR_RETURN(const image::ResizeCropPlan crop,
                               image::PlanResizeAndCrop(view.width, view.height, s));
    const image::BicubicTaps horizontal = image::ComputeBicubicTaps(
        view.width, crop.resized_width, crop.crop_left, static_cast<int>(s));
    const image::BicubicTaps vertical = image::ComputeBicubicTaps(
        view.height, crop.resized_height, crop.crop_top, static_cast<int>(s));
    // Only the source rows the vertical taps read go to the device.
    image::SourceRange source_rows = image::TapsSourceRange(vertical);
    if (source_rows.end == 0)
      source_rows.end = 1;  // none: cannot happen; no empty tensors
    const int row_begin = source_rows.begin, row_end = source_rows.end;
    ImagePlan& plan = plans[i];
    plan.width = view.width;
    plan.row_begin = row_begin;
    plan.rows = row_end - row_begin;
    plan.pixels_offset = pixel_bytes;
    pixel_bytes += plan.rows * plan.width * 3;
    plan.horizontal = Pad(horizontal, 0);
    plan.vertical = Pad(vertical, row_begin);
    plan.tables_offset = table_values;
    table_values += 2 * s * (plan.horizontal.k + plan.vertical.k);
  }
  if (images.empty()) return absl::OkStatus();

  return CatchTorchErrors(
      [&] {
        c10::InferenceMode inference;
        // Everything the batch needs in two host buffers, page-locked on a GPU, each
        // copied to the device once.
        torch::Tensor pixels_host =
            torch::empty({pixel_bytes}, HostBatchOptions(device_, torch::kByte));
        torch::Tensor tables_host =
            torch::empty({table_values}, HostBatchOptions(device_, torch::kLong));
        uint8_t* pixels_out = pixels_host.data_ptr<uint8_t>();
        int64_t* tables_out = tables_host.data_ptr<int64_t>();
        for (size_t i = 0; i < images.size(); ++i) {
          const ImagePlan& plan = plans[i];
          const size_t stride = static_cast<size_t>(plan.width) * 3;
          std::memcpy(pixels_out + plan.pixels_offset,
                      images[i].pixels.data() + plan.row_begin * stride,
                      static_cast<size_t>(plan.rows) * stride);
          int64_t* t = tables_out + plan.tables_offset;
          for (const PaddedTaps* taps : {&plan.horizontal, &plan.vertical}) {
            t = std::copy(taps->index.begin(), taps->index.end(), t);
            t = std::copy(taps->weight.begin(), taps->weight.end(), t);
          }
        }
        const torch::Tensor pixels = pixels_host.to(device_, /*non_blocking=*/true);
        const torch::Tensor tables = tables_host.to(device_, /*non_blocking=*/true);
        const torch::Tensor weights = tables.to(torch::kInt);

        for (size_t i = 0; i < images.size(); ++i) {
          const ImagePlan& plan = plans[i];
          const torch::Tensor source =
              pixels.narrow(0, plan.pixels_offset, plan.rows * plan.width * 3)
                  .view({plan.rows, plan.width, 3});
          int64_t at = plan.tables_offset;
          const int64_t hk = plan.horizontal.k, vk = plan.vertical.k;
          const torch::Tensor h_index = tables.narrow(0, at, s * hk);
          const torch::Tensor h_weight = weights.narrow(0, at + s * hk, s * hk);
          at += 2 * s * hk;
          const torch::Tensor v_index = tables.narrow(0, at, s * vk);
          const torch::Tensor v_weight = weights.narrow(0, at + s * vk, s * vk);
          // Horizontal first, rounded to 8 bits, then vertical: Pillow's order.
          const torch::Tensor wide =
              Resample(source, 1, h_index, h_weight, s, hk, options_.max_scratch_bytes);
          const torch::Tensor square =
              Resample(wide, 0, v_index, v_weight, s, vk, options_.max_scratch_bytes);
          // HWC bytes to normalized CHW floats by table lookup.
          const torch::Tensor channels =
              square.permute({2, 0, 1}).reshape({3, s * s}).to(torch::kLong);
          batch[rows[i]].copy_(table_.gather(1, channels).view({3, s, s}));
        }
      },
      "preprocessing images on the device");
}

}  // namespace clipserve
