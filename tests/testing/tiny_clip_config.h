#ifndef CLIPSERVE_TESTS_TESTING_TINY_CLIP_CONFIG_H_
#define CLIPSERVE_TESTS_TESTING_TINY_CLIP_CONFIG_H_

#include "server/model/model_config.h"

namespace clipserve::testing {

// A CLIP small enough to run in milliseconds: ViT on 32x32 images (patch 8, width 64,
// 4 heads, 2 layers), a causal text transformer (width 64, 4 heads, 2 layers, context
// 77, CLIP's 49408 tokens), embeddings of 32.
inline ClipConfig TinyClipConfig() {
  ClipConfig c;
  c.name = "tiny";
  c.embed_dim = 32;
  c.vision.image_size = 32;
  c.vision.patch_size = 8;
  c.vision.width = 64;
  c.vision.heads = 4;
  c.vision.layers = 2;
  c.text.width = 64;
  c.text.heads = 4;
  c.text.layers = 2;
  return c;
}

}  // namespace clipserve::testing

#endif  // CLIPSERVE_TESTS_TESTING_TINY_CLIP_CONFIG_H_
