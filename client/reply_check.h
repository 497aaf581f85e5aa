#ifndef CLIPSERVE_CLIENT_REPLY_CHECK_H_
#define CLIPSERVE_CLIENT_REPLY_CHECK_H_

#include <cstddef>

#include "absl/status/status.h"
#include "clipserve/v1/clip_service.pb.h"
#include "grpc/health/v1/health.pb.h"

namespace clipserve {

// Whether a reply has the shape its request asks for. A server that answers with the
// wrong number of items, embeddings of different widths, or a matrix whose sizes do
// not match the inputs (a bug, or a hostile endpoint) fails the call with INTERNAL
// naming what is wrong, instead of making the client print results under the wrong
// inputs or allocate what the reply's sizes claim. ClipClient checks every reply.
absl::Status CheckReply(const v1::EmbedImageRequest& request,
                        const v1::EmbedImageResponse& response);
absl::Status CheckReply(const v1::EmbedTextRequest& request,
                        const v1::EmbedTextResponse& response);
absl::Status CheckReply(const v1::SimilarityRequest& request,
                        const v1::SimilarityResponse& response);
absl::Status CheckReply(const v1::ClassifyRequest& request,
                        const v1::ClassifyResponse& response);
absl::Status CheckReply(const v1::TokenizeRequest& request,
                        const v1::TokenizeResponse& response);
inline absl::Status CheckReply(const v1::GetModelInfoRequest&, const v1::ModelInfo&) {
  return absl::OkStatus();
}
inline absl::Status CheckReply(const grpc::health::v1::HealthCheckRequest&,
                               const grpc::health::v1::HealthCheckResponse&) {
  return absl::OkStatus();
}

// One embedding of a stream whose earlier ones were `width` floats wide (0 for the
// first): INTERNAL when it is empty, of another width, or holds NaN or an infinity
// (as in every reply: the server answers none).
absl::Status CheckStreamEmbedding(size_t width, const v1::Embedding& embedding);

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_REPLY_CHECK_H_
