#include "client/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace clipserve {

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  if (!(p > 0)) return sorted.front();
  if (p >= 100) return sorted.back();
  // Nearest rank: ceil(p / 100 * n), 1-based. Rounding p / 100 * n first keeps exact
  // products such as 0.9 * 10 from landing just above an integer.
  const double n = static_cast<double>(sorted.size());
  const double rank = std::ceil(std::round(p / 100.0 * n * 1e9) / 1e9);
  const size_t index = static_cast<size_t>(std::max(1.0, rank)) - 1;
  return sorted[std::min(index, sorted.size() - 1)];
}

LatencySummary SummarizeLatencies(std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  LatencySummary summary;
  summary.p50 = Percentile(samples, 50);
  summary.p90 = Percentile(samples, 90);
  summary.p99 = Percentile(samples, 99);
  summary.max = samples.empty() ? 0 : samples.back();
  return summary;
}

}  // namespace clipserve
