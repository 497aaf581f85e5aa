#include "client/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

LatencyHistogram Of(const std::vector<double>& values) {
  LatencyHistogram histogram;
  for (double value : values) histogram.Add(value);
  return histogram;
}

TEST(LatencyHistogramTest, NearestRankOnOneToHundred) {
  std::vector<double> values;
  for (int i = 1; i <= 100; ++i) values.push_back(i);
  const LatencyHistogram histogram = Of(values);
  EXPECT_EQ(histogram.count(), 100);
  EXPECT_EQ(histogram.Percentile(50), 50);
  EXPECT_EQ(histogram.Percentile(90), 90);
  EXPECT_EQ(histogram.Percentile(99), 99);
  EXPECT_EQ(histogram.Percentile(100), 100);
  EXPECT_EQ(histogram.Percentile(0), 1);
  EXPECT_EQ(histogram.Percentile(0.5), 1);
  EXPECT_EQ(histogram.Percentile(50.5), 51);
}

TEST(LatencyHistogramTest, SmallSamples) {
  EXPECT_EQ(Of({}).Percentile(50), 0);
  EXPECT_EQ(Of({7}).Percentile(50), 7);
  EXPECT_EQ(Of({7}).Percentile(99), 7);
  // Ten values: p90 is the 9th (0.9 * 10 = 9 exactly, no floating-point slip to 10).
  const LatencyHistogram ten = Of({10, 9, 8, 7, 6, 5, 4, 3, 2, 1});
  EXPECT_EQ(ten.Percentile(90), 9);
  EXPECT_EQ(ten.Percentile(99), 10);
  EXPECT_EQ(ten.Percentile(50), 5);
  // Twenty, as `bench --requests 20` produces.
  std::vector<double> twenty;
  for (int i = 1; i <= 20; ++i) twenty.push_back(i * 10);
  EXPECT_EQ(Of(twenty).Percentile(50), 100);
  EXPECT_EQ(Of(twenty).Percentile(90), 180);
  EXPECT_EQ(Of(twenty).Percentile(99), 200);
}

TEST(LatencyHistogramTest, PercentilesAreSamplesWithinABucketOfTheExactRank) {
  std::mt19937 rng(42);
  std::lognormal_distribution<double> latency(3.0, 1.5);
  for (int n : {1, 2, 3, 19, 20, 101, 1000, 100000}) {
    std::vector<double> samples;
    for (int i = 0; i < n; ++i) samples.push_back(latency(rng));
    const LatencyHistogram histogram = Of(samples);
    std::sort(samples.begin(), samples.end());
    const LatencySummary s = histogram.Summarize();
    EXPECT_LE(s.p50, s.p90) << n;
    EXPECT_LE(s.p90, s.p99) << n;
    EXPECT_LE(s.p99, s.max) << n;
    EXPECT_EQ(s.max, samples.back()) << n;
    EXPECT_EQ(histogram.Percentile(0), samples.front()) << n;
    for (int64_t per_mille : {10, 500, 900, 990, 999}) {
      const double p = per_mille / 10.0;
      const double got = histogram.Percentile(p);
      EXPECT_TRUE(std::binary_search(samples.begin(), samples.end(), got))
          << "percentiles are samples";
      const size_t rank = static_cast<size_t>((per_mille * n + 999) / 1000);
      const double exact = samples[std::max<size_t>(rank, 1) - 1];
      EXPECT_GE(got, exact) << n << " p" << p;
      EXPECT_LE(got, exact * (1 + 1.0 / 1024) + 0.001) << n << " p" << p;
    }
  }
}

TEST(LatencyHistogramTest, MemoryStaysBoundedOverMillionsOfSamples) {
  // Two million distinct latencies from 10 us to 10 s: a list would hold 16 MB; the
  // buckets number at most 2048 (below 2.048 ms) plus 1024 per doubling above.
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> log_ms(-2, 4);
  LatencyHistogram histogram;
  for (int i = 0; i < 2'000'000; ++i) histogram.Add(std::pow(10.0, log_ms(rng)));
  EXPECT_EQ(histogram.count(), 2'000'000);
  EXPECT_LE(histogram.num_buckets(), 2048 + 1024 * 13);
  EXPECT_NEAR(histogram.Percentile(50), 10, 0.2);
}

TEST(LatencyHistogramTest, MergeIsTheUnion) {
  LatencyHistogram a = Of({1, 2, 3});
  a.Merge(Of({4, 5, 6, 7}));
  a.Merge(LatencyHistogram());
  EXPECT_EQ(a.count(), 7);
  EXPECT_EQ(a.Percentile(50), 4);
  EXPECT_EQ(a.Percentile(0), 1);
  EXPECT_EQ(a.Percentile(100), 7);
}

TEST(LatencyHistogramTest, NegativeAndNanCountAsZero) {
  const LatencyHistogram histogram =
      Of({-5, std::numeric_limits<double>::quiet_NaN(), 3});
  EXPECT_EQ(histogram.count(), 3);
  EXPECT_EQ(histogram.Percentile(0), 0);
  EXPECT_EQ(histogram.Percentile(100), 3);
}

TEST(LatencyHistogramTest, EmptyIsAllZero) {
  const LatencySummary s = LatencyHistogram().Summarize();
  EXPECT_EQ(s.p50, 0);
  EXPECT_EQ(s.max, 0);
}

}  // namespace
}  // namespace clipserve
