#include "client/reply_check.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

using ::testing::HasSubstr;

void ExpectMalformed(const absl::Status& status, const std::string& what) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << status;
  EXPECT_THAT(status.message(), HasSubstr(what));
}

v1::Matrix MatrixOf(uint32_t rows, uint32_t cols, int values) {
  v1::Matrix m;
  m.set_rows(rows);
  m.set_cols(cols);
  for (int i = 0; i < values; ++i) m.add_values(0.5f);
  return m;
}

TEST(CheckReplyTest, EmbeddingsMatchTheInputsInCountAndWidth) {
  v1::EmbedTextRequest request;
  request.add_texts("a");
  request.add_texts("b");
  v1::EmbedTextResponse response;
  response.set_dim(2);
  for (int i = 0; i < 2; ++i) {
    response.add_embeddings()->add_values(1);
    response.mutable_embeddings(i)->add_values(2);
  }
  EXPECT_TRUE(CheckReply(request, response).ok());
  v1::EmbedTextResponse ragged = response;
  ragged.mutable_embeddings(1)->add_values(3);
  ExpectMalformed(CheckReply(request, ragged),
                  "an embedding of 3 floats among ones of 2");
  v1::EmbedTextResponse wrong_dim = response;
  wrong_dim.set_dim(512);
  ExpectMalformed(CheckReply(request, wrong_dim),
                  "an embedding of 2 floats among ones of 512");
  v1::EmbedTextResponse short_reply = response;
  short_reply.mutable_embeddings()->RemoveLast();
  ExpectMalformed(CheckReply(request, short_reply), "1 embeddings for 2 inputs");
  v1::EmbedTextResponse nan = response;
  nan.mutable_embeddings(0)->set_values(1, std::nanf(""));
  ExpectMalformed(CheckReply(request, nan), "an embedding that is not finite");
  // The per-text flags and counts: one per text when sent at all, so that a caller
  // reading response.truncated(i) for each text stays in bounds.
  v1::EmbedTextResponse counted = response;
  counted.add_truncated(false);
  counted.add_truncated(true);
  counted.add_num_tokens(5);
  counted.add_num_tokens(77);
  EXPECT_TRUE(CheckReply(request, counted).ok());
  v1::EmbedTextResponse short_flags = counted;
  short_flags.mutable_truncated()->RemoveLast();
  ExpectMalformed(CheckReply(request, short_flags), "1 truncated flags for 2 inputs");
  v1::EmbedTextResponse long_counts = counted;
  long_counts.add_num_tokens(3);
  ExpectMalformed(CheckReply(request, long_counts), "3 token counts for 2 inputs");
  v1::EmbedImageRequest images;
  images.add_images();
  v1::EmbedImageResponse empty_row;
  empty_row.add_embeddings();
  ExpectMalformed(CheckReply(images, empty_row), "an empty embedding");
}

// The sizes of a Similarity reply come from the server: a 30-byte reply claiming
// 2^31 rows of 0 columns made the client build a table without end.
TEST(CheckReplyTest, SimilarityMatricesMatchTheInputs) {
  v1::SimilarityRequest request;
  request.mutable_images()->mutable_images()->add_images();
  request.mutable_images()->mutable_images()->add_images();
  for (int i = 0; i < 3; ++i) request.mutable_texts()->mutable_texts()->add_texts("t");
  v1::SimilarityResponse response;
  *response.mutable_logits_per_image() = MatrixOf(2, 3, 6);
  *response.mutable_probs() = MatrixOf(2, 3, 6);
  *response.mutable_logits_per_text() = MatrixOf(3, 2, 6);
  response.set_logit_scale(100);
  EXPECT_TRUE(CheckReply(request, response).ok());
  for (const float scale : {0.0f, -1.0f, NAN, INFINITY}) {
    v1::SimilarityResponse bad_scale = response;
    bad_scale.set_logit_scale(scale);
    ExpectMalformed(CheckReply(request, bad_scale), "logit_scale is");
  }
  v1::SimilarityResponse huge = response;
  *huge.mutable_logits_per_image() = MatrixOf(0x7fffffff, 0, 0);
  ExpectMalformed(CheckReply(request, huge), "logits_per_image is 2147483647 x 0");
  v1::SimilarityResponse missing = response;
  missing.mutable_probs()->mutable_values()->RemoveLast();
  ExpectMalformed(CheckReply(request, missing), "probs is 2 x 3 with 5 values");
  v1::SimilarityResponse infinite = response;
  infinite.mutable_probs()->set_values(0, INFINITY);
  ExpectMalformed(CheckReply(request, infinite), "probs is not finite");
  v1::SimilarityResponse untransposed = response;
  *untransposed.mutable_logits_per_text() = MatrixOf(2, 3, 6);
  ExpectMalformed(CheckReply(request, untransposed), "logits_per_text is 2 x 3");
  // Embeddings given instead of inputs count the same.
  v1::SimilarityRequest embedded;
  embedded.mutable_images()->mutable_embeddings()->add_embeddings();
  embedded.mutable_images()->mutable_embeddings()->add_embeddings();
  *embedded.mutable_texts() = request.texts();
  EXPECT_TRUE(CheckReply(embedded, response).ok());
}

// The loss of paired inputs is there and finite.
TEST(CheckReplyTest, APairedSimilarityHasAFiniteLoss) {
  v1::SimilarityRequest request;
  request.mutable_images()->mutable_images()->add_images();
  request.mutable_texts()->mutable_texts()->add_texts("t");
  request.set_paired(true);
  v1::SimilarityResponse response;
  *response.mutable_logits_per_image() = MatrixOf(1, 1, 1);
  *response.mutable_probs() = MatrixOf(1, 1, 1);
  *response.mutable_logits_per_text() = MatrixOf(1, 1, 1);
  response.set_logit_scale(100);
  ExpectMalformed(CheckReply(request, response), "no loss for paired inputs");
  response.mutable_loss()->set_image_to_text(0.5f);
  response.mutable_loss()->set_text_to_image(0.25f);
  response.mutable_loss()->set_mean(0.375f);
  EXPECT_TRUE(CheckReply(request, response).ok());
  for (const int field : {0, 1, 2}) {
    v1::SimilarityResponse bad = response;
    v1::ContrastiveLoss* loss = bad.mutable_loss();
    if (field == 0) loss->set_image_to_text(NAN);
    if (field == 1) loss->set_text_to_image(INFINITY);
    if (field == 2) loss->set_mean(NAN);
    ExpectMalformed(CheckReply(request, bad), "the loss is not finite");
  }
}

TEST(CheckReplyTest, ClassificationsAndTokenizationsMatchTheInputs) {
  v1::ClassifyRequest classify;
  classify.add_images();
  classify.add_images();
  classify.add_labels("cat");
  classify.add_labels("dog");
  v1::ClassifyResponse results;
  // top_k 0 is 5, clamped to the 2 labels: both ranked, the more probable first.
  for (int i = 0; i < 2; ++i) {
    v1::Classification* result = results.add_results();
    v1::LabelScore* score = result->add_labels();
    score->set_index(1);
    score->set_label("dog");
    score->set_probability(0.75f);
    score->set_logit(21.5f);
    score = result->add_labels();
    score->set_index(0);
    score->set_label("cat");
    score->set_probability(0.25f);
    score->set_logit(20.4f);
  }
  EXPECT_TRUE(CheckReply(classify, results).ok());
  // As many labels as top_k asks for, no fewer, no more.
  v1::ClassifyRequest top1 = classify;
  top1.set_top_k(1);
  ExpectMalformed(CheckReply(top1, results), "2 labels ranked of 2 for a top 1");
  v1::ClassifyResponse best = results;
  for (v1::Classification& result : *best.mutable_results()) {
    result.mutable_labels()->RemoveLast();
  }
  EXPECT_TRUE(CheckReply(top1, best).ok());
  ExpectMalformed(CheckReply(classify, best), "1 labels ranked of 2 for a top 2");
  // Most probable first: the client prints the first as the best.
  v1::ClassifyResponse unordered = results;
  unordered.mutable_results(1)->mutable_labels()->SwapElements(0, 1);
  ExpectMalformed(CheckReply(classify, unordered),
                  "label index 1 ranked below a less probable one");
  v1::ClassifyResponse over_one = results;
  over_one.mutable_results(0)->mutable_labels(0)->set_probability(1.5f);
  ExpectMalformed(CheckReply(classify, over_one), "a probability of 1.5");
  // The client prints the reply's label: it must be the one at its index.
  v1::ClassifyResponse wrong_label = results;
  wrong_label.mutable_results(1)->mutable_labels(0)->set_label("evil");
  ExpectMalformed(CheckReply(classify, wrong_label),
                  "the label at index 1 is not the one asked for");
  v1::ClassifyResponse twice = results;
  *twice.mutable_results(0)->mutable_labels(1) = results.results(0).labels(0);
  ExpectMalformed(CheckReply(classify, twice), "label index 1 ranked twice");
  v1::ClassifyResponse nan = results;
  nan.mutable_results(0)->mutable_labels(0)->set_probability(NAN);
  ExpectMalformed(CheckReply(classify, nan), "a label score that is not finite");
  v1::ClassifyResponse infinite = results;
  infinite.mutable_results(1)->mutable_labels(0)->set_logit(-INFINITY);
  ExpectMalformed(CheckReply(classify, infinite), "a label score that is not finite");
  v1::ClassifyResponse dropped = results;
  dropped.mutable_results()->RemoveLast();
  ExpectMalformed(CheckReply(classify, dropped), "1 classifications for 2 inputs");
  v1::ClassifyResponse bad_index = results;
  bad_index.mutable_results(0)->mutable_labels(0)->set_index(2);
  ExpectMalformed(CheckReply(classify, bad_index), "label index 2 of 2 labels");

  v1::TokenizeRequest tokenize;
  tokenize.add_texts("a");
  tokenize.add_texts("b");
  v1::TokenizeResponse tokens;
  tokens.add_texts();
  ExpectMalformed(CheckReply(tokenize, tokens), "1 tokenized texts for 2 inputs");
  tokens.add_texts();
  EXPECT_TRUE(CheckReply(tokenize, tokens).ok());
}

}  // namespace
}  // namespace clipserve
