#include "client/output_format.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"

namespace clipserve {
namespace {

using json = nlohmann::ordered_json;

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Cuts `text` to `width` bytes for a table cell (without splitting a UTF-8 sequence),
// marking the cut with "~", and pads it with spaces. `keep_end` keeps the end instead
// of the start (a path's file name matters more than its folders).
std::string Cell(absl::string_view text, size_t width, bool keep_end = false) {
  std::string out(text);
  if (out.size() > width) {
    if (keep_end) {
      size_t from = out.size() - (width - 1);
      while (from < out.size() && IsContinuationByte(out[from])) ++from;
      out = absl::StrCat("~", out.substr(from));
    } else {
      size_t cut = width - 1;
      while (cut > 0 && IsContinuationByte(out[cut])) --cut;
      out = absl::StrCat(out.substr(0, cut), "~");
    }
  }
  out.append(width > out.size() ? width - out.size() : 0, ' ');
  return out;
}

float At(const v1::Matrix& m, int r, int c) {
  const size_t i = static_cast<size_t>(r) * m.cols() + static_cast<size_t>(c);
  return i < static_cast<size_t>(m.values_size()) ? m.values(static_cast<int>(i)) : NAN;
}

void AppendText(const json& value, int depth, std::string* out) {
  const std::string indent(static_cast<size_t>(depth) * 2, ' ');
  for (const auto& [key, item] : value.items()) {
    if (item.is_object()) {
      absl::StrAppend(out, indent, key, ":\n");
      AppendText(item, depth + 1, out);
    } else if (item.is_string()) {
      absl::StrAppend(out, indent, key, ": ", item.get<std::string>(), "\n");
    } else {
      absl::StrAppend(out, indent, key, ": ", DumpJson(item), "\n");
    }
  }
}

}  // namespace

double JsonFloat(float value) {
  if (!std::isfinite(value)) return static_cast<double>(value);
  char buffer[64];
  const std::to_chars_result result =
      std::to_chars(buffer, buffer + sizeof(buffer) - 1, value);
  *result.ptr = '\0';
  return std::strtod(buffer, nullptr);
}

json FloatList(absl::Span<const float> values) {
  json list = json::array();
  list.get_ref<json::array_t&>().reserve(values.size());
  for (float v : values) list.push_back(JsonFloat(v));
  return list;
}

json MatrixRows(const v1::Matrix& matrix) {
  json rows = json::array();
  const size_t cols = matrix.cols();
  const size_t size = static_cast<size_t>(matrix.values_size());
  for (size_t r = 0; r < matrix.rows() && (r + 1) * cols <= size; ++r) {
    rows.push_back(
        FloatList(absl::MakeConstSpan(matrix.values().data() + r * cols, cols)));
  }
  return rows;
}

std::string DumpJson(const json& value, int indent) {
  return value.dump(indent, ' ', false, json::error_handler_t::replace);
}

std::string EmbeddingJsonLine(size_t index, absl::string_view input,
                              absl::Span<const float> embedding) {
  json line = json::object();
  line["index"] = index;
  line["input"] = std::string(input);
  line["embedding"] = FloatList(embedding);
  return DumpJson(line);
}

std::string RowJsonLine(size_t index, absl::string_view input) {
  json line = json::object();
  line["index"] = index;
  line["input"] = std::string(input);
  return DumpJson(line);
}

json SimilarityJson(const v1::SimilarityResponse& response, bool paired,
                    const std::vector<std::string>& images,
                    const std::vector<std::string>& texts) {
  json out = json::object();
  out["logits_per_image"] = MatrixRows(response.logits_per_image());
  out["logits_per_text"] = MatrixRows(response.logits_per_text());
  out["probs"] = MatrixRows(response.probs());
  out["logit_scale"] = JsonFloat(response.logit_scale());
  if (paired) {
    out["loss"] = {{"image_to_text", JsonFloat(response.loss().image_to_text())},
                   {"text_to_image", JsonFloat(response.loss().text_to_image())},
                   {"mean", JsonFloat(response.loss().mean())}};
  }
  if (!images.empty()) out["images"] = images;
  if (!texts.empty()) out["texts"] = texts;
  return out;
}

std::string SimilarityTable(const v1::SimilarityResponse& response,
                            const std::vector<std::string>& images,
                            const std::vector<std::string>& texts, bool paired) {
  const v1::Matrix& logits = response.logits_per_image();
  const v1::Matrix& probs = response.probs();
  constexpr size_t kCol = 18;
  size_t first = 12;
  for (const std::string& image : images) first = std::max(first, image.size());
  first = std::min<size_t>(first, 40);
  std::string out = absl::StrFormat(
      "logit_scale %.4g; each cell: logit (probability over the texts of the row)\n",
      response.logit_scale());
  absl::StrAppend(&out, Cell("image \\ text", first));
  for (const std::string& text : texts) absl::StrAppend(&out, "  ", Cell(text, kCol));
  absl::StrAppend(&out, "\n");
  for (int r = 0; r < static_cast<int>(logits.rows()); ++r) {
    absl::StrAppend(
        &out,
        Cell(r < static_cast<int>(images.size()) ? images[r] : absl::StrCat("image ", r),
             first, /*keep_end=*/true));
    for (int c = 0; c < static_cast<int>(logits.cols()); ++c) {
      absl::StrAppend(&out, "  ",
                      Cell(absl::StrFormat("%7.3f (%5.1f%%)", At(logits, r, c),
                                           100.0 * At(probs, r, c)),
                           kCol));
    }
    absl::StrAppend(&out, "\n");
  }
  if (paired) {
    absl::StrAppend(
        &out, absl::StrFormat("loss: image_to_text %.6g, text_to_image %.6g, "
                              "mean %.6g\n",
                              response.loss().image_to_text(),
                              response.loss().text_to_image(), response.loss().mean()));
  }
  return out;
}

json ClassifyJson(const v1::ClassifyResponse& response,
                  const std::vector<std::string>& images) {
  json out = json::array();
  for (int i = 0; i < response.results_size(); ++i) {
    json labels = json::array();
    for (const v1::LabelScore& score : response.results(i).labels()) {
      labels.push_back({{"label", score.label()},
                        {"index", score.index()},
                        {"probability", JsonFloat(score.probability())},
                        {"logit", JsonFloat(score.logit())}});
    }
    out.push_back({{"image", i < static_cast<int>(images.size()) ? images[i] : ""},
                   {"labels", std::move(labels)}});
  }
  return out;
}

std::string ClassifyText(const v1::ClassifyResponse& response,
                         const std::vector<std::string>& images) {
  std::string out;
  for (int i = 0; i < response.results_size(); ++i) {
    absl::StrAppend(
        &out, i < static_cast<int>(images.size()) ? images[i] : absl::StrCat("image ", i),
        "\n");
    size_t width = 8;
    for (const v1::LabelScore& score : response.results(i).labels()) {
      width = std::max(width, score.label().size());
    }
    width = std::min<size_t>(width, 40);
    int rank = 0;
    for (const v1::LabelScore& score : response.results(i).labels()) {
      absl::StrAppend(&out, absl::StrFormat("  %2d. %s %6.2f%%  (logit %.3f)\n", ++rank,
                                            Cell(score.label(), width),
                                            100.0 * score.probability(), score.logit()));
    }
  }
  return out;
}

json TokenizeJson(const v1::TokenizeResponse& response,
                  const std::vector<std::string>& texts) {
  json out = json::array();
  for (int i = 0; i < response.texts_size(); ++i) {
    const v1::TokenizedText& tokens = response.texts(i);
    out.push_back(
        {{"text", i < static_cast<int>(texts.size()) ? texts[i] : ""},
         {"ids", std::vector<int32_t>(tokens.ids().begin(), tokens.ids().end())},
         {"truncated", tokens.truncated()}});
  }
  return out;
}

std::string TokenizeText(const v1::TokenizeResponse& response) {
  std::string out;
  for (const v1::TokenizedText& tokens : response.texts()) {
    absl::StrAppend(&out, absl::StrJoin(tokens.ids(), " "),
                    tokens.truncated() ? "\t(truncated)" : "", "\n");
  }
  return out;
}

json ModelInfoJson(const v1::ModelInfo& info) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string text;
  if (!google::protobuf::util::MessageToJsonString(info, &text, options).ok()) {
    return json::object();
  }
  json out = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (out.is_discarded()) return json::object();
  // Protobuf prints floats in their shortest float32 form; keep that form.
  for (const char* key : {"image_mean", "image_std"}) {
    if (out.contains(key) && out[key].is_array()) {
      for (json& v : out[key]) {
        if (v.is_number()) v = JsonFloat(v.get<float>());
      }
    }
  }
  if (out.contains("logit_scale") && out["logit_scale"].is_number()) {
    out["logit_scale"] = JsonFloat(out["logit_scale"].get<float>());
  }
  return out;
}

std::string ModelInfoText(const v1::ModelInfo& info) {
  std::string out;
  AppendText(ModelInfoJson(info), 0, &out);
  return out;
}

}  // namespace clipserve
