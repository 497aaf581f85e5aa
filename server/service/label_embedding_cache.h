#ifndef CLIPSERVE_SERVER_SERVICE_LABEL_EMBEDDING_CACHE_H_
#define CLIPSERVE_SERVER_SERVICE_LABEL_EMBEDDING_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace clipserve {

// Classify's memory of label embeddings: for a (label, templates) pair, the
// normalized mean of the normalized text embeddings of the label put into each
// template. Zero-shot classification asks for the same label sets over and over, so
// remembering them spares the text model all but the first time.
//
// A bounded least-recently-used map: Insert() beyond `capacity` entries evicts the
// entry looked up or inserted longest ago. Capacity 0 disables the cache (every
// Lookup misses, Insert keeps nothing). Values are immutable and shared, so a Lookup
// result stays valid after its entry is evicted.
//
// Thread-safe; every method holds one mutex for a hash lookup and a list splice, and
// never blocks otherwise.
class LabelEmbeddingCache {
 public:
  using Embedding = std::shared_ptr<const std::vector<float>>;

  explicit LabelEmbeddingCache(size_t capacity) : capacity_(capacity) {}
  LabelEmbeddingCache(const LabelEmbeddingCache&) = delete;
  LabelEmbeddingCache& operator=(const LabelEmbeddingCache&) = delete;

  // The part of a key shared by every label of one request: an unambiguous encoding
  // of the template list (order and repeats matter, as they do for the mean).
  static std::string TemplatesKey(absl::Span<const std::string> templates);
  // The key of `label` under templates encoded by TemplatesKey().
  static std::string Key(absl::string_view templates_key, absl::string_view label);

  // The embedding stored under `key`, now the most recently used entry, or nullptr.
  // Counts a hit or a miss.
  Embedding Lookup(absl::string_view key) ABSL_LOCKS_EXCLUDED(mu_);

  // Stores `embedding` under `key` as the most recently used entry (replacing an
  // earlier value for the key), evicting the least recently used beyond capacity.
  void Insert(std::string key, Embedding embedding) ABSL_LOCKS_EXCLUDED(mu_);

  size_t capacity() const { return capacity_; }
  size_t size() const ABSL_LOCKS_EXCLUDED(mu_);
  int64_t hits() const ABSL_LOCKS_EXCLUDED(mu_);
  int64_t misses() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Entry = std::pair<std::string, Embedding>;  // key, value
  using List = std::list<Entry>;

  const size_t capacity_;
  mutable absl::Mutex mu_;
  // Most recently used first.
  List entries_ ABSL_GUARDED_BY(mu_);
  // Views into the keys held by entries_.
  absl::flat_hash_map<absl::string_view, List::iterator> index_ ABSL_GUARDED_BY(mu_);
  int64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_SERVICE_LABEL_EMBEDDING_CACHE_H_
