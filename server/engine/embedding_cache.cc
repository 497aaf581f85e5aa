#include "server/engine/embedding_cache.h"

#include <openssl/evp.h>

#include <utility>

#include "glog/logging.h"

namespace clipserve {

size_t EmbeddingCache::BytesOf(const std::string& key, const CachedEmbedding& value) {
  return key.size() + value.values.size() * sizeof(float) + kEntryOverheadBytes;
}

EmbeddingCache::Value EmbeddingCache::Lookup(absl::string_view key) {
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

void EmbeddingCache::Insert(std::string key, Value value) {
  if (capacity_bytes_ == 0 || value == nullptr) return;
  const size_t bytes = BytesOf(key, *value);
  if (bytes > capacity_bytes_) return;
  absl::MutexLock lock(&mu_);
  if (auto it = index_.find(key); it != index_.end()) {
    bytes_ -= it->second->bytes;
    it->second->value = std::move(value);
    it->second->bytes = bytes;
    bytes_ += bytes;
    entries_.splice(entries_.begin(), entries_, it->second);
  } else {
    entries_.push_front(Entry{std::move(key), std::move(value), bytes});
    index_.emplace(entries_.front().key, entries_.begin());
    bytes_ += bytes;
  }
  EvictToFit();
}

void EmbeddingCache::EvictToFit() {
  while (bytes_ > capacity_bytes_ && !entries_.empty()) {
    const Entry& last = entries_.back();
    bytes_ -= last.bytes;
    index_.erase(last.key);
    entries_.pop_back();
    ++stats_.evictions;
  }
}

EmbeddingCache::Stats EmbeddingCache::stats() const {
  absl::MutexLock lock(&mu_);
  Stats stats = stats_;
  stats.entries = static_cast<int64_t>(entries_.size());
  stats.bytes = static_cast<int64_t>(bytes_);
  return stats;
}

struct EmbeddingCacheKey::Context {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~Context() { EVP_MD_CTX_free(ctx); }
  void Reset() { CHECK_EQ(EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr), 1); }
  void Update(const void* data, size_t size) {
    CHECK_EQ(EVP_DigestUpdate(ctx, data, size), 1);
  }
};

EmbeddingCacheKey::EmbeddingCacheKey() : context_(std::make_unique<Context>()) {
  CHECK(context_->ctx != nullptr) << "out of memory for a SHA-256 context";
  context_->Reset();
}

EmbeddingCacheKey::~EmbeddingCacheKey() = default;

namespace {

// Eight bytes, least significant first, whatever the host's byte order.
void PutLittleEndian64(uint64_t value, unsigned char out[8]) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(value >> (8 * i));
}

}  // namespace

EmbeddingCacheKey& EmbeddingCacheKey::Add(absl::string_view field) {
  unsigned char size[8];
  PutLittleEndian64(field.size(), size);
  context_->Update(size, sizeof(size));
  context_->Update(field.data(), field.size());
  return *this;
}

EmbeddingCacheKey& EmbeddingCacheKey::Add(int64_t field) {
  unsigned char value[8];
  PutLittleEndian64(static_cast<uint64_t>(field), value);
  return Add(absl::string_view(reinterpret_cast<const char*>(value), sizeof(value)));
}

std::string EmbeddingCacheKey::Finish() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  CHECK_EQ(EVP_DigestFinal_ex(context_->ctx, digest, &size), 1);
  context_->Reset();
  return std::string(reinterpret_cast<const char*>(digest), size);
}

}  // namespace clipserve
