#ifndef CLIPSERVE_SERVER_METRICS_GPU_STATS_H_
#define CLIPSERVE_SERVER_METRICS_GPU_STATS_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

namespace clipserve {

// One reading of a GPU's memory and load.
struct GpuSample {
  uint64_t memory_used_bytes = 0;
  uint64_t memory_total_bytes = 0;
  // Fraction of the last sample period (about a second, the driver's choice) during
  // which a kernel ran, in [0, 1].
  double utilization = 0;
};

// Where GPU readings come from: NVML in the server, a fake in tests.
class GpuStatsSource {
 public:
  virtual ~GpuStatsSource() = default;
  // Reads GPU `index` (NVML's numbering). UNAVAILABLE when the device cannot be read.
  // Thread-safe.
  virtual absl::StatusOr<GpuSample> Sample(int index) = 0;
};

// NVIDIA's management library (libnvidia-ml.so.1, installed with the driver, not the
// CUDA toolkit), loaded at run time so the same binary runs on machines without it.
// UNAVAILABLE when the library is missing or nvmlInit fails (no driver, no device).
//
// NVML numbers devices in PCI order and ignores CUDA_VISIBLE_DEVICES; in a container
// that was given one GPU (Kubernetes' nvidia.com/gpu) both numberings agree.
absl::StatusOr<std::unique_ptr<GpuStatsSource>> OpenNvml();

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_METRICS_GPU_STATS_H_
