#include "client/latency_stats.h"

#include <algorithm>
#include <cmath>

#include "absl/numeric/bits.h"

namespace clipserve {

int64_t LatencyHistogram::BucketOf(double ms) {
  // Whole microseconds, at most 2^50 (35 years).
  const double us = std::isnan(ms) ? 0 : std::clamp(ms * 1000.0, 0.0, 0x1p50);
  const uint64_t value = static_cast<uint64_t>(us);
  constexpr int kSubBits = 10;  // 1024 buckets per power of two
  if (value < (uint64_t{2} << kSubBits)) return static_cast<int64_t>(value);
  // value >> shift lies in [1024, 2047]; each shift adds 1024 buckets after those below.
  const int shift = absl::bit_width(value) - (kSubBits + 1);
  return (static_cast<int64_t>(shift) << kSubBits) + static_cast<int64_t>(value >> shift);
}

void LatencyHistogram::Add(double ms) {
  if (!(ms > 0)) ms = 0;
  Bucket& bucket = buckets_[BucketOf(ms)];
  bucket.min = bucket.count == 0 ? ms : std::min(bucket.min, ms);
  bucket.max = bucket.count == 0 ? ms : std::max(bucket.max, ms);
  ++bucket.count;
  ++count_;
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  for (const auto& [index, theirs] : other.buckets_) {
    Bucket& mine = buckets_[index];
    mine.min = mine.count == 0 ? theirs.min : std::min(mine.min, theirs.min);
    mine.max = mine.count == 0 ? theirs.max : std::max(mine.max, theirs.max);
    mine.count += theirs.count;
  }
  count_ += other.count_;
}

double LatencyHistogram::Percentile(double p) const {
  if (count_ == 0) return 0;
  if (!(p > 0)) return buckets_.begin()->second.min;
  if (p >= 100) return buckets_.rbegin()->second.max;
  // Nearest rank: ceil(p / 100 * n), 1-based. Shrinking the product by a relative
  // 1e-12 first keeps exact products such as 0.9 * 10 from landing just above an
  // integer, at any count (an absolute rounding would fail past a few million).
  const double n = static_cast<double>(count_);
  const double rank = std::max(1.0, std::ceil(p / 100.0 * n * (1 - 1e-12)));
  int64_t below = 0;
  for (const auto& [index, bucket] : buckets_) {
    below += bucket.count;
    if (static_cast<double>(below) >= rank) return bucket.max;
  }
  return buckets_.rbegin()->second.max;
}

LatencySummary LatencyHistogram::Summarize() const {
  LatencySummary summary;
  summary.p50 = Percentile(50);
  summary.p90 = Percentile(90);
  summary.p99 = Percentile(99);
  summary.max = Percentile(100);
  return summary;
}

}  // namespace clipserve
