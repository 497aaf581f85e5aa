#ifndef CLIPSERVE_CLIENT_LATENCY_STATS_H_
#define CLIPSERVE_CLIENT_LATENCY_STATS_H_

#include <vector>

namespace clipserve {

// Latency percentiles for clip_client bench. Pure; thread-safe.

// The p-th percentile (0 <= p <= 100) of `sorted` (ascending) by the nearest-rank
// method: the smallest value with at least p% of the values at or below it, so the
// result is always one of the samples and grows with p (p50 <= p90 <= p99 <= max).
// p <= 0 gives the minimum; an empty list gives 0.
double Percentile(const std::vector<double>& sorted, double p);

struct LatencySummary {
  double p50 = 0, p90 = 0, p99 = 0, max = 0;
};

// The percentiles of `samples` in any order (0 for all when empty).
LatencySummary SummarizeLatencies(std::vector<double> samples);

}  // namespace clipserve

#endif  // CLIPSERVE_CLIENT_LATENCY_STATS_H_
