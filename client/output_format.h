#ifndef CLIPSERVE_CLIENT_OUTPUT_FORMAT_H_
#define CLIPSERVE_CLIENT_OUTPUT_FORMAT_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "clipserve/v1/clip_service.pb.h"
#include "nlohmann/json.hpp"

namespace clipserve {

// How clip_client prints results: JSON for scripts (nlohmann-json) and small tables
// for people. Pure functions; thread-safe.

// The double nearest the shortest decimal that reads back as `value` when parsed as
// float32 (0.1f -> 0.1, not 0.10000000149011612), so JSON stays compact and exact for
// float32 readers. nlohmann-json prints most such doubles in that short form, about 1%
// in 17 digits (its Grisu2 is not always shortest), the same value either way. NaN and
// infinities pass through (JSON writes them as null).
double JsonFloat(float value);

// [v0, v1, ...] with JsonFloat() values.
nlohmann::ordered_json FloatList(absl::Span<const float> values);

// A Matrix as a list of `rows` lists of `cols` values. A matrix whose values do not
// fill rows * cols (a malformed response) yields the rows that are complete.
nlohmann::ordered_json MatrixRows(const v1::Matrix& matrix);

// Serializes compactly on one line. Invalid UTF-8 (a non-UTF-8 file name) is replaced
// by U+FFFD instead of throwing.
std::string DumpJson(const nlohmann::ordered_json& json, int indent = -1);

// One line of an embedding JSONL file, without the newline:
// {"index": i, "input": "...", "embedding": [...]}.
std::string EmbeddingJsonLine(size_t index, absl::string_view input,
                              absl::Span<const float> embedding);

// The same without the embedding, naming the input of row `index` of an .npy file:
// {"index": i, "input": "..."}.
std::string RowJsonLine(size_t index, absl::string_view input);

// {"logits_per_image": [[...]], "logits_per_text": [[...]], "probs": [[...]],
//  "logit_scale": x} and, when `paired`, "loss": {"image_to_text", "text_to_image",
// "mean"}. `images` and `texts` (the inputs, for reference) are added as "images" and
// "texts" when not empty.
nlohmann::ordered_json SimilarityJson(const v1::SimilarityResponse& response, bool paired,
                                      const std::vector<std::string>& images = {},
                                      const std::vector<std::string>& texts = {});

// A table of logits and probabilities: a row per image, a column per text.
std::string SimilarityTable(const v1::SimilarityResponse& response,
                            const std::vector<std::string>& images,
                            const std::vector<std::string>& texts, bool paired);

// [{"image": path, "labels": [{"label", "index", "probability", "logit"}, ...]}, ...].
nlohmann::ordered_json ClassifyJson(const v1::ClassifyResponse& response,
                                    const std::vector<std::string>& images);

// Per image its path, then its labels best first with probability and logit.
std::string ClassifyText(const v1::ClassifyResponse& response,
                         const std::vector<std::string>& images);

// [{"text": ..., "ids": [...], "truncated": bool}, ...].
nlohmann::ordered_json TokenizeJson(const v1::TokenizeResponse& response,
                                    const std::vector<std::string>& texts);

// One line per text: its ids separated by spaces, then "\t(truncated)" when cut.
std::string TokenizeText(const v1::TokenizeResponse& response);

// The model info with the proto's snake_case field names, every field present
// (embed_dim, image_size, context_length, vision: {...}, ...).
nlohmann::ordered_json ModelInfoJson(const v1::ModelInfo& info);

// "key: value" lines of ModelInfoJson(), nested messages indented.
std::string ModelInfoText(const v1::ModelInfo& info);

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_OUTPUT_FORMAT_H_
