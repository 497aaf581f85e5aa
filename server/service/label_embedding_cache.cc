#include "server/service/label_embedding_cache.h"

#include "server/engine/embedding_cache.h"

namespace clipserve {

std::string LabelEmbeddingCache::TemplatesKey(absl::Span<const std::string> templates) {
  // Length-prefixed fields (EmbeddingCacheKey) cannot run into one another, whatever
  // bytes they hold.
  EmbeddingCacheKey key;
  key.Add("classify templates").Add(static_cast<int64_t>(templates.size()));
  for (const std::string& piece : templates) key.Add(piece);
  return key.Finish();
}

std::string LabelEmbeddingCache::Key(absl::string_view templates_key,
                                     absl::string_view label) {
  return EmbeddingCacheKey().Add(templates_key).Add(label).Finish();
}

}  // namespace clipserve
