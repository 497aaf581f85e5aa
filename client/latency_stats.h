#ifndef CLIPSERVE_CLIENT_LATENCY_STATS_H_
#define CLIPSERVE_CLIENT_LATENCY_STATS_H_

#include <cstddef>
#include <cstdint>
#include <map>

namespace clipserve {

// Latency percentiles for clip_client bench, in memory bounded however long it runs.

struct LatencySummary {
  double p50 = 0, p90 = 0, p99 = 0, max = 0;
};

// Latencies in milliseconds, counted in buckets one microsecond wide up to 2.048 ms
// and 1/1024 of their value wide above (below 0.1%), each keeping its smallest and
// largest sample. A bench of any length then holds at most a few tens of thousands of
// buckets, where a list of samples grew by 8 bytes a request (a day of cached texts at
// 20,000 requests/s: 14 GB). Not thread-safe: one per caller, merged at the end.
class LatencyHistogram {
 public:
  // Negative or NaN values count as 0.
  void Add(double ms);
  void Merge(const LatencyHistogram& other);
  int64_t count() const { return count_; }
  size_t num_buckets() const { return buckets_.size(); }

  // The p-th percentile (0 <= p <= 100) by the nearest-rank method, to the bucket: the
  // largest sample in the bucket of the smallest sample with at least p% of the samples
  // at or below it. So the result is always a sample, grows with p (p50 <= p90 <= p99
  // <= max), and is the exact nearest rank when no other sample shares its bucket,
  // otherwise above it by less than the bucket's width. p <= 0 gives the minimum, an
  // empty histogram 0.
  double Percentile(double p) const;
  LatencySummary Summarize() const;

 private:
  struct Bucket {
    int64_t count = 0;
    double min = 0, max = 0;
  };
  static int64_t BucketOf(double ms);

  std::map<int64_t, Bucket> buckets_;
  int64_t count_ = 0;
};

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_LATENCY_STATS_H_
