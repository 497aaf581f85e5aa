#ifndef CLIPSERVE_SERVER_MODEL_DEVICE_H_
#define CLIPSERVE_SERVER_MODEL_DEVICE_H_

#include <torch/types.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// What running on a GPU needs beyond moving tensors there: a CUDA stream per worker
// thread, page-locked host buffers for asynchronous copies, and releasing cached
// memory after an out-of-memory error. Everything here goes through LibTorch's
// device-generic interfaces, so it compiles against Debian's CPU-only LibTorch and
// does nothing for a CPU device.

namespace c10 {
struct StreamGuard;
}

namespace clipserve {

// Checks that `device` can run a model: the CPU always; "cuda:N" when this LibTorch
// was built with CUDA and N < the number of visible devices. UNAVAILABLE otherwise,
// naming how many devices there are. May block while CUDA initializes (first call).
absl::Status CheckDeviceUsable(const torch::Device& device);

// While alive, the calling thread's work on `device` goes to a CUDA stream of its own
// (taken from LibTorch's stream pool on the thread's first use and kept for the
// thread's life), and `device` is the thread's current device. Several engine workers
// on one GPU then overlap one batch's copies with another's kernels instead of
// serializing on the default stream. Does nothing for a CPU device. Never throws: when
// CUDA refuses (a broken device), status() says why and the thread's work stays on
// the current stream. Not copyable; construct and destroy on the same thread. May
// block on the first use per thread while CUDA creates the stream pool.
class DeviceStreamScope {
 public:
  explicit DeviceStreamScope(const torch::Device& device);
  ~DeviceStreamScope();
  DeviceStreamScope(const DeviceStreamScope&) = delete;
  DeviceStreamScope& operator=(const DeviceStreamScope&) = delete;

  // OK, or UNAVAILABLE when no stream could be set.
  const absl::Status& status() const { return status_; }

 private:
  std::unique_ptr<c10::StreamGuard> guard_;  // null on CPU or on failure
  absl::Status status_;
};

// Options for a host tensor that assembles a batch bound for `device`: page-locked
// (pinned) when `device` is CUDA, so its copy to the device can be non-blocking and
// overlap other work; ordinary pageable memory for the CPU.
torch::TensorOptions HostBatchOptions(const torch::Device& device,
                                      torch::ScalarType dtype);

// The PCI address of a CUDA device as CUDA reports it ("0000:3b:00.0": domain, bus,
// device, function), by which NVML (numbering devices in PCI order, blind to
// CUDA_VISIBLE_DEVICES) finds the same GPU. INVALID_ARGUMENT for a CPU device;
// UNAVAILABLE when this build has no CUDA (CLIPSERVE_WITH_CUDA unset) or CUDA fails.
// Never throws. Thread-safe.
absl::StatusOr<std::string> PciBusId(const torch::Device& device);

// Hands the CUDA caching allocator's unused blocks back to the driver, so that a
// retry after an out-of-memory error is not defeated by fragmentation. Blocks: it
// synchronizes the device, so other workers' batches pause meanwhile. No-op (OK) for
// the CPU and in builds without CUDA (CLIPSERVE_WITH_CUDA unset); INTERNAL when CUDA
// fails. Never throws. Thread-safe.
absl::Status ReleaseCachedDeviceMemory(const torch::Device& device);

// Runs a one-element computation on `device` and waits for it: INTERNAL, with CUDA's
// message, when the device cannot compute; RESOURCE_EXHAUSTED when it has no memory
// left even for that. After a kernel fault (an illegal address, a device-side assert)
// CUDA fails every later call in the process, so a batch that failed for such a
// reason fails this too, where one that failed for its own reason (bad input, a bug
// in one op) does not. OK at once for the CPU, which has no such state. Never throws.
// Thread-safe; blocks until the device has run it.
absl::Status ProbeDevice(const torch::Device& device);

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_DEVICE_H_
