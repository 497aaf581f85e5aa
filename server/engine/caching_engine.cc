#include "server/engine/caching_engine.h"

#include <memory>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"

namespace clipserve {
namespace {

std::string ModelKey(const ModelDescription& d) {
  EmbeddingCacheKey key;
  key.Add(d.name)
      .Add(d.checkpoint_format)
      .Add(d.checkpoint_sha256)
      .Add(d.precision)
      .Add(d.device)
      .Add(d.embed_dim);
  return key.Finish();
}

}  // namespace

CachingEngine::CachingEngine(Engine* inner, const CachingEngineOptions& options)
    : inner_(inner),
      observer_(options.observer),
      model_key_(ModelKey(inner->description())),
      text_cache_(options.text_cache_bytes),
      image_cache_(options.image_cache_bytes) {}

void CachingEngine::EmbedTexts(std::vector<std::string> texts,
                               const EmbedOptions& options, std::string field,
                               EmbedCallback done) {
  if (!text_cache_.enabled() || texts.empty()) {
    inner_->EmbedTexts(std::move(texts), options, std::move(field), std::move(done));
    return;
  }
  std::vector<std::string> keys;
  keys.reserve(texts.size());
  EmbeddingCacheKey key;
  for (const std::string& text : texts) {
    keys.push_back(key.Add(model_key_)
                       .Add("text")
                       .Add(options.normalize)
                       .Add(options.truncate)
                       .Add(text)
                       .Finish());
  }
  Embed(text_cache_, /*texts=*/true, std::move(texts), std::move(keys), options,
        std::move(field), std::move(done),
        [this](std::vector<std::string> misses, const EmbedOptions& miss_options,
               std::string miss_field, EmbedCallback callback) {
          inner_->EmbedTexts(std::move(misses), miss_options, std::move(miss_field),
                             std::move(callback));
        });
}

void CachingEngine::EmbedImages(std::vector<ImageInput> images,
                                const EmbedOptions& options, std::string field,
                                EmbedCallback done) {
  if (!image_cache_.enabled() || images.empty()) {
    inner_->EmbedImages(std::move(images), options, std::move(field), std::move(done));
    return;
  }
  std::vector<std::string> keys;
  keys.reserve(images.size());
  EmbeddingCacheKey key;
  for (const ImageInput& image : images) {
    key.Add(model_key_).Add("image").Add(options.normalize).Add(image.is_raw);
    if (image.is_raw) {
      key.Add(image.width).Add(image.height).Add(image.rgb8);
    } else {
      key.Add(image.encoded);
    }
    keys.push_back(key.Finish());
  }
  Embed(image_cache_, /*texts=*/false, std::move(images), std::move(keys), options,
        std::move(field), std::move(done),
        [this](std::vector<ImageInput> misses, const EmbedOptions& miss_options,
               std::string miss_field, EmbedCallback callback) {
          inner_->EmbedImages(std::move(misses), miss_options, std::move(miss_field),
                              std::move(callback));
        });
}

template <typename Input, typename Forward>
void CachingEngine::Embed(EmbeddingCache& cache, bool texts, std::vector<Input> inputs,
                          std::vector<std::string> keys, const EmbedOptions& options,
                          std::string field, EmbedCallback done, Forward forward) {
  const int n = static_cast<int>(inputs.size());
  // What each item will be answered with: a cached value, or row miss_row[i] of the
  // wrapped engine's answer.
  std::vector<EmbeddingCache::Value> hits(n);
  std::vector<int> miss_row(n, -1);
  std::vector<Input> misses;
  std::vector<std::string> miss_keys;
  EmbedOptions miss_options = options;
  miss_options.item_numbers.clear();
  absl::flat_hash_map<absl::string_view, int> row_of_key;
  for (int i = 0; i < n; ++i) {
    if (auto it = row_of_key.find(keys[i]); it != row_of_key.end()) {
      miss_row[i] = it->second;  // repeated within this request: computed once
      continue;
    }
    hits[i] = cache.Lookup(keys[i]);
    if (observer_ != nullptr) {
      observer_->OnCacheLookup(texts ? Modality::kText : Modality::kImage,
                               hits[i] != nullptr);
    }
    if (hits[i] != nullptr) continue;
    miss_row[i] = static_cast<int>(misses.size());
    row_of_key.emplace(keys[i], miss_row[i]);
    misses.push_back(std::move(inputs[i]));
    miss_keys.push_back(keys[i]);
    miss_options.item_numbers.push_back(
        options.item_numbers.empty() ? i : options.item_numbers[i]);
  }

  auto assemble = [n, texts, hits = std::move(hits), miss_row = std::move(miss_row)](
                      const EmbedResult* computed,
                      int dim) -> absl::StatusOr<EmbedResult> {
    EmbedResult result;
    result.dim = dim;
    result.values.resize(static_cast<size_t>(n) * dim);
    if (texts) {
      result.truncated.assign(n, false);
      result.num_tokens.assign(n, 0);
    }
    for (int i = 0; i < n; ++i) {
      const float* row;
      if (hits[i] != nullptr) {
        if (static_cast<int>(hits[i]->values.size()) != dim) {
          return absl::InternalError("cached embedding has the wrong width");
        }
        row = hits[i]->values.data();
        if (texts) {
          result.truncated[i] = hits[i]->truncated;
          result.num_tokens[i] = hits[i]->num_tokens;
        }
      } else {
        row = computed->row(miss_row[i]);
        if (texts) {
          result.truncated[i] = computed->truncated[miss_row[i]];
          result.num_tokens[i] = computed->num_tokens[miss_row[i]];
        }
      }
      std::copy(row, row + dim, result.values.begin() + static_cast<size_t>(i) * dim);
    }
    return result;
  };

  if (misses.empty()) {
    std::move(done)(assemble(nullptr, inner_->description().embed_dim));
    return;
  }
  const int expected_rows = static_cast<int>(misses.size());
  forward(
      std::move(misses), miss_options, std::move(field),
      [&cache, texts, expected_rows, miss_keys = std::move(miss_keys),
       assemble = std::move(assemble),
       done = std::move(done)](absl::StatusOr<EmbedResult> computed) mutable {
        if (!computed.ok()) {
          std::move(done)(computed.status());
          return;
        }
        if (computed->rows() != expected_rows) {
          std::move(done)(
              absl::InternalError(absl::StrCat("engine answered ", computed->rows(),
                                               " rows for ", expected_rows, " items")));
          return;
        }
        if (texts && (static_cast<int>(computed->num_tokens.size()) != expected_rows ||
                      static_cast<int>(computed->truncated.size()) != expected_rows)) {
          std::move(done)(absl::InternalError("engine answered no token counts"));
          return;
        }
        for (int j = 0; j < expected_rows; ++j) {
          auto value = std::make_shared<CachedEmbedding>();
          value->values.assign(computed->row(j), computed->row(j) + computed->dim);
          if (texts) {
            value->truncated = computed->truncated[j];
            value->num_tokens = computed->num_tokens[j];
          }
          cache.Insert(std::move(miss_keys[j]), std::move(value));
        }
        std::move(done)(assemble(&*computed, computed->dim));
      });
}

}  // namespace clipserve
