#include "server/tokenizer/word_cache.h"

#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace clipserve {
namespace {

using ::testing::ElementsAre;

// The ids a test stores for `word`: derived from it, so any mix-up shows.
std::vector<int32_t> IdsFor(const std::string& word) {
  return {static_cast<int32_t>(word.size()), static_cast<int32_t>(word[0]),
          static_cast<int32_t>(std::hash<std::string>()(word) & 0xFFFF)};
}

TEST(WordCacheTest, LookupAppendsWhatWasInserted) {
  WordCache cache(WordCache::Options{});
  std::vector<int32_t> ids = {7};
  EXPECT_FALSE(cache.Lookup("photo", &ids));
  EXPECT_THAT(ids, ElementsAre(7));
  const std::vector<int32_t> stored = {1125, 539};
  cache.Insert("photo", stored);
  EXPECT_TRUE(cache.Lookup("photo", &ids));
  EXPECT_THAT(ids, ElementsAre(7, 1125, 539));
  EXPECT_EQ(cache.size(), 1u);
}

TEST(WordCacheTest, CapacityZeroDisablesIt) {
  WordCache::Options options;
  options.capacity = 0;
  WordCache cache(options);
  const std::vector<int32_t> stored = {1};
  cache.Insert("a", stored);
  std::vector<int32_t> ids;
  EXPECT_FALSE(cache.Lookup("a", &ids));
  EXPECT_EQ(cache.size(), 0u);
}

TEST(WordCacheTest, LongWordsAreNotCached) {
  WordCache::Options options;
  options.max_word_bytes = 8;
  WordCache cache(options);
  const std::vector<int32_t> stored = {1};
  cache.Insert("12345678", stored);
  cache.Insert("123456789", stored);
  std::vector<int32_t> ids;
  EXPECT_TRUE(cache.Lookup("12345678", &ids));
  EXPECT_FALSE(cache.Lookup("123456789", &ids));
  EXPECT_EQ(cache.size(), 1u);
}

TEST(WordCacheTest, NeverHoldsMoreThanItsCapacity) {
  WordCache::Options options;
  options.capacity = 100;
  options.shards = 4;
  WordCache cache(options);
  for (int i = 0; i < 10000; ++i) {
    const std::string word = absl::StrCat("w", i);
    cache.Insert(word, IdsFor(word));
    ASSERT_LE(cache.size(), 100u);
  }
  EXPECT_GT(cache.size(), 0u);
  // The last word inserted is always there.
  std::vector<int32_t> ids;
  EXPECT_TRUE(cache.Lookup("w9999", &ids));
  EXPECT_EQ(ids, IdsFor("w9999"));
}

TEST(WordCacheTest, ConcurrentUseKeepsEntriesIntactAndBounded) {
  WordCache::Options options;
  options.capacity = 64;  // small, so shards are emptied while others read them
  WordCache cache(options);
  constexpr int kThreads = 8;
  std::vector<std::thread> threads;
  std::vector<int> wrong(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&cache, &wrong, t] {
      std::mt19937 rng(1234 + t);
      std::uniform_int_distribution<int> pick(0, 500);
      for (int i = 0; i < 20000; ++i) {
        const std::string word = absl::StrCat("word", pick(rng));
        std::vector<int32_t> ids;
        if (cache.Lookup(word, &ids)) {
          if (ids != IdsFor(word)) ++wrong[t];
        } else {
          cache.Insert(word, IdsFor(word));
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(wrong[t], 0) << "thread " << t;
  EXPECT_LE(cache.size(), 64u);
}

}  // namespace
}  // namespace clipserve
