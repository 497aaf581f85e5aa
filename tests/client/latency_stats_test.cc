#include "client/latency_stats.h"

#include <algorithm>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

TEST(PercentileTest, NearestRankOnOneToHundred) {
  std::vector<double> values;
  for (int i = 1; i <= 100; ++i) values.push_back(i);
  EXPECT_EQ(Percentile(values, 50), 50);
  EXPECT_EQ(Percentile(values, 90), 90);
  EXPECT_EQ(Percentile(values, 99), 99);
  EXPECT_EQ(Percentile(values, 100), 100);
  EXPECT_EQ(Percentile(values, 0), 1);
  EXPECT_EQ(Percentile(values, 0.5), 1);
  EXPECT_EQ(Percentile(values, 50.5), 51);
}

TEST(PercentileTest, SmallSamples) {
  EXPECT_EQ(Percentile({}, 50), 0);
  EXPECT_EQ(Percentile({7}, 50), 7);
  EXPECT_EQ(Percentile({7}, 99), 7);
  // Ten values: p90 is the 9th (0.9 * 10 = 9 exactly, no floating-point slip to 10).
  const std::vector<double> ten = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(Percentile(ten, 90), 9);
  EXPECT_EQ(Percentile(ten, 99), 10);
  EXPECT_EQ(Percentile(ten, 50), 5);
  // Twenty, as `bench --requests 20` produces.
  std::vector<double> twenty;
  for (int i = 1; i <= 20; ++i) twenty.push_back(i * 10);
  EXPECT_EQ(Percentile(twenty, 50), 100);
  EXPECT_EQ(Percentile(twenty, 90), 180);
  EXPECT_EQ(Percentile(twenty, 99), 200);
}

TEST(SummarizeLatenciesTest, UnsortedInputAndOrderedPercentiles) {
  std::mt19937 rng(42);
  std::lognormal_distribution<double> latency(3.0, 0.7);
  for (int n : {1, 2, 3, 19, 20, 101, 1000}) {
    std::vector<double> samples;
    for (int i = 0; i < n; ++i) samples.push_back(latency(rng));
    const LatencySummary s = SummarizeLatencies(samples);
    EXPECT_LE(s.p50, s.p90) << n;
    EXPECT_LE(s.p90, s.p99) << n;
    EXPECT_LE(s.p99, s.max) << n;
    EXPECT_EQ(s.max, *std::max_element(samples.begin(), samples.end())) << n;
    EXPECT_NE(std::find(samples.begin(), samples.end(), s.p50), samples.end())
        << "percentiles are samples";
  }
}

TEST(SummarizeLatenciesTest, EmptyIsAllZero) {
  const LatencySummary s = SummarizeLatencies({});
  EXPECT_EQ(s.p50, 0);
  EXPECT_EQ(s.max, 0);
}

}  // namespace
}  // namespace clipserve
