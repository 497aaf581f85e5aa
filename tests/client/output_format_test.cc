#include "client/output_format.h"

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

using nlohmann::ordered_json;

v1::Matrix MakeMatrix(int rows, int cols, std::vector<float> values) {
  v1::Matrix m;
  m.set_rows(static_cast<uint32_t>(rows));
  m.set_cols(static_cast<uint32_t>(cols));
  for (float v : values) m.add_values(v);
  return m;
}

TEST(JsonFloatTest, PrintsShortestFloat32Form) {
  EXPECT_EQ(DumpJson(ordered_json(JsonFloat(0.1f))), "0.1");
  EXPECT_EQ(DumpJson(ordered_json(JsonFloat(-0.0037523734f))), "-0.0037523734");
  EXPECT_EQ(DumpJson(ordered_json(JsonFloat(1.0f))), "1.0");
  EXPECT_EQ(DumpJson(ordered_json(JsonFloat(100.0f))), "100.0");
  EXPECT_EQ(DumpJson(ordered_json(JsonFloat(3e-8f))), "3e-08");
  EXPECT_EQ(DumpJson(ordered_json(JsonFloat(std::numeric_limits<float>::quiet_NaN()))),
            "null");
}

TEST(JsonFloatTest, RoundTripsEveryFloat32) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0, 1);
  for (int i = 0; i < 10000; ++i) {
    const float value = normal(rng) * std::pow(10.0f, static_cast<float>(i % 20 - 10));
    const std::string text = DumpJson(ordered_json(JsonFloat(value)));
    EXPECT_EQ(std::strtof(text.c_str(), nullptr), value) << text;
  }
}

TEST(EmbeddingJsonLineTest, DocumentedKeysInOrder) {
  EXPECT_EQ(
      EmbeddingJsonLine(3, "images/cat \"1\".jpg", std::vector<float>{0.5f, -0.25f}),
      R"({"index":3,"input":"images/cat \"1\".jpg","embedding":[0.5,-0.25]})");
}

TEST(EmbeddingJsonLineTest, RowLineNamesTheInputOnly) {
  EXPECT_EQ(RowJsonLine(2, "images/cat \"1\".jpg"),
            R"({"index":2,"input":"images/cat \"1\".jpg"})");
}

TEST(EmbeddingJsonLineTest, InvalidUtf8InputDoesNotThrow) {
  const std::string line = EmbeddingJsonLine(0, "bad\xff.jpg", std::vector<float>{1});
  EXPECT_NE(line.find("bad\xEF\xBF\xBD.jpg"), std::string::npos) << line;
}

TEST(MatrixRowsTest, RowsOfColsAndMalformedMatrices) {
  EXPECT_EQ(DumpJson(MatrixRows(MakeMatrix(2, 3, {1, 2, 3, 4, 5, 6}))),
            "[[1.0,2.0,3.0],[4.0,5.0,6.0]]");
  EXPECT_EQ(DumpJson(MatrixRows(MakeMatrix(2, 3, {1, 2, 3, 4}))), "[[1.0,2.0,3.0]]");
  EXPECT_EQ(DumpJson(MatrixRows(MakeMatrix(0, 0, {}))), "[]");
}

v1::SimilarityResponse TwoByTwo() {
  v1::SimilarityResponse r;
  *r.mutable_logits_per_image() = MakeMatrix(2, 2, {25.5f, 20, 19, 24});
  *r.mutable_logits_per_text() = MakeMatrix(2, 2, {25.5f, 19, 20, 24});
  *r.mutable_probs() = MakeMatrix(2, 2, {0.75f, 0.25f, 0.125f, 0.875f});
  r.set_logit_scale(100);
  r.mutable_loss()->set_image_to_text(0.5f);
  r.mutable_loss()->set_text_to_image(0.25f);
  r.mutable_loss()->set_mean(0.375f);
  return r;
}

TEST(SimilarityJsonTest, ContractKeysAndLossOnlyWhenPaired) {
  const v1::SimilarityResponse r = TwoByTwo();
  EXPECT_EQ(DumpJson(SimilarityJson(r, false)),
            R"({"logits_per_image":[[25.5,20.0],[19.0,24.0]],)"
            R"("logits_per_text":[[25.5,19.0],[20.0,24.0]],)"
            R"("probs":[[0.75,0.25],[0.125,0.875]],"logit_scale":100.0})");
  const ordered_json paired = SimilarityJson(r, true, {"a.jpg", "b.jpg"}, {"x", "y"});
  EXPECT_EQ(DumpJson(paired["loss"]),
            R"({"image_to_text":0.5,"text_to_image":0.25,"mean":0.375})");
  EXPECT_EQ(DumpJson(paired["images"]), R"(["a.jpg","b.jpg"])");
  EXPECT_EQ(DumpJson(paired["texts"]), R"(["x","y"])");
}

TEST(SimilarityTableTest, OneRowPerImageWithLogitsAndPercent) {
  const std::string table =
      SimilarityTable(TwoByTwo(), {"a.jpg", "b.jpg"}, {"x", "y"}, true);
  EXPECT_NE(table.find("a.jpg"), std::string::npos) << table;
  EXPECT_NE(table.find("25.500 ( 75.0%)"), std::string::npos) << table;
  EXPECT_NE(table.find("24.000 ( 87.5%)"), std::string::npos) << table;
  EXPECT_NE(table.find("mean 0.375"), std::string::npos) << table;
}

TEST(SimilarityTableTest, LongPathsKeepTheirFileName) {
  const std::string path = "/a/very/long/folder/name/that/goes/on/and/on/chelsea.png";
  const std::string table =
      SimilarityTable(TwoByTwo(), {path, "b.jpg"}, {"x", "y"}, false);
  EXPECT_NE(table.find("~"), std::string::npos) << table;
  EXPECT_NE(table.find("/chelsea.png "), std::string::npos) << table;
  EXPECT_EQ(table.find("/a/very"), std::string::npos) << table;
}

TEST(ClassifyJsonTest, LabelsPerImage) {
  v1::ClassifyResponse r;
  v1::LabelScore* s = r.add_results()->add_labels();
  s->set_label("cat");
  s->set_index(1);
  s->set_probability(0.75f);
  s->set_logit(21.5f);
  EXPECT_EQ(DumpJson(ClassifyJson(r, {"c.png"})),
            R"([{"image":"c.png","labels":[{"label":"cat","index":1,)"
            R"("probability":0.75,"logit":21.5}]}])");
  EXPECT_NE(ClassifyText(r, {"c.png"}).find("75.00%"), std::string::npos);
}

TEST(TokenizeJsonTest, TextIdsTruncated) {
  v1::TokenizeResponse r;
  v1::TokenizedText* t = r.add_texts();
  for (int id : {49406, 320, 2368, 49407}) t->add_ids(id);
  t = r.add_texts();
  t->add_ids(49406);
  t->add_ids(49407);
  t->set_truncated(true);
  EXPECT_EQ(DumpJson(TokenizeJson(r, {"a cat", "long"})),
            R"([{"text":"a cat","ids":[49406,320,2368,49407],"truncated":false},)"
            R"({"text":"long","ids":[49406,49407],"truncated":true}])");
  EXPECT_EQ(TokenizeText(r), "49406 320 2368 49407\n49406 49407\t(truncated)\n");
}

TEST(ModelInfoJsonTest, SnakeCaseKeysAndEveryField) {
  v1::ModelInfo info;
  info.set_name("ViT-B-32");
  info.set_embed_dim(512);
  info.set_image_size(224);
  info.set_context_length(77);
  info.add_image_mean(0.48145466f);
  info.set_logit_scale(100);
  info.mutable_vision()->set_patch_size(32);
  const ordered_json json = ModelInfoJson(info);
  EXPECT_EQ(json["name"], "ViT-B-32");
  EXPECT_EQ(json["embed_dim"], 512);
  EXPECT_EQ(json["image_size"], 224);
  EXPECT_EQ(json["context_length"], 77);
  EXPECT_EQ(json["vision"]["patch_size"], 32);
  EXPECT_EQ(json["random_weights"], false) << "defaults are printed too";
  EXPECT_EQ(json["checkpoint_sha256"], "");
  EXPECT_EQ(DumpJson(json["image_mean"]), "[0.48145467]");
  EXPECT_FALSE(json.contains("embedDim"));
  EXPECT_NE(ModelInfoText(info).find("embed_dim: 512\n"), std::string::npos);
  EXPECT_NE(ModelInfoText(info).find("vision:\n  architecture: \n"), std::string::npos);
}

}  // namespace
}  // namespace clipserve
