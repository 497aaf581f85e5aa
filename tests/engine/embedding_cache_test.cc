#include "server/engine/embedding_cache.h"

#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

EmbeddingCache::Value Row(int floats, float fill = 1.0f) {
  auto value = std::make_shared<CachedEmbedding>();
  value->values.assign(floats, fill);
  return value;
}

// What one entry with a 32-byte key and `floats` floats is charged.
size_t EntryBytes(int floats) {
  return 32 + floats * sizeof(float) + EmbeddingCache::kEntryOverheadBytes;
}

std::string Key(int i) {
  EmbeddingCacheKey key;
  return key.Add(i).Finish();
}

TEST(EmbeddingCacheKeyTest, IsSha256OverLengthPrefixedFields) {
  EmbeddingCacheKey key;
  const std::string digest = key.Add("ab").Finish();
  ASSERT_EQ(digest.size(), 32u);
  // Field boundaries matter: ("ab", "c") and ("a", "bc") differ.
  EXPECT_NE(key.Add("ab").Add("c").Finish(), key.Add("a").Add("bc").Finish());
  // Finish starts the builder afresh.
  EXPECT_EQ(key.Add("ab").Finish(), digest);
  // An integer field is not its decimal text.
  EXPECT_NE(key.Add(int64_t{1}).Finish(), key.Add("1").Finish());
  // The same fields give the same key from another builder.
  EmbeddingCacheKey other;
  EXPECT_EQ(other.Add("ab").Finish(), digest);
}

TEST(EmbeddingCacheKeyTest, MatchesSha256OfTheEncodingByHand) {
  // sha256(le64(3) || "abc"), computed with Python's hashlib.
  EmbeddingCacheKey key;
  const std::string digest = key.Add("abc").Finish();
  const std::string expected_hex =
      "ce91dc5eec0139adf091900d225971d6ad246a845bad791b5693a9d0d55dd391";
  std::string hex;
  for (unsigned char c : digest) {
    static const char* kDigits = "0123456789abcdef";
    hex += kDigits[c >> 4];
    hex += kDigits[c & 15];
  }
  EXPECT_EQ(hex, expected_hex);
}

TEST(EmbeddingCacheTest, LookupFindsWhatWasInsertedAndCounts) {
  EmbeddingCache cache(1 << 20);
  EXPECT_EQ(cache.Lookup(Key(1)), nullptr);
  cache.Insert(Key(1), Row(4, 2.0f));
  auto found = cache.Lookup(Key(1));
  ASSERT_NE(found, nullptr);
  EXPECT_EQ(found->values, std::vector<float>(4, 2.0f));
  const EmbeddingCache::Stats stats = cache.stats();
  EXPECT_EQ(stats.hits, 1);
  EXPECT_EQ(stats.misses, 1);
  EXPECT_EQ(stats.entries, 1);
  EXPECT_EQ(stats.bytes, static_cast<int64_t>(EntryBytes(4)));
}

TEST(EmbeddingCacheTest, EvictsLeastRecentlyUsedToStayWithinItsBytes) {
  EmbeddingCache cache(3 * EntryBytes(8));
  for (int i = 0; i < 3; ++i) cache.Insert(Key(i), Row(8));
  ASSERT_NE(cache.Lookup(Key(0)), nullptr);  // 0 is now the most recent
  cache.Insert(Key(3), Row(8));              // evicts 1, the least recent
  EXPECT_NE(cache.Lookup(Key(0)), nullptr);
  EXPECT_EQ(cache.Lookup(Key(1)), nullptr);
  EXPECT_NE(cache.Lookup(Key(2)), nullptr);
  EXPECT_NE(cache.Lookup(Key(3)), nullptr);
  const EmbeddingCache::Stats stats = cache.stats();
  EXPECT_EQ(stats.evictions, 1);
  EXPECT_EQ(stats.entries, 3);
  EXPECT_LE(stats.bytes, static_cast<int64_t>(cache.capacity_bytes()));
}

TEST(EmbeddingCacheTest, ReplacingAKeyChargesOnlyTheNewValue) {
  EmbeddingCache cache(1 << 20);
  cache.Insert(Key(1), Row(4));
  cache.Insert(Key(1), Row(16, 3.0f));
  EXPECT_EQ(cache.stats().entries, 1);
  EXPECT_EQ(cache.stats().bytes, static_cast<int64_t>(EntryBytes(16)));
  EXPECT_EQ(cache.Lookup(Key(1))->values[0], 3.0f);
}

TEST(EmbeddingCacheTest, AnEntryLargerThanTheWholeCacheIsNotKept) {
  EmbeddingCache cache(EntryBytes(8));
  cache.Insert(Key(1), Row(8));
  cache.Insert(Key(2), Row(9));
  EXPECT_NE(cache.Lookup(Key(1)), nullptr);
  EXPECT_EQ(cache.Lookup(Key(2)), nullptr);
}

TEST(EmbeddingCacheTest, CapacityZeroKeepsNothing) {
  EmbeddingCache cache(0);
  EXPECT_FALSE(cache.enabled());
  cache.Insert(Key(1), Row(1));
  EXPECT_EQ(cache.Lookup(Key(1)), nullptr);
  EXPECT_EQ(cache.stats().entries, 0);
}

TEST(EmbeddingCacheTest, AValueOutlivesItsEviction) {
  EmbeddingCache cache(EntryBytes(4));
  cache.Insert(Key(1), Row(4, 5.0f));
  auto held = cache.Lookup(Key(1));
  cache.Insert(Key(2), Row(4));  // evicts key 1
  EXPECT_EQ(cache.Lookup(Key(1)), nullptr);
  EXPECT_EQ(held->values, std::vector<float>(4, 5.0f));
}

TEST(EmbeddingCacheTest, ConcurrentUseStaysBoundedAndConsistent) {
  const size_t capacity = 50 * EntryBytes(4);
  EmbeddingCache cache(capacity);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&cache, t] {
      for (int i = 0; i < 2000; ++i) {
        const int k = (i * 7 + t) % 200;
        if (auto found = cache.Lookup(Key(k)); found != nullptr) {
          EXPECT_EQ(found->values, std::vector<float>(4, float(k)));
        } else {
          cache.Insert(Key(k), Row(4, float(k)));
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const EmbeddingCache::Stats stats = cache.stats();
  EXPECT_EQ(stats.hits + stats.misses, 4 * 2000);
  EXPECT_LE(stats.bytes, static_cast<int64_t>(capacity));
  EXPECT_EQ(stats.bytes, stats.entries * static_cast<int64_t>(EntryBytes(4)));
}

}  // namespace
}  // namespace clipserve
