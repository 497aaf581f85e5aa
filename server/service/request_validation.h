#ifndef CLIPSERVE_SERVER_SERVICE_REQUEST_VALIDATION_H_
#define CLIPSERVE_SERVER_SERVICE_REQUEST_VALIDATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "clipserve/v1/clip_service.pb.h"
#include "google/protobuf/repeated_field.h"
#include "server/engine/engine.h"
#include "server/tokenizer/unicode_text.h"  // IsValidUtf8, shared with the tokenizer

// Checks of ClipService requests that need no model: counts, sizes, UTF-8, raw image
// shapes, precomputed embeddings, temperatures, labels and templates. Every function
// is a pure function of its arguments: thread-safe, never blocks.
//
// Every rejection is INVALID_ARGUMENT made by InvalidArgumentForField()
// (grpc_status.h), so it carries a google.rpc.BadRequest naming the offending field
// exactly as the caller spelled it in `field` (for example "images[3]"): list checks
// name the list ("images") for a wrong count and "<field>[i]" for a bad item.
// Whatever needs the model (decoding an encoded image, counting tokens) is left to
// the engine, which reports its errors the same way.

namespace clipserve {

// Request limits of the service; see ClipServiceOptions (clip_service.h) for the
// reasons behind the defaults.
struct RequestLimits {
  // Items in one list of one request: images or texts to embed or tokenize,
  // precomputed embeddings, Classify labels and templates. 256 items keeps one
  // request within a few engine batches, and bounds the n x m Similarity matrices at
  // 65,536 values.
  int max_items_per_request = 256;
  // Bytes of one text, label or template (UTF-8). CLIP reads at most 77 tokens
  // (roughly 300 bytes of English); 16 KiB allows long texts that are to be
  // truncated, while bounding the tokenizer's work per item.
  int max_text_bytes = 16384;
  // Pixels (width * height) of one raw image: 40,000,000, a 40-megapixel photo, whose
  // RGB8 buffer is 120 MB. Encoded images are held to the same limit by the engine's
  // decoder, which reads their declared size.
  int64_t max_image_pixels = 40'000'000;
  // Bytes of one encoded image: 64 MiB, the server's default message size limit, so
  // by default only the message limit binds; lower it to refuse large files before
  // they reach the decoders.
  int64_t max_image_bytes = int64_t{64} << 20;
};

// The largest max_image_pixels accepted: a gigapixel, whose RGB is 3 GB before the
// decoder's and the resize's scratch.
inline constexpr int64_t kMaxImagePixelsLimit = 1'000'000'000;

// Validates the limits themselves: INVALID_ARGUMENT unless every one is positive and
// max_image_pixels is at most kMaxImagePixelsLimit.
absl::Status ValidateLimits(const RequestLimits& limits);

// Longest EmbedStreamRequest.id, in bytes (fixed by the contract).
inline constexpr int kMaxStreamIdBytes = 256;

// Classify's template when the request gives none, and the label placeholder.
inline constexpr absl::string_view kDefaultClassifyTemplate = "a photo of a {}.";
inline constexpr absl::string_view kLabelPlaceholder = "{}";

// INVALID_ARGUMENT naming `field` unless 1 <= count <= max_items_per_request.
absl::Status ValidateItemCount(int count, const RequestLimits& limits,
                               absl::string_view field);

// INVALID_ARGUMENT naming `field` when `text` is over max_text_bytes or not valid
// UTF-8. An empty text is valid.
absl::Status ValidateText(absl::string_view text, const RequestLimits& limits,
                          absl::string_view field);

// Checks the count, then each text as ValidateText("<field>[i]"), and copies them.
absl::StatusOr<std::vector<std::string>> ToTextInputs(
    const google::protobuf::RepeatedPtrField<std::string>& texts,
    const RequestLimits& limits, absl::string_view field);

// Converts one image for the engine. INVALID_ARGUMENT naming `field` when it has no
// source, an empty or oversized encoded payload, or raw pixels with a zero dimension,
// over max_image_pixels, or not exactly width * height * 3 bytes. Copies the bytes.
absl::StatusOr<ImageInput> ToImageInput(const v1::Image& image,
                                        const RequestLimits& limits,
                                        absl::string_view field);

// Checks the count, then converts each image as ToImageInput("<field>[i]").
absl::StatusOr<std::vector<ImageInput>> ToImageInputs(
    const google::protobuf::RepeatedPtrField<v1::Image>& images,
    const RequestLimits& limits, absl::string_view field);

// Scales `row` to unit L2 norm, accumulating in double. Returns false, leaving the
// row unchanged, when its norm is zero or not finite.
bool L2NormalizeInPlace(absl::Span<float> row);

// Checks the count, then that every embedding is exactly `dim` wide, finite and not
// all zero ("<field>[i]" otherwise), and returns them L2-normalized, row-major
// (count * dim floats).
absl::StatusOr<std::vector<float>> ToNormalizedEmbeddings(
    const google::protobuf::RepeatedPtrField<v1::Embedding>& embeddings, int dim,
    const RequestLimits& limits, absl::string_view field);

// The smallest temperature a request may give: a scale of a million.
inline constexpr float kMinTemperature = 1e-6f;

// The similarity scale to apply: 1 / temperature when the request has one (it must
// be finite and at least kMinTemperature; else INVALID_ARGUMENT naming
// "temperature"), otherwise the model's `model_logit_scale`.
absl::StatusOr<float> ResolveLogitScale(bool has_temperature, float temperature,
                                        float model_logit_scale);

// Classify labels: at least 2, at most max_items_per_request ("labels"), each
// non-empty, a valid text, and not equal to an earlier one ("labels[i]").
absl::Status ValidateLabels(const google::protobuf::RepeatedPtrField<std::string>& labels,
                            const RequestLimits& limits);

// Classify templates: each a valid text containing kLabelPlaceholder exactly once
// ("templates[i]"), at most max_items_per_request of them ("templates"). Returns
// them, or {kDefaultClassifyTemplate} for an empty list.
absl::StatusOr<std::vector<std::string>> ResolveTemplates(
    const google::protobuf::RepeatedPtrField<std::string>& templates,
    const RequestLimits& limits);

// Classify: every prompt (each template with each label in its placeholder) within
// limits.max_text_bytes, as each text is; else INVALID_ARGUMENT naming the label of
// the longest prompt ("labels[i]"). Checked from the sizes, without building them.
absl::Status ValidatePromptSizes(
    const google::protobuf::RepeatedPtrField<std::string>& labels,
    const std::vector<std::string>& templates, const RequestLimits& limits);

// The template with its placeholder replaced by `label`.
std::string ApplyTemplate(absl::string_view template_text, absl::string_view label);

// Classify's top_k: 0 means 5; the result is clamped to [1, num_labels].
int ResolveTopK(uint32_t top_k, int num_labels);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_REQUEST_VALIDATION_H_
