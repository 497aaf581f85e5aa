#include "server/common/lru_cache.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

// Cost: the string value's length (a byte-bounded cache in miniature).
size_t Length(const std::string&, const std::string& value) { return value.size(); }
size_t One(const std::string&, const std::string&) { return 1; }

std::shared_ptr<const std::string> V(std::string s) {
  return std::make_shared<const std::string>(std::move(s));
}

TEST(LruCacheTest, EvictsTheLeastRecentlyUsedUntilTheCostFits) {
  LruCache<std::string> cache(10, &Length);
  cache.Insert("a", V("aaaa"));
  cache.Insert("b", V("bbbb"));
  ASSERT_NE(cache.Lookup("a"), nullptr);  // "a" is now the most recently used
  cache.Insert("c", V("cccc"));           // 12 > 10: "b" goes
  EXPECT_EQ(cache.Lookup("b"), nullptr);
  EXPECT_EQ(*cache.Lookup("a"), "aaaa");
  EXPECT_EQ(*cache.Lookup("c"), "cccc");
  const auto stats = cache.stats();
  EXPECT_EQ(stats.entries, 2);
  EXPECT_EQ(stats.cost, 8);
  EXPECT_EQ(stats.evictions, 1);
  EXPECT_EQ(stats.hits, 3);
  EXPECT_EQ(stats.misses, 1);
}

TEST(LruCacheTest, OneLargeEntryCanEvictSeveral) {
  LruCache<std::string> cache(10, &Length);
  for (const char* k : {"a", "b", "c"}) cache.Insert(k, V("xx"));
  cache.Insert("big", V("123456789"));
  EXPECT_EQ(cache.stats().entries, 1);
  EXPECT_EQ(cache.stats().evictions, 3);
  EXPECT_NE(cache.Lookup("big"), nullptr);
}

TEST(LruCacheTest, ReplacingAKeyRechargesItsCostAndRefreshesIt) {
  LruCache<std::string> cache(10, &Length);
  cache.Insert("a", V("aa"));
  cache.Insert("b", V("bb"));
  cache.Insert("a", V("aaaaaa"));  // 8 in all; "a" most recent
  EXPECT_EQ(cache.stats().cost, 8);
  cache.Insert("c", V("cc"));  // 10: still fits
  EXPECT_EQ(cache.stats().entries, 3);
  cache.Insert("d", V("d"));  // 11: the least recent, "b", goes
  EXPECT_EQ(cache.Lookup("b"), nullptr);
  EXPECT_EQ(*cache.Lookup("a"), "aaaaaa");
}

TEST(LruCacheTest, KeepsNothingTooLargeNullOrAtCapacityZero) {
  LruCache<std::string> small(3, &Length);
  small.Insert("big", V("abcd"));
  small.Insert("null", nullptr);
  EXPECT_EQ(small.stats().entries, 0);
  LruCache<std::string> off(0, &One);
  off.Insert("a", V("a"));
  EXPECT_EQ(off.Lookup("a"), nullptr);
  EXPECT_EQ(off.stats().misses, 1);
}

TEST(LruCacheTest, ALookupResultOutlivesItsEviction) {
  LruCache<std::string> cache(1, &One);
  cache.Insert("a", V("kept"));
  const auto held = cache.Lookup("a");
  cache.Insert("b", V("other"));
  EXPECT_EQ(cache.Lookup("a"), nullptr);
  EXPECT_EQ(*held, "kept");
}

TEST(LruCacheTest, ConcurrentUseKeepsTheBound) {
  LruCache<std::string> cache(16, &One);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&cache, t] {
      for (int i = 0; i < 2000; ++i) {
        const std::string key = std::to_string((i * 7 + t) % 40);
        if (cache.Lookup(key) == nullptr) cache.Insert(key, V(key));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const auto stats = cache.stats();
  EXPECT_LE(stats.entries, 16);
  EXPECT_EQ(stats.cost, stats.entries);
  EXPECT_EQ(stats.hits + stats.misses, 4 * 2000);
}

}  // namespace
}  // namespace clipserve
