#ifndef CLIPSERVE_SERVER_TOKENIZER_WORD_CACHE_H_
#define CLIPSERVE_SERVER_TOKENIZER_WORD_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace clipserve {

// A bounded, thread-safe map from a pre-tokenized word to its BPE token ids, so that
// frequent words skip the merge loop. It is split into shards, each behind its own
// absl::Mutex, to keep contention low when many threads encode at once. A shard that is
// full is emptied before the next insertion (cheap, and no bookkeeping on lookups), so
// the cache never holds more than `capacity` words (rounded up to a multiple of the shard
// count). An entry is a word of at most max_word_bytes and at most as many 4-byte ids,
// plus about 200 bytes of string, vector and hash-table overhead, so the cache stays
// under capacity * (5 * max_word_bytes + 200) bytes: 17 MB at the defaults, and about
// 5 MB for everyday words (short enough for std::string's inline buffer, 1-2 ids).
// Lookups take a shard's lock shared, insertions exclusively; neither blocks on anything
// else.
class WordCache {
 public:
  struct Options {
    // Most words held in all; 0 disables the cache. 32768 words cover the vocabulary
    // of typical caption and prompt traffic (see above for the memory).
    size_t capacity = 32768;
    // Words longer than this (bytes) are not cached: they are rare, and the limit is
    // what bounds the memory per entry.
    size_t max_word_bytes = 64;
    // Independent locks (0 counts as 1); 16 keeps contention negligible at the thread
    // counts a server runs while costing nothing for a single thread.
    size_t shards = 16;
  };

  explicit WordCache(const Options& options);

  WordCache(const WordCache&) = delete;
  WordCache& operator=(const WordCache&) = delete;

  // Appends the ids cached for `word` to `ids` and returns true, or returns false and
  // leaves `ids` alone. Thread-safe.
  bool Lookup(absl::string_view word, std::vector<int32_t>* ids) const;

  // Remembers `ids` for `word` unless the word is too long or the cache is disabled.
  // Thread-safe.
  void Insert(absl::string_view word, absl::Span<const int32_t> ids);

  // Words held now (a snapshot under concurrent use). Thread-safe.
  size_t size() const;

 private:
  struct Shard {
    mutable absl::Mutex mutex;
    absl::flat_hash_map<std::string, std::vector<int32_t>> words ABSL_GUARDED_BY(mutex);
  };

  Shard& ShardFor(absl::string_view word) const;

  const size_t shard_count_;
  const size_t shard_capacity_;  // words per shard; 0 when disabled
  const size_t max_word_bytes_;
  const std::unique_ptr<Shard[]> shards_;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_TOKENIZER_WORD_CACHE_H_
