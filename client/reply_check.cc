#include "client/reply_check.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace clipserve {
namespace {

absl::Status Malformed(absl::string_view what) {
  return absl::InternalError(absl::StrCat("the server's reply is malformed: ", what));
}

absl::Status CheckCount(absl::string_view what, int64_t got, int64_t sent) {
  if (got == sent) return absl::OkStatus();
  return Malformed(absl::StrCat(got, " ", what, " for ", sent, " inputs"));
}

// `count` embeddings, all of one width of at least 1 float, which `dim` says when set.
absl::Status CheckEmbeddings(
    const google::protobuf::RepeatedPtrField<v1::Embedding>& embeddings, int64_t count,
    uint32_t dim) {
  if (absl::Status status = CheckCount("embeddings", embeddings.size(), count);
      !status.ok()) {
    return status;
  }
  size_t width = dim;
  for (const v1::Embedding& embedding : embeddings) {
    if (absl::Status status = CheckStreamEmbedding(width, embedding); !status.ok()) {
      return status;
    }
    width = static_cast<size_t>(embedding.values_size());
  }
  return absl::OkStatus();
}

// NaN and infinities, which JSON cannot hold (they would be written as null).
bool AllFinite(const google::protobuf::RepeatedField<float>& values) {
  for (const float v : values) {
    if (!std::isfinite(v)) return false;
  }
  return true;
}

// A rows x cols matrix, its values all there and finite.
absl::Status CheckMatrix(absl::string_view name, const v1::Matrix& matrix, int64_t rows,
                         int64_t cols) {
  if (matrix.rows() != rows || matrix.cols() != cols ||
      matrix.values_size() != rows * cols) {
    return Malformed(absl::StrCat(name, " is ", matrix.rows(), " x ", matrix.cols(),
                                  " with ", matrix.values_size(), " values, for ", rows,
                                  " x ", cols, " inputs"));
  }
  if (!AllFinite(matrix.values())) return Malformed(absl::StrCat(name, " is not finite"));
  return absl::OkStatus();
}

int64_t Count(const v1::ImageSet& set) {
  return set.has_embeddings() ? set.embeddings().embeddings_size()
                              : set.images().images_size();
}

int64_t Count(const v1::TextSet& set) {
  return set.has_embeddings() ? set.embeddings().embeddings_size()
                              : set.texts().texts_size();
}

}  // namespace

absl::Status CheckStreamEmbedding(size_t width, const v1::Embedding& embedding) {
  const size_t got = static_cast<size_t>(embedding.values_size());
  if (got == 0) return Malformed("an empty embedding");
  if (!AllFinite(embedding.values())) return Malformed("an embedding that is not finite");
  if (width != 0 && got != width) {
    return Malformed(
        absl::StrCat("an embedding of ", got, " floats among ones of ", width));
  }
  return absl::OkStatus();
}

absl::Status CheckReply(const v1::EmbedImageRequest& request,
                        const v1::EmbedImageResponse& response) {
  return CheckEmbeddings(response.embeddings(), request.images_size(), response.dim());
}

absl::Status CheckReply(const v1::EmbedTextRequest& request,
                        const v1::EmbedTextResponse& response) {
  // One of each per text, as the proto says; none from an older server.
  for (const auto& [what, got] :
       {std::make_pair("truncated flags", response.truncated_size()),
        std::make_pair("token counts", response.num_tokens_size())}) {
    if (got != 0) {
      if (absl::Status count = CheckCount(what, got, request.texts_size()); !count.ok()) {
        return count;
      }
    }
  }
  return CheckEmbeddings(response.embeddings(), request.texts_size(), response.dim());
}

absl::Status CheckReply(const v1::SimilarityRequest& request,
                        const v1::SimilarityResponse& response) {
  const int64_t n = Count(request.images());
  const int64_t m = Count(request.texts());
  for (const auto& [name, matrix, rows, cols] :
       {std::make_tuple("logits_per_image", &response.logits_per_image(), n, m),
        std::make_tuple("probs", &response.probs(), n, m),
        std::make_tuple("logits_per_text", &response.logits_per_text(), m, n)}) {
    if (absl::Status status = CheckMatrix(name, *matrix, rows, cols); !status.ok()) {
      return status;
    }
  }
  // At most 1e6 (a temperature of 1e-6), never 0: the logits above are scaled by it.
  if (!std::isfinite(response.logit_scale()) || response.logit_scale() <= 0) {
    return Malformed(absl::StrCat("logit_scale is ", response.logit_scale()));
  }
  if (request.paired()) {
    if (!response.has_loss()) return Malformed("no loss for paired inputs");
    const v1::ContrastiveLoss& loss = response.loss();
    if (!std::isfinite(loss.image_to_text()) || !std::isfinite(loss.text_to_image()) ||
        !std::isfinite(loss.mean())) {
      return Malformed("the loss is not finite");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckReply(const v1::ClassifyRequest& request,
                        const v1::ClassifyResponse& response) {
  if (absl::Status status =
          CheckCount("classifications", response.results_size(), request.images_size());
      !status.ok()) {
    return status;
  }
  // top_k labels, 0 meaning 5, at most all of them (the proto's ClassifyRequest.top_k).
  const int64_t top_k = std::min<int64_t>(request.top_k() == 0 ? 5 : request.top_k(),
                                          request.labels_size());
  for (const v1::Classification& result : response.results()) {
    if (result.labels_size() != top_k) {
      return Malformed(absl::StrCat(result.labels_size(), " labels ranked of ",
                                    request.labels_size(), " for a top ", top_k));
    }
    const v1::LabelScore* previous = nullptr;
    std::vector<bool> ranked(static_cast<size_t>(request.labels_size()), false);
    for (const v1::LabelScore& score : result.labels()) {
      if (score.index() >= static_cast<uint32_t>(request.labels_size())) {
        return Malformed(absl::StrCat("label index ", score.index(), " of ",
                                      request.labels_size(), " labels"));
      }
      // What the client prints is the reply's label: it must be the one at its index.
      if (score.label() != request.labels(static_cast<int>(score.index()))) {
        return Malformed(absl::StrCat("the label at index ", score.index(),
                                      " is not the one asked for"));
      }
      if (ranked[score.index()]) {
        return Malformed(absl::StrCat("label index ", score.index(), " ranked twice"));
      }
      ranked[score.index()] = true;
      if (!std::isfinite(score.probability()) || !std::isfinite(score.logit())) {
        return Malformed("a label score that is not finite");
      }
      if (score.probability() < 0 || score.probability() > 1) {
        return Malformed(absl::StrCat("a probability of ", score.probability()));
      }
      // Most probable first (the proto's Classification.labels): what the client
      // prints as the best label must be it.
      if (previous != nullptr && score.probability() > previous->probability()) {
        return Malformed(absl::StrCat("label index ", score.index(),
                                      " ranked below a less probable one"));
      }
      previous = &score;
    }
  }
  return absl::OkStatus();
}

absl::Status CheckReply(const v1::TokenizeRequest& request,
                        const v1::TokenizeResponse& response) {
  return CheckCount("tokenized texts", response.texts_size(), request.texts_size());
}

}  // namespace clipserve
