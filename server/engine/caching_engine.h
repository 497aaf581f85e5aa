#ifndef CLIPSERVE_SERVER_ENGINE_CACHING_ENGINE_H_
#define CLIPSERVE_SERVER_ENGINE_CACHING_ENGINE_H_

#include <cstddef>
#include <string>
#include <vector>

#include "server/engine/embedding_cache.h"
#include "server/engine/engine.h"

namespace clipserve {

struct CachingEngineOptions {
  // Bytes of text embeddings kept (0 disables). Default 64 MiB: about 30,000 ViT-B
  // rows of 512 floats, for a fraction of the model's own memory. Texts repeat in
  // practice (labels, prompts, popular queries) and cost a model run each.
  size_t text_cache_bytes = size_t{64} << 20;
  // Bytes of image embeddings kept (0 disables, the default): repeated images are
  // rarer, and hashing each image's bytes is then pure overhead.
  size_t image_cache_bytes = 0;
  // Optional: told of every lookup (hit or miss). Not owned; must outlive the engine.
  EngineObserver* observer = nullptr;
};

// An Engine that remembers embeddings: an item whose key (model, modality, options,
// input bytes; see EmbeddingCacheKey) was answered before is served from an LRU cache
// and never reaches the model, and an item repeated within one request is computed
// once. Only the misses go on to the wrapped engine, as one request that keeps the
// caller's item numbers for error messages; a request with no misses is answered
// inline. Errors are never cached. Tokenize, description and health pass through.
//
// Thread-safe. `inner` must outlive this object, and this object every callback of a
// call made through it (shut the inner engine down first).
class CachingEngine : public Engine {
 public:
  CachingEngine(Engine* inner, const CachingEngineOptions& options);

  void EmbedImages(std::vector<ImageInput> images, const EmbedOptions& options,
                   std::string field, EmbedCallback done) override;
  void EmbedTexts(std::vector<std::string> texts, const EmbedOptions& options,
                  std::string field, EmbedCallback done) override;
  void Tokenize(std::vector<std::string> texts, const EmbedOptions& options,
                std::string field, TokenizeCallback done) override {
    inner_->Tokenize(std::move(texts), options, std::move(field), std::move(done));
  }
  const ModelDescription& description() const override { return inner_->description(); }
  // The inner engine's: with no hits, every text of a call reaches it.
  int max_texts_per_call() const override { return inner_->max_texts_per_call(); }
  bool healthy() const override { return inner_->healthy(); }
  void DropDeadItems() override { inner_->DropDeadItems(); }

  EmbeddingCache::Stats text_cache_stats() const { return text_cache_.stats(); }
  EmbeddingCache::Stats image_cache_stats() const { return image_cache_.stats(); }

 private:
  // Looks every key up, forwards the distinct misses through `forward(inputs,
  // options, field, callback)` and assembles the answer in input order.
  template <typename Input, typename Forward>
  void Embed(EmbeddingCache& cache, bool texts, std::vector<Input> inputs,
             std::vector<std::string> keys, const EmbedOptions& options,
             std::string field, EmbedCallback done, Forward forward);

  Engine* const inner_;
  EngineObserver* const observer_;
  // Identifies the model in every key: name, checkpoint digest, precision, device.
  const std::string model_key_;
  EmbeddingCache text_cache_;
  EmbeddingCache image_cache_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_ENGINE_CACHING_ENGINE_H_
