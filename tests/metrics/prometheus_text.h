#ifndef CLIPSERVE_TESTS_METRICS_PROMETHEUS_TEXT_H_
#define CLIPSERVE_TESTS_METRICS_PROMETHEUS_TEXT_H_

#include <limits>
#include <optional>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace clipserve::testing {

// The value of one sample in a Prometheus text exposition, found by its exact series
// as the serializer writes it: the name, then the labels sorted by name, e.g.
// `clipserve_requests_total{code="OK",rpc="EmbedText"}` or
// `clipserve_batch_size_bucket{modality="text",le="2"}`. nullopt when absent.
inline std::optional<double> FindSample(absl::string_view exposition,
                                        absl::string_view series) {
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, series) || !absl::ConsumePrefix(&rest, " ")) continue;
    // A sample may end with a timestamp; prometheus-cpp writes none.
    absl::string_view value = rest.substr(0, rest.find(' '));
    double out = 0;
    if (value == "+Inf") return std::numeric_limits<double>::infinity();
    if (!absl::SimpleAtod(value, &out)) return std::nullopt;
    return out;
  }
  return std::nullopt;
}

}  // namespace clipserve::testing

#endif  // CLIPSERVE_TESTS_METRICS_PROMETHEUS_TEXT_H_
