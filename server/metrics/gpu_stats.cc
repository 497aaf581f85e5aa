#include "server/metrics/gpu_stats.h"

#include <dlfcn.h>

#include "absl/strings/str_cat.h"

namespace clipserve {
namespace {

// The few NVML declarations used, as nvml.h (CUDA toolkit) defines them. Every entry
// point used has kept its ABI since the R340 drivers (2014), when the _v2 PCI lookup
// arrived.
using NvmlReturn = int;                       // nvmlReturn_t; 0 is NVML_SUCCESS
constexpr NvmlReturn kNvmlErrorNotFound = 6;  // NVML_ERROR_NOT_FOUND
using NvmlDevice = struct NvmlDeviceOpaque*;
struct NvmlMemory {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
struct NvmlUtilization {
  unsigned int gpu;     // percent of time a kernel ran
  unsigned int memory;  // percent of time memory was read or written
};

class NvmlSource final : public GpuStatsSource {
 public:
  ~NvmlSource() override {
    if (shutdown_ != nullptr) shutdown_();
    if (library_ != nullptr) dlclose(library_);
  }

  static absl::StatusOr<std::unique_ptr<GpuStatsSource>> Open() {
    auto source = std::unique_ptr<NvmlSource>(new NvmlSource());
    source->library_ = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (source->library_ == nullptr) {
      return absl::UnavailableError(absl::StrCat("NVML not available: ", dlerror()));
    }
    void* lib = source->library_;
    auto init = reinterpret_cast<NvmlReturn (*)()>(dlsym(lib, "nvmlInit_v2"));
    source->handle_ = reinterpret_cast<decltype(source->handle_)>(
        dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
    source->handle_by_bus_ = reinterpret_cast<decltype(source->handle_by_bus_)>(
        dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
    source->index_ =
        reinterpret_cast<decltype(source->index_)>(dlsym(lib, "nvmlDeviceGetIndex"));
    source->memory_ = reinterpret_cast<decltype(source->memory_)>(
        dlsym(lib, "nvmlDeviceGetMemoryInfo"));
    source->utilization_ = reinterpret_cast<decltype(source->utilization_)>(
        dlsym(lib, "nvmlDeviceGetUtilizationRates"));
    auto shutdown = reinterpret_cast<NvmlReturn (*)()>(dlsym(lib, "nvmlShutdown"));
    // The PCI lookup (handle_by_bus_, index_) is optional: without it
    // IndexOfPciBusId() answers UNAVAILABLE and the caller guesses the index.
    if (init == nullptr || shutdown == nullptr || source->handle_ == nullptr ||
        source->memory_ == nullptr || source->utilization_ == nullptr) {
      return absl::UnavailableError("NVML lacks the functions clipserve reads");
    }
    if (const NvmlReturn r = init(); r != 0) {
      return absl::UnavailableError(absl::StrCat("nvmlInit failed with code ", r));
    }
    source->shutdown_ = shutdown;
    return source;
  }

  absl::StatusOr<int> IndexOfPciBusId(const std::string& pci_bus_id) override {
    if (handle_by_bus_ == nullptr || index_ == nullptr) {
      return absl::UnavailableError("this NVML cannot look GPUs up by PCI address");
    }
    NvmlDevice device = nullptr;
    if (const NvmlReturn r = handle_by_bus_(pci_bus_id.c_str(), &device); r != 0) {
      const std::string message =
          absl::StrCat("NVML has no GPU at PCI address ", pci_bus_id, " (code ", r, ")");
      return r == kNvmlErrorNotFound ? absl::NotFoundError(message)
                                     : absl::UnavailableError(message);
    }
    unsigned int index = 0;
    if (const NvmlReturn r = index_(device, &index); r != 0) {
      return absl::UnavailableError(absl::StrCat("nvmlDeviceGetIndex: code ", r));
    }
    return static_cast<int>(index);
  }

  absl::StatusOr<GpuSample> Sample(int index) override {
    NvmlDevice device = nullptr;
    if (const NvmlReturn r = handle_(static_cast<unsigned int>(index), &device); r != 0) {
      return absl::UnavailableError(
          absl::StrCat("NVML has no device ", index, " (code ", r, ")"));
    }
    NvmlMemory memory{};
    NvmlUtilization utilization{};
    if (const NvmlReturn r = memory_(device, &memory); r != 0) {
      return absl::UnavailableError(absl::StrCat("nvmlDeviceGetMemoryInfo: code ", r));
    }
    GpuSample sample;
    sample.memory_used_bytes = memory.used;
    sample.memory_total_bytes = memory.total;
    // MIG instances report no utilization (NVML_ERROR_NOT_SUPPORTED, 3): the memory
    // reading stands on its own there. Any other failure fails the reading.
    constexpr NvmlReturn kNotSupported = 3;
    if (const NvmlReturn r = utilization_(device, &utilization); r == 0) {
      sample.utilization = utilization.gpu / 100.0;
    } else if (r != kNotSupported) {
      return absl::UnavailableError(
          absl::StrCat("nvmlDeviceGetUtilizationRates: code ", r));
    }
    return sample;
  }

 private:
  NvmlSource() = default;

  void* library_ = nullptr;
  NvmlReturn (*shutdown_)() = nullptr;
  NvmlReturn (*handle_)(unsigned int, NvmlDevice*) = nullptr;
  NvmlReturn (*handle_by_bus_)(const char*, NvmlDevice*) = nullptr;
  NvmlReturn (*index_)(NvmlDevice, unsigned int*) = nullptr;
  NvmlReturn (*memory_)(NvmlDevice, NvmlMemory*) = nullptr;
  NvmlReturn (*utilization_)(NvmlDevice, NvmlUtilization*) = nullptr;
};

}  // namespace

absl::StatusOr<std::unique_ptr<GpuStatsSource>> OpenNvml() { return NvmlSource::Open(); }

}  // namespace clipserve
