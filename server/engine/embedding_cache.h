#ifndef CLIPSERVE_SERVER_ENGINE_EMBEDDING_CACHE_H_
#define CLIPSERVE_SERVER_ENGINE_EMBEDDING_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

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

  explicit EmbeddingCache(size_t capacity_bytes) : capacity_bytes_(capacity_bytes) {}
  EmbeddingCache(const EmbeddingCache&) = delete;
  EmbeddingCache& operator=(const EmbeddingCache&) = delete;

  bool enabled() const { return capacity_bytes_ > 0; }

  // The value under `key`, now the most recently used, or nullptr. Counts a hit or a
  // miss.
  Value Lookup(absl::string_view key) ABSL_LOCKS_EXCLUDED(mu_);

  // Stores `value` under `key` as the most recently used entry (an earlier value for
  // the key is replaced), then evicts from the least recently used end until the
  // cache fits its capacity. An entry larger than the whole capacity is not kept.
  void Insert(std::string key, Value value) ABSL_LOCKS_EXCLUDED(mu_);

  struct Stats {
    int64_t hits = 0;
    int64_t misses = 0;
    int64_t evictions = 0;
    int64_t entries = 0;
    int64_t bytes = 0;
  };
  Stats stats() const ABSL_LOCKS_EXCLUDED(mu_);
  size_t capacity_bytes() const { return capacity_bytes_; }

 private:
  struct Entry {
    std::string key;
    Value value;
    size_t bytes = 0;
  };
  using List = std::list<Entry>;
  static size_t BytesOf(const std::string& key, const CachedEmbedding& value);
  void EvictToFit() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t capacity_bytes_;
  mutable absl::Mutex mu_;
  List entries_ ABSL_GUARDED_BY(mu_);  // most recently used first
  absl::flat_hash_map<absl::string_view, List::iterator> index_ ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  Stats stats_ ABSL_GUARDED_BY(mu_);
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
