#ifndef CLIPSERVE_SERVER_MODEL_VALUE_RANGE_H_
#define CLIPSERVE_SERVER_MODEL_VALUE_RANGE_H_

namespace clipserve {

// The smallest and the largest value of a tensor, both finite.
struct ValueRange {
  float min;
  float max;
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_VALUE_RANGE_H_
