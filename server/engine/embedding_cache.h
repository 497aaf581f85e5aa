#ifndef CLIPSERVE_SERVER_ENGINE_EMBEDDING_CACHE_H_
#define CLIPSERVE_SERVER_ENGINE_EMBEDDING_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "server/common/lru_cache.h"

namespace clipserve {

// One embedding row as the engine answered it, with the text facts that go with it.
struct CachedEmbedding {
  std::vector<float> values;
  bool truncated = false;  // texts only
  int num_tokens = 0;      // texts only
};

// A least-recently-used map from a 32-byte digest (see EmbeddingCacheKey) to an
// embedding, bounded by the bytes it holds: keys, values and a fixed per-entry
// overhead are charged against `capacity_bytes`; an Insert beyond it evicts the
// entries used longest ago. Capacity 0 disables the cache (every Lookup misses, Insert
// keeps nothing). Values are immutable and shared: a Lookup result stays valid after
// its entry is evicted.
//
// Thread-safe; each call holds one mutex for a hash lookup and a list splice.
class EmbeddingCache {
 public:
  using Value = std::shared_ptr<const CachedEmbedding>;

  // What one entry costs beyond its key and floats: list node, hash slot, control
  // block. An estimate, so that tiny embeddings cannot make the count meaningless.
  static constexpr size_t kEntryOverheadBytes = 128;

  explicit EmbeddingCache(size_t capacity_bytes) : lru_(capacity_bytes, &BytesOf) {}

  bool enabled() const { return lru_.capacity() > 0; }

  // The value under `key`, now the most recently used, or nullptr. Counts a hit or a
  // miss.
  Value Lookup(absl::string_view key) { return lru_.Lookup(key); }

  // Stores `value` under `key` as the most recently used entry (an earlier value for
  // the key is replaced), then evicts from the least recently used end until the
  // cache fits its capacity. An entry larger than the whole capacity is not kept.
  void Insert(std::string key, Value value) {
    lru_.Insert(std::move(key), std::move(value));
  }

  struct Stats {
    int64_t hits = 0;
    int64_t misses = 0;
    int64_t evictions = 0;
    int64_t entries = 0;
    int64_t bytes = 0;
  };
  Stats stats() const;
  size_t capacity_bytes() const { return lru_.capacity(); }

 private:
  static size_t BytesOf(const std::string& key, const CachedEmbedding& value);

  LruCache<CachedEmbedding> lru_;
};

// Builds cache keys: SHA-256 over length-prefixed fields, so that no two different
// field lists hash the same input bytes. A key covers the model (its name, checkpoint
// digest, precision and device), the modality, every option that changes the
// answer, and the input bytes.
class EmbeddingCacheKey {
 public:
  EmbeddingCacheKey();
  ~EmbeddingCacheKey();
  EmbeddingCacheKey(const EmbeddingCacheKey&) = delete;
  EmbeddingCacheKey& operator=(const EmbeddingCacheKey&) = delete;

  EmbeddingCacheKey& Add(absl::string_view field);
  EmbeddingCacheKey& Add(int64_t field);
  // The 32-byte digest; the builder can be reused afterwards, starting empty.
  std::string Finish();

 private:
  struct Context;
  std::unique_ptr<Context> context_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_ENGINE_EMBEDDING_CACHE_H_
