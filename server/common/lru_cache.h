#ifndef CLIPSERVE_SERVER_COMMON_LRU_CACHE_H_
#define CLIPSERVE_SERVER_COMMON_LRU_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace clipserve {

// A least-recently-used map from string keys to shared, immutable values of type T,
// bounded by a total cost: each entry costs cost(key, value) units (its bytes, or 1 to
// bound the entry count), and an Insert that takes the total past `capacity` evicts
// entries from the least recently used end until it fits. Capacity 0 disables the
// cache (every Lookup misses, Insert keeps nothing). A Lookup result stays valid after
// its entry is evicted.
//
// The one LRU behind the server's caches (EmbeddingCache, LabelEmbeddingCache), which
// add their own keys and sizing. Thread-safe; each call holds one mutex for a hash
// lookup and a list splice (plus the evictions it causes), and never blocks otherwise.
template <typename T>
class LruCache {
 public:
  using Value = std::shared_ptr<const T>;
  // What an entry costs, in the capacity's unit. Must not throw.
  using CostFn = size_t (*)(const std::string& key, const T& value);

  LruCache(size_t capacity, CostFn cost) : capacity_(capacity), cost_(cost) {}
  LruCache(const LruCache&) = delete;
  LruCache& operator=(const LruCache&) = delete;

  size_t capacity() const { return capacity_; }

  // The value under `key`, now the most recently used, or nullptr. Counts a hit or a
  // miss.
  Value Lookup(absl::string_view key) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it == index_.end()) {
      ++stats_.misses;
      return nullptr;
    }
    ++stats_.hits;
    entries_.splice(entries_.begin(), entries_, it->second);
    return it->second->value;
  }

  // Stores `value` under `key` as the most recently used entry (an earlier value for
  // the key is replaced), then evicts from the least recently used end until the total
  // cost fits. A null value, or one costing more than the whole capacity, is not kept.
  void Insert(std::string key, Value value) ABSL_LOCKS_EXCLUDED(mu_) {
    if (capacity_ == 0 || value == nullptr) return;
    const size_t cost = cost_(key, *value);
    if (cost > capacity_) return;
    absl::MutexLock lock(&mu_);
    if (auto it = index_.find(key); it != index_.end()) {
      cost_total_ -= it->second->cost;
      it->second->value = std::move(value);
      it->second->cost = cost;
      entries_.splice(entries_.begin(), entries_, it->second);
    } else {
      entries_.push_front(Entry{std::move(key), std::move(value), cost});
      index_.emplace(entries_.front().key, entries_.begin());
    }
    cost_total_ += cost;
    while (cost_total_ > capacity_ && !entries_.empty()) {
      const Entry& last = entries_.back();
      cost_total_ -= last.cost;
      index_.erase(last.key);
      entries_.pop_back();
      ++stats_.evictions;
    }
  }

  struct Stats {
    int64_t hits = 0;
    int64_t misses = 0;
    int64_t evictions = 0;
    int64_t entries = 0;
    int64_t cost = 0;  // total, in the capacity's unit
  };
  Stats stats() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    Stats stats = stats_;
    stats.entries = static_cast<int64_t>(entries_.size());
    stats.cost = static_cast<int64_t>(cost_total_);
    return stats;
  }

 private:
  struct Entry {
    std::string key;
    Value value;
    size_t cost = 0;
  };
  using List = std::list<Entry>;

  const size_t capacity_;
  const CostFn cost_;
  mutable absl::Mutex mu_;
  List entries_ ABSL_GUARDED_BY(mu_);  // most recently used first
  // Views into the keys held by entries_.
  absl::flat_hash_map<absl::string_view, typename List::iterator> index_
      ABSL_GUARDED_BY(mu_);
  size_t cost_total_ ABSL_GUARDED_BY(mu_) = 0;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_LRU_CACHE_H_
