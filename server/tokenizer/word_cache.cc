#include "server/tokenizer/word_cache.h"

#include <algorithm>

#include "absl/hash/hash.h"

namespace clipserve {

WordCache::WordCache(const Options& options)
    : shard_count_(std::max<size_t>(options.shards, 1)),
      shard_capacity_((options.capacity + shard_count_ - 1) / shard_count_),
      max_word_bytes_(options.max_word_bytes),
      shards_(new Shard[shard_count_]) {}

WordCache::Shard& WordCache::ShardFor(absl::string_view word) const {
  return shards_[absl::HashOf(word) % shard_count_];
}

bool WordCache::Lookup(absl::string_view word, std::vector<int32_t>* ids) const {
  if (shard_capacity_ == 0 || word.size() > max_word_bytes_) return false;
  Shard& shard = ShardFor(word);
  absl::ReaderMutexLock lock(&shard.mutex);
  const auto it = shard.words.find(word);
  if (it == shard.words.end()) return false;
  ids->insert(ids->end(), it->second.begin(), it->second.end());
  return true;
}

void WordCache::Insert(absl::string_view word, absl::Span<const int32_t> ids) {
  if (shard_capacity_ == 0 || word.size() > max_word_bytes_) return;
  Shard& shard = ShardFor(word);
  absl::MutexLock lock(&shard.mutex);
  if (shard.words.size() >= shard_capacity_ && !shard.words.contains(word)) {
    shard.words.clear();
  }
  shard.words.try_emplace(word, ids.begin(), ids.end());
}

size_t WordCache::size() const {
  size_t total = 0;
  for (size_t i = 0; i < shard_count_; ++i) {
    absl::ReaderMutexLock lock(&shards_[i].mutex);
    total += shards_[i].words.size();
  }
  return total;
}

}  // namespace clipserve
