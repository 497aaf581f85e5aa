#include "server/engine/embedding_cache.h"

#include <openssl/evp.h>

#include <utility>

#include "glog/logging.h"

namespace clipserve {

size_t EmbeddingCache::BytesOf(const std::string& key, const CachedEmbedding& value) {
  return key.size() + value.values.size() * sizeof(float) + kEntryOverheadBytes;
}

EmbeddingCache::Stats EmbeddingCache::stats() const {
  const LruCache<CachedEmbedding>::Stats lru = lru_.stats();
  Stats stats;
  stats.hits = lru.hits;
  stats.misses = lru.misses;
  stats.evictions = lru.evictions;
  stats.entries = lru.entries;
  stats.bytes = lru.cost;
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
