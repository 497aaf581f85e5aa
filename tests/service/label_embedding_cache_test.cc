#include "server/service/label_embedding_cache.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

LabelEmbeddingCache::Embedding Value(float v) {
  return std::make_shared<const std::vector<float>>(2, v);
}

TEST(LabelEmbeddingCacheTest, KeysDoNotCollide) {
  const std::string one = LabelEmbeddingCache::TemplatesKey({"a {}", "b"});
  const std::string other = LabelEmbeddingCache::TemplatesKey({"a {}b"});
  EXPECT_NE(one, other);
  EXPECT_NE(LabelEmbeddingCache::Key(one, "x"), LabelEmbeddingCache::Key(other, "x"));
  EXPECT_NE(LabelEmbeddingCache::Key(LabelEmbeddingCache::TemplatesKey({"1:a"}), "b"),
            LabelEmbeddingCache::Key(LabelEmbeddingCache::TemplatesKey({"1"}), "a1:b"));
  EXPECT_NE(LabelEmbeddingCache::TemplatesKey({"a", "b"}),
            LabelEmbeddingCache::TemplatesKey({"b", "a"}));
}

// Entries are counted, not sized: a key must not grow with what the client sent.
TEST(LabelEmbeddingCacheTest, KeysAreDigestsWhateverTheTextsLength) {
  const std::vector<std::string> templates(256, std::string(16384, 't'));
  const std::string templates_key = LabelEmbeddingCache::TemplatesKey(templates);
  EXPECT_EQ(templates_key.size(), 32u);
  EXPECT_EQ(LabelEmbeddingCache::Key(templates_key, std::string(16384, 'l')).size(), 32u);
  EXPECT_EQ(LabelEmbeddingCache::TemplatesKey({}).size(), 32u);
}

TEST(LabelEmbeddingCacheTest, EvictsTheLeastRecentlyUsed) {
  LabelEmbeddingCache cache(2);
  cache.Insert("a", Value(1));
  cache.Insert("b", Value(2));
  ASSERT_NE(cache.Lookup("a"), nullptr);  // "b" is now the oldest
  cache.Insert("c", Value(3));
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.Lookup("b"), nullptr);
  ASSERT_NE(cache.Lookup("a"), nullptr);
  EXPECT_EQ((*cache.Lookup("c"))[0], 3.0f);
  EXPECT_EQ(cache.hits(), 3);
  EXPECT_EQ(cache.misses(), 1);
}

TEST(LabelEmbeddingCacheTest, InsertReplacesAndRefreshes) {
  LabelEmbeddingCache cache(2);
  cache.Insert("a", Value(1));
  cache.Insert("b", Value(2));
  const LabelEmbeddingCache::Embedding old = cache.Lookup("a");
  cache.Insert("a", Value(10));
  cache.Insert("c", Value(3));  // evicts "b", not the refreshed "a"
  EXPECT_EQ((*cache.Lookup("a"))[0], 10.0f);
  EXPECT_EQ(cache.Lookup("b"), nullptr);
  EXPECT_EQ((*old)[0], 1.0f);  // an earlier result stays valid
}

TEST(LabelEmbeddingCacheTest, ZeroCapacityKeepsNothing) {
  LabelEmbeddingCache cache(0);
  cache.Insert("a", Value(1));
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.Lookup("a"), nullptr);
}

TEST(LabelEmbeddingCacheTest, ConcurrentUseStaysBounded) {
  LabelEmbeddingCache cache(16);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&cache, t] {
      for (int i = 0; i < 2000; ++i) {
        const std::string key = absl::StrCat((i * 7 + t) % 40);
        if (cache.Lookup(key) == nullptr) cache.Insert(key, Value(static_cast<float>(i)));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(cache.size(), 16u);
  EXPECT_EQ(cache.hits() + cache.misses(), 8000);
}

}  // namespace
}  // namespace clipserve
