#ifndef CLIPSERVE_SERVER_COMMON_GRPC_MILLIS_H_
#define CLIPSERVE_SERVER_COMMON_GRPC_MILLIS_H_

#include <algorithm>
#include <cstdint>
#include <limits>

#include "absl/time/time.h"

namespace clipserve {

// A positive duration as one of gRPC's int millisecond channel arguments: INT_MAX,
// gRPC's "never", for an infinite duration or one too long to say otherwise; rounded up
// to whole milliseconds and at least 1 otherwise, so that a short duration never turns
// into 0, which some arguments read as "off".
inline int GrpcMillis(absl::Duration duration) {
  constexpr int64_t kNever = std::numeric_limits<int>::max();
  if (duration == absl::InfiniteDuration()) return static_cast<int>(kNever);
  return static_cast<int>(std::clamp<int64_t>(
      absl::ToInt64Milliseconds(absl::Ceil(duration, absl::Milliseconds(1))), 1, kNever));
}

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_GRPC_MILLIS_H_
