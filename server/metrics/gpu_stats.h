#ifndef CLIPSERVE_SERVER_METRICS_GPU_STATS_H_
#define CLIPSERVE_SERVER_METRICS_GPU_STATS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace clipserve {

// One reading of a GPU's memory and load.
struct GpuSample {
  uint64_t memory_used_bytes = 0;
  uint64_t memory_total_bytes = 0;
  // Fraction of the last sample period (about a second, the driver's choice) during
  // which a kernel ran, in [0, 1]; nullopt where the driver does not report it (MIG
  // instances: NVML answers NOT_SUPPORTED there).
  std::optional<double> utilization;
};

// Where GPU readings come from: NVML in the server, a fake in tests.
class GpuStatsSource {
 public:
  virtual ~GpuStatsSource() = default;
  // Reads GPU `index` (NVML's numbering). UNAVAILABLE when the device cannot be read.
  // Thread-safe.
  virtual absl::StatusOr<GpuSample> Sample(int index) = 0;

  // NVML's index of the GPU at PCI address `pci_bus_id` ("0000:3b:00.0", as CUDA
  // reports it; hexadecimal, either case). NOT_FOUND when no GPU has that address,
  // UNAVAILABLE when it cannot be asked. Thread-safe.
  virtual absl::StatusOr<int> IndexOfPciBusId(const std::string& pci_bus_id) = 0;
};

// NVIDIA's management library (libnvidia-ml.so.1, installed with the driver, not the
// CUDA toolkit), loaded at run time so the same binary runs on machines without it.
// UNAVAILABLE when the library is missing or nvmlInit fails (no driver, no device).
//
// NVML numbers devices in PCI order and ignores CUDA_VISIBLE_DEVICES, so CUDA's
// device N is not always NVML's N: look it up by PCI address (IndexOfPciBusId).
absl::StatusOr<std::unique_ptr<GpuStatsSource>> OpenNvml();

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_METRICS_GPU_STATS_H_
