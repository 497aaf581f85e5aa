#include "server/model/model_config.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

using ::testing::HasSubstr;

TEST(PresetConfigTest, PublishedDimensions) {
  struct Expected {
    const char* name;
    int embed_dim, image_size, width, layers, patch, heads, text_width, text_heads;
  };
  const Expected expected[] = {
      {"ViT-B-32", 512, 224, 768, 12, 32, 12, 512, 8},
      {"ViT-B-16", 512, 224, 768, 12, 16, 12, 512, 8},
      {"ViT-L-14", 768, 224, 1024, 24, 14, 16, 768, 12},
      {"ViT-L-14-336", 768, 336, 1024, 24, 14, 16, 768, 12},
      {"RN50", 1024, 224, 64, 16, 0, 32, 512, 8},
      {"RN101", 512, 224, 64, 33, 0, 32, 512, 8},
      {"RN50x4", 640, 288, 80, 26, 0, 40, 640, 10},
      {"RN50x16", 768, 384, 96, 40, 0, 48, 768, 12},
      {"RN50x64", 1024, 448, 128, 64, 0, 64, 1024, 16},
  };
  EXPECT_EQ(PresetNames().size(), std::size(expected));
  for (const Expected& e : expected) {
    SCOPED_TRACE(e.name);
    auto c = PresetConfig(e.name);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->embed_dim, e.embed_dim);
    EXPECT_EQ(c->vision.image_size, e.image_size);
    EXPECT_EQ(c->vision.width, e.width);
    EXPECT_EQ(c->vision.layers, e.layers);
    EXPECT_EQ(c->vision.patch_size, e.patch);
    EXPECT_EQ(c->vision.heads, e.heads);
    EXPECT_EQ(c->text.width, e.text_width);
    EXPECT_EQ(c->text.heads, e.text_heads);
    EXPECT_EQ(c->text.layers, 12);
    EXPECT_EQ(c->text.context_length, 77);
    EXPECT_EQ(c->text.vocab_size, 49408);
    EXPECT_TRUE(c->quick_gelu);
    EXPECT_TRUE(ValidateConfig(*c).ok());
  }
  EXPECT_EQ(PresetConfig("ViT-H-99").status().code(), absl::StatusCode::kNotFound);
}

TEST(ParseOpenClipConfigTest, VitWithPreprocessing) {
  auto c = ParseOpenClipConfig(R"({
    "model_cfg": {"embed_dim": 32, "quick_gelu": true,
      "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                     "head_width": 16},
      "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4,
                   "layers": 2}},
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vision.arch, VisionArch::kVisionTransformer);
  EXPECT_EQ(c->vision.heads, 4);
  EXPECT_EQ(c->text.arch, TextArch::kTransformer);
  EXPECT_FLOAT_EQ(c->image_mean[1], 0.5f);
  EXPECT_FLOAT_EQ(c->image_std[2], 0.25f);
}

// The MLP's hidden width as open_clip builds it: int(width * mlp_ratio), truncated
// (64 x 2.5390625 = 162.5 is 162, where rounding made 163 and refused the checkpoint).
TEST(ParseOpenClipConfigTest, MlpWidthIsTruncatedAsInOpenClip) {
  auto c = ParseOpenClipConfig(R"({
    "model_cfg": {"embed_dim": 32,
      "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                     "head_width": 16, "mlp_ratio": 2.5390625},
      "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4,
                   "layers": 2, "mlp_ratio": 2.99}}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vision.MlpWidth(), 162);
  EXPECT_EQ(c->text.MlpWidth(), 191);  // 191.36
}

TEST(ParseOpenClipConfigTest, ResNetAndCbow) {
  auto c = ParseOpenClipConfig(R"({"embed_dim": 32,
      "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 16,
                     "head_width": 16},
      "text_cfg": {"encoder_type": "cbow", "width": 48}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vision.arch, VisionArch::kModifiedResNet);
  EXPECT_EQ(c->vision.stage_layers[1], 2);
  EXPECT_EQ(c->vision.heads, 16 * 32 / 16);
  EXPECT_EQ(c->text.arch, TextArch::kCbow);
  EXPECT_EQ(c->text.width, 48);
  EXPECT_FALSE(c->quick_gelu);
}

TEST(ParseOpenClipConfigTest, ErrorsNameTheField) {
  EXPECT_THAT(ParseOpenClipConfig("not json").status().message(), HasSubstr("JSON"));
  EXPECT_THAT(ParseOpenClipConfig(R"({"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}})")
                  .status()
                  .message(),
              HasSubstr("vision_cfg.image_size"));
  EXPECT_THAT(
      ParseOpenClipConfig(R"({"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}, "x": 1})")
          .status()
          .message(),
      HasSubstr("config.x is unknown"));
  EXPECT_THAT(ParseOpenClipConfig(R"({"embed_dim": 8,
          "vision_cfg": {"image_size": 30, "layers": 1, "width": 64, "patch_size": 8},
          "text_cfg": {"width": 64, "heads": 1, "layers": 1}})")
                  .status()
                  .message(),
              HasSubstr("patch_size"));
  // Model-level keys are named by the section they sit in: flat, or under model_cfg.
  EXPECT_THAT(ParseOpenClipConfig(R"({"model_cfg": {"vision_cfg": {}, "text_cfg": {}}})")
                  .status()
                  .message(),
              HasSubstr("model_cfg.embed_dim"));
  EXPECT_THAT(
      ParseOpenClipConfig(
          R"({"embed_dim": 8, "quick_gelu": 1, "vision_cfg": {}, "text_cfg": {}})")
          .status()
          .message(),
      HasSubstr("config.quick_gelu must be a boolean"));
  EXPECT_EQ(ParseOpenClipConfig(R"({"embed_dim": -1, "vision_cfg": {}, "text_cfg": {}})")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// A small open_clip_config.json with `extra` spliced into one section ("model",
// "vision", "text" or "preprocess"); `extra` is "" or a leading-comma JSON fragment.
std::string OpenClipJson(absl::string_view section, absl::string_view extra) {
  auto in = [&](absl::string_view s) { return s == section ? extra : ""; };
  return absl::StrCat(
      R"({"model_cfg": {"embed_dim": 32)", in("model"),
      R"(, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                          "head_width": 16)",
      in("vision"), R"(}, "text_cfg": {"width": 64, "heads": 4, "layers": 2)", in("text"),
      R"(}}, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5])", in("preprocess"), "}}");
}

TEST(ParseOpenClipConfigTest, RefusesNumbersBeyondAnyModel) {
  // 1e300 does not fit a float (converting it would be undefined).
  EXPECT_THAT(ParseOpenClipConfig(OpenClipJson("preprocess", R"(, "std": [1e300, 1, 1])"))
                  .status()
                  .message(),
              HasSubstr("preprocess_cfg.std must be 3 numbers of magnitude at most 1e6"));
  EXPECT_THAT(ParseOpenClipConfig(OpenClipJson("vision", R"(, "mlp_ratio": 1000)"))
                  .status()
                  .message(),
              HasSubstr("vision.mlp_ratio must be > 0 and at most 64"));
}

TEST(ParseOpenClipConfigTest, AcceptsDefaultsSpelledOutAndTrainingOnlyKeys) {
  ASSERT_TRUE(ParseOpenClipConfig(OpenClipJson("", "")).ok());
  const std::pair<const char*, const char*> accepted[] = {
      {"model", R"(, "quick_gelu": false, "cast_dtype": "fp16", "init_logit_bias": null,
                   "custom_text": false, "output_dict": true)"},
      {"vision", R"(, "pool_type": "tok", "global_average_pool": false,
                    "final_ln_after_pool": false, "ls_init_value": null,
                    "patch_dropout": 0.5, "output_tokens": false, "timm_model_name": null)"},
      {"text", R"(, "pool_type": "argmax", "no_causal_mask": false, "proj_type": "linear",
                  "proj_bias": false, "embed_cls": false, "pad_id": 0,
                  "hf_tokenizer_name": null, "context_length": 77)"},
      {"preprocess",
       R"(, "size": 32, "interpolation": "bicubic", "resize_mode": "shortest",
                        "fill_color": 255, "mode": "RGB")"},
      {"preprocess", R"(, "size": [32, 32])"},
      {"vision", R"(, "attentional_pool": null, "act_kwargs": null)"},
  };
  for (const auto& [section, extra] : accepted) {
    SCOPED_TRACE(extra);
    auto c = ParseOpenClipConfig(OpenClipJson(section, extra));
    EXPECT_TRUE(c.ok()) << c.status();
  }
}

// Options that change pooling, masking, normalization, tokenization or preprocessing
// without changing a weight would load and silently give other embeddings.
TEST(ParseOpenClipConfigTest, RejectsOptionsThatChangeTheComputation) {
  const std::string kDeepPoolType = absl::StrCat(
      R"(, "pool_type": )", std::string(1'000'000, '['), std::string(1'000'000, ']'));
  struct Case {
    const char* section;
    const char* extra;
    const char* message;
  };
  const Case cases[] = {
      {"vision", R"(, "pool_type": "avg")", "vision_cfg.pool_type = \"avg\""},
      {"vision", R"(, "global_average_pool": true)", "vision_cfg.global_average_pool"},
      {"vision", R"(, "final_ln_after_pool": true)", "vision_cfg.final_ln_after_pool"},
      {"vision", R"(, "norm_kwargs": {"eps": 1e-6})", "vision_cfg.norm_kwargs"},
      {"vision", R"(, "timm_model_name": "vit_base_patch16_siglip_224")",
       "vision_cfg.timm_model_name"},
      {"text", R"(, "pool_type": "last")", "clipserve implements only \"argmax\""},
      {"text", R"(, "pool_type": null)", "text_cfg.pool_type = null"},
      {"vision", R"(, "pos_embed_type": null)", "vision_cfg.pos_embed_type"},
      {"text", R"(, "no_causal_mask": true)", "text_cfg.no_causal_mask"},
      {"text", R"(, "final_ln_after_pool": true)", "text_cfg.final_ln_after_pool"},
      {"text", R"(, "hf_tokenizer_name": "bert-base-uncased")",
       "text_cfg.hf_tokenizer_name"},
      {"text", R"(, "tokenizer_kwargs": {"clean": "canonicalize"})",
       "text_cfg.tokenizer_kwargs"},
      {"model", R"(, "init_logit_bias": -10)", "model_cfg.init_logit_bias"},
      {"model", R"(, "custom_text": true)", "model_cfg.custom_text"},
      {"preprocess", R"(, "resize_mode": "squash")", "preprocess_cfg.resize_mode"},
      {"preprocess", R"(, "interpolation": "bilinear")", "preprocess_cfg.interpolation"},
      {"preprocess", R"(, "size": 64)", "preprocess_cfg.size 64 differs"},
      {"preprocess", R"(, "size": [32, 48])", "differs from vision_cfg.image_size 32"},
      {"vision", R"(, "shiny_new_option": 1)", "vision_cfg.shiny_new_option is unknown"},
      {"model", R"(, "quick_gelu": "yes")", "quick_gelu must be a boolean"},
      {"text", R"(, "encoder_type": 3)", "encoder_type must be a string"},
      // Printed cut short: in full, a million levels would overflow the stack.
      {"text", kDeepPoolType.c_str(), "text_cfg.pool_type = [[[[...]]]]"},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.extra);
    auto c = ParseOpenClipConfig(OpenClipJson(k.section, k.extra));
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(c.status().message(), HasSubstr(k.message));
  }
}

TEST(ParseHfConfigTest, ReadsTheTransformersSchema) {
  auto c = ParseHfConfig(R"({"model_type": "clip", "projection_dim": 32,
      "text_config": {"hidden_size": 64, "intermediate_size": 256,
        "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 77,
        "vocab_size": 49408, "hidden_act": "quick_gelu"},
      "vision_config": {"hidden_size": 64, "intermediate_size": 256,
        "num_attention_heads": 4, "num_hidden_layers": 2, "image_size": 32,
        "patch_size": 8, "hidden_act": "quick_gelu"}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->embed_dim, 32);
  EXPECT_EQ(c->vision.patch_size, 8);
  EXPECT_DOUBLE_EQ(c->vision.mlp_ratio, 4.0);
  EXPECT_TRUE(c->quick_gelu);
  EXPECT_FALSE(ParseHfConfig(R"({"model_type": "bert"})").ok());
  // intermediate_size is the hidden width itself, whatever ratio it makes.
  auto odd = ParseHfConfig(R"({"model_type": "clip", "projection_dim": 32,
      "text_config": {"hidden_size": 96, "intermediate_size": 293,
        "num_attention_heads": 4, "num_hidden_layers": 2, "hidden_act": "quick_gelu"},
      "vision_config": {"hidden_size": 1024, "intermediate_size": 2730,
        "num_attention_heads": 4, "num_hidden_layers": 2, "image_size": 32,
        "patch_size": 8, "hidden_act": "quick_gelu"}})");
  ASSERT_TRUE(odd.ok()) << odd.status();
  EXPECT_EQ(odd->vision.MlpWidth(), 2730);
  EXPECT_EQ(odd->text.MlpWidth(), 293);
}

TEST(ParseHfConfigTest, RejectsSettingsThatChangeTheComputation) {
  const std::string towers =
      R"("text_config": {"hidden_size": 64, "num_attention_heads": 4,
      "num_hidden_layers": 1, "layer_norm_eps": TEXT_EPS},
    "vision_config": {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
      "image_size": 32, "patch_size": 8, "hidden_act": HIDDEN_ACT, "num_channels": CH}})";
  auto config = [&](const char* eps, const char* act, const char* channels) {
    std::string t = absl::StrCat(R"({"model_type": "clip", )", towers);
    t = absl::StrReplaceAll(t,
                            {{"TEXT_EPS", eps}, {"HIDDEN_ACT", act}, {"CH", channels}});
    return ParseHfConfig(t);
  };
  auto ok = config("1e-05", R"("quick_gelu")", "3");
  EXPECT_TRUE(ok.ok()) << ok.status();
  EXPECT_THAT(config("1e-06", R"("quick_gelu")", "3").status().message(),
              HasSubstr("text_config.layer_norm_eps"));
  EXPECT_THAT(config("1e-05", R"("quick_gelu")", "1").status().message(),
              HasSubstr("num_channels"));
  EXPECT_THAT(config("1e-05", "7", "3").status().message(),
              HasSubstr("vision_config.hidden_act must be a string"));
  EXPECT_THAT(ParseHfConfig(R"({"model_type": 5})").status().message(),
              HasSubstr("not a Hugging Face CLIP config"));
}

// preprocessor_config.json as transformers saves it: the legacy schema of
// openai/clip-vit-base-patch32 and the current one, with another mean and std.
TEST(ApplyHfPreprocessorConfigTest, ReadsBothSchemas) {
  ClipConfig c;  // image_size 224
  const absl::Status legacy = ApplyHfPreprocessorConfig(R"({
      "crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
      "feature_extractor_type": "CLIPFeatureExtractor",
      "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224})",
                                                        &c);
  EXPECT_TRUE(legacy.ok()) << legacy;
  EXPECT_FLOAT_EQ(c.image_std[0], 0.26862954f);
  const absl::Status current = ApplyHfPreprocessorConfig(R"({
      "crop_size": {"height": 224, "width": 224}, "do_center_crop": true,
      "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
      "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "CLIPImageProcessor",
      "image_std": [0.25, 0.25, 0.25], "processor_class": "CLIPProcessor",
      "resample": 3, "rescale_factor": 0.00392156862745098,
      "size": {"shortest_edge": 224}, "data_format": "channels_first",
      "default_to_square": false, "crop_pct": null, "input_data_format": null,
      "device": null, "return_tensors": null, "disable_grouping": null})",
                                                         &c);
  EXPECT_TRUE(current.ok()) << current;
  EXPECT_FLOAT_EQ(c.image_mean[2], 0.5f);
  EXPECT_FLOAT_EQ(c.image_std[1], 0.25f);
  EXPECT_TRUE(ApplyHfPreprocessorConfig("{}", &c).ok());  // Defaults throughout.
}

TEST(ApplyHfPreprocessorConfigTest, RejectsOtherSizesAndSteps) {
  struct Case {
    const char* json;
    const char* message;
  };
  for (const Case& k : std::vector<Case>{
           {R"({"size": {"shortest_edge": 336}})", "size to 336 pixels"},
           {R"({"size": 336})", "size to 336 pixels"},
           {R"({"crop_size": {"height": 224, "width": 200}})", "crop_size"},
           {R"({"size": {"height": 224, "width": 224}})", "shortest_edge"},
           {R"({"resample": 2})", "resample = 2"},
           {R"({"do_center_crop": false})", "do_center_crop = false"},
           {R"({"do_normalize": false})", "do_normalize"},
           {R"({"rescale_factor": 1.0})", "rescale_factor"},
           {R"({"crop_pct": 0.9})", "crop_pct"},
           {R"({"image_processor_type": "SiglipImageProcessor"})",
            "SiglipImageProcessor"},
           {R"({"image_mean": [0.5, 0.5]})", "image_mean must be 3 numbers"},
           {R"({"brand_new_option": 1})", "brand_new_option is unknown"},
           {"[1]", "not a JSON object"},
       }) {
    SCOPED_TRACE(k.json);
    ClipConfig c;
    const absl::Status status = ApplyHfPreprocessorConfig(k.json, &c);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr(k.message));
    EXPECT_THAT(status.message(), HasSubstr("preprocessor_config.json"));
  }
}

ShapeMap VitB32Shapes() {
  ShapeMap s;
  s["visual.proj"] = {768, 512};
  s["visual.conv1.weight"] = {768, 3, 32, 32};
  s["visual.positional_embedding"] = {50, 768};
  for (int i = 0; i < 12; ++i) {
    const std::string v = "visual.transformer.resblocks." + std::to_string(i);
    s[v + ".attn.in_proj_weight"] = {2304, 768};
    s[v + ".mlp.c_fc.weight"] = {3072, 768};
    const std::string t = "transformer.resblocks." + std::to_string(i);
    s[t + ".attn.in_proj_weight"] = {1536, 512};
    s[t + ".mlp.c_fc.weight"] = {2048, 512};
  }
  s["text_projection"] = {512, 512};
  s["token_embedding.weight"] = {49408, 512};
  s["positional_embedding"] = {77, 512};
  s["ln_final.weight"] = {512};
  return s;
}

TEST(InferConfigTest, ViTB32FromShapesMatchesPreset) {
  auto inferred = InferConfigFromStateDict(VitB32Shapes());
  ASSERT_TRUE(inferred.ok()) << inferred.status();
  auto preset = PresetConfig("ViT-B-32");
  EXPECT_EQ(inferred->embed_dim, preset->embed_dim);
  EXPECT_EQ(inferred->vision.image_size, 224);
  EXPECT_EQ(inferred->vision.patch_size, 32);
  EXPECT_EQ(inferred->vision.layers, 12);
  EXPECT_EQ(inferred->vision.heads, 12);
  EXPECT_EQ(inferred->text.layers, 12);
  EXPECT_EQ(inferred->text.heads, 8);
  EXPECT_EQ(inferred->text.context_length, 77);
}

// Shapes cannot tell heads apart; open_clip's widest towers do not have 64-wide
// heads, and 64-wide ones would load and give other embeddings.
TEST(InferConfigTest, WideOpenClipImageTowersHave16Heads) {
  const struct {
    int width, mlp, text_width, heads, text_heads;
  } cases[] = {
      {1280, 5120, 1024, 16, 16},  // ViT-H-14
      {1408, 6144, 1024, 16, 16},  // ViT-g-14
      {1664, 8192, 1280, 16, 20},  // ViT-bigG-14
      {1024, 4096, 768, 16, 12},   // ViT-L-14
      {384, 1536, 384, 6, 6},      // ViT-S-32
  };
  for (const auto& k : cases) {
    SCOPED_TRACE(k.width);
    ShapeMap s;
    s["visual.proj"] = {k.width, 1024};
    s["visual.conv1.weight"] = {k.width, 3, 14, 14};
    s["visual.positional_embedding"] = {257, k.width};
    s["visual.transformer.resblocks.0.attn.in_proj_weight"] = {3 * k.width, k.width};
    s["visual.transformer.resblocks.0.mlp.c_fc.weight"] = {k.mlp, k.width};
    s["transformer.resblocks.0.attn.in_proj_weight"] = {3 * k.text_width, k.text_width};
    s["transformer.resblocks.0.mlp.c_fc.weight"] = {4 * k.text_width, k.text_width};
    s["text_projection"] = {k.text_width, 1024};
    s["token_embedding.weight"] = {49408, k.text_width};
    s["positional_embedding"] = {77, k.text_width};
    s["ln_final.weight"] = {k.text_width};
    auto c = InferConfigFromStateDict(s);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->vision.heads, k.heads);
    EXPECT_EQ(c->text.heads, k.text_heads);
  }
}

TEST(InferConfigTest, ResNetStagesFromKeys) {
  ShapeMap s;
  s["visual.attnpool.positional_embedding"] = {50, 2048};
  s["visual.layer1.0.conv1.weight"] = {64, 64, 1, 1};
  const int stages[4] = {3, 4, 6, 3};
  for (int b = 0; b < 4; ++b) {
    for (int i = 0; i < stages[b]; ++i) {
      s["visual.layer" + std::to_string(b + 1) + "." + std::to_string(i) +
        ".conv1.weight"] = {64, 64, 1, 1};
    }
  }
  s["text_projection"] = {512, 1024};
  s["token_embedding.weight"] = {49408, 512};
  s["positional_embedding"] = {77, 512};
  s["ln_final.weight"] = {512};
  s["transformer.resblocks.0.attn.in_proj_weight"] = {1536, 512};
  s["transformer.resblocks.0.mlp.c_fc.weight"] = {2048, 512};
  auto c = InferConfigFromStateDict(s);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vision.arch, VisionArch::kModifiedResNet);
  EXPECT_EQ(c->vision.stage_layers, (std::array<int, 4>{3, 4, 6, 3}));
  EXPECT_EQ(c->vision.image_size, 224);
  EXPECT_EQ(c->vision.heads, 32);
  EXPECT_EQ(c->embed_dim, 1024);
}

TEST(InferConfigTest, CbowWithoutPositionalEmbedding) {
  ShapeMap s = VitB32Shapes();
  for (auto it = s.begin(); it != s.end();) {
    const bool text_transformer = it->first.rfind("transformer.", 0) == 0;
    it = (text_transformer || it->first == "positional_embedding" ||
          it->first == "ln_final.weight")
             ? s.erase(it)
             : std::next(it);
  }
  auto c = InferConfigFromStateDict(s);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->text.arch, TextArch::kCbow);
  EXPECT_EQ(c->text.width, 512);
}

TEST(InferConfigTest, MissingKeysAreNamed) {
  ShapeMap s = VitB32Shapes();
  s.erase("text_projection");
  EXPECT_THAT(InferConfigFromStateDict(s).status().message(),
              HasSubstr("text_projection"));
  EXPECT_THAT(InferConfigFromStateDict({}).status().message(), HasSubstr("visual.proj"));
  s = VitB32Shapes();
  s["visual.positional_embedding"] = {51, 768};
  EXPECT_THAT(InferConfigFromStateDict(s).status().message(), HasSubstr("square"));
}

}  // namespace
}  // namespace clipserve
