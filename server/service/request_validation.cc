#include "server/service/request_validation.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "server/service/grpc_status.h"

namespace clipserve {
namespace {

std::string Item(absl::string_view field, int index) {
  return absl::StrCat(field, "[", index, "]");
}

// Occurrences of `needle` (non-empty) in `haystack`, not overlapping.
int CountOccurrences(absl::string_view haystack, absl::string_view needle) {
  int count = 0;
  for (size_t pos = haystack.find(needle); pos != absl::string_view::npos;
       pos = haystack.find(needle, pos + needle.size())) {
    ++count;
  }
  return count;
}

}  // namespace

absl::Status ValidateLimits(const RequestLimits& limits) {
  if (limits.max_items_per_request <= 0 || limits.max_text_bytes <= 0 ||
      limits.max_image_pixels <= 0 || limits.max_image_bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request limits must be positive: max_items_per_request=",
        limits.max_items_per_request, " max_text_bytes=", limits.max_text_bytes,
        " max_image_pixels=", limits.max_image_pixels,
        " max_image_bytes=", limits.max_image_bytes));
  }
  if (limits.max_image_pixels > kMaxImagePixelsLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_image_pixels=", limits.max_image_pixels, " is over ",
                     kMaxImagePixelsLimit, " (a 3 GB RGB image)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateItemCount(int count, const RequestLimits& limits,
                               absl::string_view field) {
  if (count < 1) return InvalidArgumentForField(field, "must not be empty");
  if (count > limits.max_items_per_request) {
    return InvalidArgumentForField(
        field, absl::StrCat(count, " items is over the limit of ",
                            limits.max_items_per_request, " per request"));
  }
  return absl::OkStatus();
}

absl::Status ValidateText(absl::string_view text, const RequestLimits& limits,
                          absl::string_view field) {
  if (text.size() > static_cast<size_t>(limits.max_text_bytes)) {
    return InvalidArgumentForField(
        field, absl::StrCat("text of ", text.size(), " bytes is over the limit of ",
                            limits.max_text_bytes, " bytes"));
  }
  if (!IsValidUtf8(text)) return InvalidArgumentForField(field, "not valid UTF-8");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ToTextInputs(
    const google::protobuf::RepeatedPtrField<std::string>& texts,
    const RequestLimits& limits, absl::string_view field) {
  if (absl::Status status = ValidateItemCount(texts.size(), limits, field);
      !status.ok()) {
    return status;
  }
  std::vector<std::string> out;
  out.reserve(texts.size());
  for (int i = 0; i < texts.size(); ++i) {
    if (absl::Status status = ValidateText(texts[i], limits, Item(field, i));
        !status.ok()) {
      return status;
    }
    out.push_back(texts[i]);
  }
  return out;
}

absl::StatusOr<ImageInput> ToImageInput(const v1::Image& image,
                                        const RequestLimits& limits,
                                        absl::string_view field) {
  ImageInput input;
  switch (image.source_case()) {
    case v1::Image::kEncoded: {
      const std::string& encoded = image.encoded();
      if (encoded.empty())
        return InvalidArgumentForField(field, "encoded image is empty");
      if (static_cast<int64_t>(encoded.size()) > limits.max_image_bytes) {
        return InvalidArgumentForField(
            field, absl::StrCat("encoded image of ", encoded.size(),
                                " bytes is over the limit of ", limits.max_image_bytes,
                                " bytes"));
      }
      input.encoded = encoded;
      return input;
    }
    case v1::Image::kRaw: {
      const v1::RawImage& raw = image.raw();
      if (raw.width() == 0 || raw.height() == 0) {
        return InvalidArgumentForField(
            field, absl::StrCat("raw image is ", raw.width(), "x", raw.height(),
                                " pixels; width and height must be at least 1"));
      }
      const uint64_t pixels = uint64_t{raw.width()} * raw.height();  // < 2^64
      if (pixels > static_cast<uint64_t>(limits.max_image_pixels)) {
        return InvalidArgumentForField(
            field, absl::StrCat("raw image of ", raw.width(), "x", raw.height(), " = ",
                                pixels, " pixels is over the limit of ",
                                limits.max_image_pixels, " pixels"));
      }
      if (raw.rgb8().size() != pixels * 3) {
        return InvalidArgumentForField(
            field, absl::StrCat("raw image of ", raw.width(), "x", raw.height(),
                                " pixels needs ", pixels * 3, " bytes of RGB8, got ",
                                raw.rgb8().size()));
      }
      input.is_raw = true;
      input.rgb8 = raw.rgb8();
      input.width = raw.width();
      input.height = raw.height();
      return input;
    }
    case v1::Image::SOURCE_NOT_SET:
      break;
  }
  return InvalidArgumentForField(field, "image has no source: set encoded or raw");
}

absl::StatusOr<std::vector<ImageInput>> ToImageInputs(
    const google::protobuf::RepeatedPtrField<v1::Image>& images,
    const RequestLimits& limits, absl::string_view field) {
  if (absl::Status status = ValidateItemCount(images.size(), limits, field);
      !status.ok()) {
    return status;
  }
  std::vector<ImageInput> out;
  out.reserve(images.size());
  for (int i = 0; i < images.size(); ++i) {
    absl::StatusOr<ImageInput> input = ToImageInput(images[i], limits, Item(field, i));
    if (!input.ok()) return input.status();
    out.push_back(*std::move(input));
  }
  return out;
}

bool L2NormalizeInPlace(absl::Span<float> row) {
  double sum_of_squares = 0;
  for (const float v : row) sum_of_squares += static_cast<double>(v) * v;
  const double norm = std::sqrt(sum_of_squares);
  if (!(norm > 0) || !std::isfinite(norm)) return false;
  for (float& v : row) v = static_cast<float>(v / norm);
  return true;
}

absl::StatusOr<std::vector<float>> ToNormalizedEmbeddings(
    const google::protobuf::RepeatedPtrField<v1::Embedding>& embeddings, int dim,
    const RequestLimits& limits, absl::string_view field) {
  if (absl::Status status = ValidateItemCount(embeddings.size(), limits, field);
      !status.ok()) {
    return status;
  }
  std::vector<float> out;
  out.reserve(static_cast<size_t>(embeddings.size()) * dim);
  for (int i = 0; i < embeddings.size(); ++i) {
    const auto& values = embeddings[i].values();
    if (values.size() != dim) {
      return InvalidArgumentForField(
          Item(field, i), absl::StrCat("embedding has ", values.size(),
                                       " values; the model's embed_dim is ", dim));
    }
    for (int j = 0; j < dim; ++j) {
      if (!std::isfinite(values[j])) {
        return InvalidArgumentForField(Item(field, i),
                                       absl::StrCat("value ", j, " is not finite"));
      }
    }
    const size_t begin = out.size();
    out.insert(out.end(), values.begin(), values.end());
    if (!L2NormalizeInPlace(absl::MakeSpan(out).subspan(begin, dim))) {
      return InvalidArgumentForField(Item(field, i),
                                     "embedding is all zero (or its norm overflows)");
    }
  }
  return out;
}

absl::StatusOr<float> ResolveLogitScale(bool has_temperature, float temperature,
                                        float model_logit_scale) {
  if (!has_temperature) return model_logit_scale;
  // Below the floor, scaled logits and the loss (up to twice the scale) would overflow
  // float; CLIP itself caps its scale at 100.
  if (!(temperature >= kMinTemperature) || !std::isfinite(temperature)) {
    return InvalidArgumentForField(
        "temperature", absl::StrCat("must be finite and at least ", kMinTemperature,
                                    ", got ", temperature));
  }
  return 1.0f / temperature;
}

absl::Status ValidateLabels(const google::protobuf::RepeatedPtrField<std::string>& labels,
                            const RequestLimits& limits) {
  if (labels.size() < 2) {
    return InvalidArgumentForField(
        "labels", absl::StrCat("needs at least 2 labels, got ", labels.size()));
  }
  if (absl::Status status = ValidateItemCount(labels.size(), limits, "labels");
      !status.ok()) {
    return status;
  }
  absl::flat_hash_set<absl::string_view> seen;
  seen.reserve(labels.size());
  for (int i = 0; i < labels.size(); ++i) {
    const std::string field = Item("labels", i);
    if (labels[i].empty()) return InvalidArgumentForField(field, "label is empty");
    if (absl::Status status = ValidateText(labels[i], limits, field); !status.ok()) {
      return status;
    }
    if (!seen.insert(labels[i]).second) {
      return InvalidArgumentForField(field, "duplicate of an earlier label");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ResolveTemplates(
    const google::protobuf::RepeatedPtrField<std::string>& templates,
    const RequestLimits& limits) {
  if (templates.empty())
    return std::vector<std::string>{std::string(kDefaultClassifyTemplate)};
  if (absl::Status status = ValidateItemCount(templates.size(), limits, "templates");
      !status.ok()) {
    return status;
  }
  for (int i = 0; i < templates.size(); ++i) {
    const std::string field = Item("templates", i);
    if (absl::Status status = ValidateText(templates[i], limits, field); !status.ok()) {
      return status;
    }
    const int placeholders = CountOccurrences(templates[i], kLabelPlaceholder);
    if (placeholders != 1) {
      return InvalidArgumentForField(
          field, absl::StrCat("must contain \"{}\" exactly once, found ", placeholders));
    }
  }
  return std::vector<std::string>(templates.begin(), templates.end());
}

absl::Status ValidatePromptSizes(
    const google::protobuf::RepeatedPtrField<std::string>& labels,
    const std::vector<std::string>& templates, const RequestLimits& limits) {
  if (labels.empty() || templates.empty()) return absl::OkStatus();
  const auto longer = [](const std::string& a, const std::string& b) {
    return a.size() < b.size();
  };
  const auto label = std::max_element(labels.begin(), labels.end(), longer);
  const auto longest_template =
      std::max_element(templates.begin(), templates.end(), longer);
  const size_t bytes =
      longest_template->size() - kLabelPlaceholder.size() + label->size();
  if (bytes <= static_cast<size_t>(limits.max_text_bytes)) return absl::OkStatus();
  return InvalidArgumentForField(
      Item("labels", static_cast<int>(label - labels.begin())),
      absl::StrCat("with templates[", longest_template - templates.begin(),
                   "] the prompt has ", bytes, " bytes; the limit is ",
                   limits.max_text_bytes));
}

std::string ApplyTemplate(absl::string_view template_text, absl::string_view label) {
  return absl::StrReplaceAll(template_text, {{kLabelPlaceholder, label}});
}

int ResolveTopK(uint32_t top_k, int num_labels) {
  const uint32_t wanted = top_k == 0 ? 5 : top_k;
  return static_cast<int>(
      std::clamp<int64_t>(wanted, 1, std::max<int64_t>(num_labels, 1)));
}

}  // namespace clipserve
