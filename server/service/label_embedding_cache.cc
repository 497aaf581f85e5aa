#include "server/service/label_embedding_cache.h"

#include <utility>

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

LabelEmbeddingCache::Embedding LabelEmbeddingCache::Lookup(absl::string_view key) {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it == index_.end()) {
    ++misses_;
    return nullptr;
  }
  ++hits_;
  entries_.splice(entries_.begin(), entries_, it->second);
  return it->second->second;
}

void LabelEmbeddingCache::Insert(std::string key, Embedding embedding) {
  if (capacity_ == 0) return;
  absl::MutexLock lock(&mu_);
  if (auto it = index_.find(key); it != index_.end()) {
    it->second->second = std::move(embedding);
    entries_.splice(entries_.begin(), entries_, it->second);
    return;
  }
  entries_.emplace_front(std::move(key), std::move(embedding));
  index_.emplace(entries_.front().first, entries_.begin());
  while (entries_.size() > capacity_) {
    index_.erase(entries_.back().first);
    entries_.pop_back();
  }
}

size_t LabelEmbeddingCache::size() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

int64_t LabelEmbeddingCache::hits() const {
  absl::MutexLock lock(&mu_);
  return hits_;
}

int64_t LabelEmbeddingCache::misses() const {
  absl::MutexLock lock(&mu_);
  return misses_;
}

}  // namespace clipserve
