#ifndef CLIPSERVE_SERVER_SERVICE_LABEL_EMBEDDING_CACHE_H_
#define CLIPSERVE_SERVER_SERVICE_LABEL_EMBEDDING_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/common/lru_cache.h"

namespace clipserve {

// Classify's memory of label embeddings: for a (label, templates) pair, the
// normalized mean of the normalized text embeddings of the label put into each
// template. Zero-shot classification asks for the same label sets over and over, so
// remembering them spares the text model all but the first time.
//
// A bounded least-recently-used map (LruCache): Insert() beyond `capacity` entries
// evicts the entry looked up or inserted longest ago. Capacity 0 disables the cache
// (every Lookup misses, Insert keeps nothing). Values are immutable and shared, so a
// Lookup result stays valid after its entry is evicted.
//
// Thread-safe; every method holds one mutex for a hash lookup and a list splice, and
// never blocks otherwise.
class LabelEmbeddingCache {
 public:
  using Embedding = std::shared_ptr<const std::vector<float>>;

  explicit LabelEmbeddingCache(size_t capacity) : lru_(capacity, &OneEntry) {}

  // The part of a key shared by every label of one request: a SHA-256 digest of the
  // template list (order and repeats matter, as they do for the mean), 32 bytes
  // however long the client's templates are.
  static std::string TemplatesKey(absl::Span<const std::string> templates);
  // The key of `label` under templates encoded by TemplatesKey(): a 32-byte digest of
  // both, so that an entry costs the same whatever text the client sent.
  static std::string Key(absl::string_view templates_key, absl::string_view label);

  // The embedding stored under `key`, now the most recently used entry, or nullptr.
  // Counts a hit or a miss.
  Embedding Lookup(absl::string_view key) { return lru_.Lookup(key); }

  // Stores `embedding` under `key` as the most recently used entry (replacing an
  // earlier value for the key), evicting the least recently used beyond capacity.
  void Insert(std::string key, Embedding embedding) {
    lru_.Insert(std::move(key), std::move(embedding));
  }

  size_t capacity() const { return lru_.capacity(); }
  size_t size() const { return static_cast<size_t>(lru_.stats().entries); }
  int64_t hits() const { return lru_.stats().hits; }
  int64_t misses() const { return lru_.stats().misses; }

 private:
  // Capacity counts entries.
  static size_t OneEntry(const std::string&, const std::vector<float>&) { return 1; }

  LruCache<std::vector<float>> lru_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_LABEL_EMBEDDING_CACHE_H_
