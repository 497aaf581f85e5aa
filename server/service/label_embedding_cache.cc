#include "server/service/label_embedding_cache.h"

#include "absl/strings/str_cat.h"

namespace clipserve {

std::string LabelEmbeddingCache::TemplatesKey(absl::Span<const std::string> templates) {
  // Length-prefixed pieces cannot run into one another, whatever bytes they hold.
  std::string key = absl::StrCat(templates.size(), "|");
  for (const std::string& piece : templates)
    absl::StrAppend(&key, piece.size(), ":", piece);
  return key;
}

std::string LabelEmbeddingCache::Key(absl::string_view templates_key,
                                     absl::string_view label) {
  return absl::StrCat(templates_key, label.size(), ":", label);
}

}  // namespace clipserve
