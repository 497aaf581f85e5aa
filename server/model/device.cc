#include "server/model/device.h"

#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>

#include <exception>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"

#if CLIPSERVE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

namespace clipserve {
namespace {

std::string FirstLine(const char* what) {
  std::string line(what);
  const size_t newline = line.find('\n');
  if (newline != std::string::npos) line.resize(newline);
  return line;
}

}  // namespace

absl::Status CheckDeviceUsable(const torch::Device& device) {
  if (device.is_cpu()) return absl::OkStatus();
  if (!device.is_cuda()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported device type: ", device.str()));
  }
  const int64_t count = torch::cuda::is_available() ? torch::cuda::device_count() : 0;
  if (count == 0) {
    return absl::UnavailableError(absl::StrCat(
        device.str(),
        " requested but no CUDA device is available (a CPU-only LibTorch, no driver, "
        "or CUDA_VISIBLE_DEVICES hides them)"));
  }
  const int64_t index = device.has_index() ? device.index() : 0;
  if (index < 0 || index >= count) {
    return absl::UnavailableError(absl::StrCat(device.str(), " requested but only ",
                                               count, " CUDA device(s) are visible"));
  }
  return absl::OkStatus();
}

DeviceStreamScope::DeviceStreamScope(const torch::Device& device) {
  if (!device.is_cuda()) return;
  const torch::Device target(device.type(), device.has_index() ? device.index() : 0);
  // One stream per thread and device, for the thread's life: a pool stream is
  // LibTorch's to keep, so nothing needs releasing.
  thread_local std::map<c10::DeviceIndex, c10::Stream> streams;
  try {
    auto it = streams.find(target.index());
    if (it == streams.end()) {
      c10::impl::VirtualGuardImpl impl(target.type());
      it = streams.emplace(target.index(), impl.getStreamFromGlobalPool(target)).first;
    }
    guard_ = std::make_unique<c10::StreamGuard>(it->second);
  } catch (const std::exception& e) {
    status_ = absl::UnavailableError(
        absl::StrCat("no CUDA stream for this thread: ", FirstLine(e.what())));
  }
}

DeviceStreamScope::~DeviceStreamScope() = default;

torch::TensorOptions HostBatchOptions(const torch::Device& device,
                                      torch::ScalarType dtype) {
  return torch::TensorOptions()
      .dtype(dtype)
      .device(torch::kCPU)
      .pinned_memory(device.is_cuda());
}

absl::StatusOr<std::string> PciBusId(const torch::Device& device) {
  if (!device.is_cuda()) {
    return absl::InvalidArgumentError(
        absl::StrCat(device.str(), " is not a CUDA device; it has no PCI address here"));
  }
#if CLIPSERVE_WITH_CUDA
  char id[32] = {};  // "dddd:bb:dd.f" and its terminator fit with room to spare
  const int index = device.has_index() ? device.index() : 0;
  const cudaError_t error =
      cudaDeviceGetPCIBusId(id, static_cast<int>(sizeof(id)), index);
  if (error != cudaSuccess) {
    return absl::UnavailableError(
        absl::StrCat("cudaDeviceGetPCIBusId(", index, "): ", cudaGetErrorString(error)));
  }
  return std::string(id);
#else
  return absl::UnavailableError("this build of clipserve has no CUDA support");
#endif
}

absl::Status ReleaseCachedDeviceMemory(const torch::Device& device) {
#if CLIPSERVE_WITH_CUDA
  if (!device.is_cuda()) return absl::OkStatus();
  try {
    c10::cuda::CUDACachingAllocator::emptyCache();
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("releasing cached CUDA memory: ", FirstLine(e.what())));
  }
#else
  (void)device;
#endif
  return absl::OkStatus();
}

absl::Status ProbeDevice(const torch::Device& device) {
  if (device.is_cpu()) return absl::OkStatus();
  try {
    const torch::Tensor one = torch::ones({1}, torch::TensorOptions().device(device));
    const float two = (one + 1).item<float>();  // waits for the device
    if (two != 2.0f) {
      return absl::InternalError(
          absl::StrCat(device.str(), " computed 1 + 1 = ", two, " in a probe"));
    }
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat(device.str(), " has no memory for a probe: ", FirstLine(e.what())));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(
        device.str(), " fails a one-element computation: ", FirstLine(e.what())));
  }
  return absl::OkStatus();
}

}  // namespace clipserve
