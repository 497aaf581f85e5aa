// The GPU helpers: on the CPU they must be harmless no-ops; the *_CUDA tests check
// what they do on a GPU and are skipped without one.

#include "server/model/device.h"

#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <thread>

#include "gtest/gtest.h"
#include "re2/re2.h"
#include "server/metrics/gpu_stats.h"

namespace clipserve {
namespace {

TEST(DeviceTest, CpuIsAlwaysUsable) { EXPECT_TRUE(CheckDeviceUsable(torch::kCPU).ok()); }

TEST(DeviceTest, CudaIndexPastTheVisibleDevicesIsUnavailable) {
  const absl::Status status = CheckDeviceUsable(torch::Device(torch::kCUDA, 99));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(status.message().find("cuda:99"), absl::string_view::npos) << status;
}

TEST(DeviceTest, CudaWithoutCudaIsUnavailable) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "this machine has a CUDA device";
  EXPECT_EQ(CheckDeviceUsable(torch::Device(torch::kCUDA, 0)).code(),
            absl::StatusCode::kUnavailable);
}

TEST(DeviceTest, OnlyCudaDevicesHaveAPciAddress) {
  EXPECT_EQ(PciBusId(torch::kCPU).status().code(), absl::StatusCode::kInvalidArgument);
  if (!torch::cuda::is_available()) {
    EXPECT_EQ(PciBusId(torch::Device(torch::kCUDA, 0)).status().code(),
              absl::StatusCode::kUnavailable);
  }
}

// CUDA's device 0 has a PCI address ("dddd:bb:dd.f"), and NVML (when the driver's
// library is there) finds a GPU at it: the lookup the server's GPU metrics use.
TEST(DeviceTest, NvmlFindsTheCudaDeviceByItsPciAddress_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const absl::StatusOr<std::string> bus = PciBusId(torch::Device(torch::kCUDA, 0));
  ASSERT_TRUE(bus.ok()) << bus.status();
  EXPECT_TRUE(RE2::FullMatch(*bus, "[0-9a-fA-F]+:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\\.[0-7]"))
      << *bus;
  absl::StatusOr<std::unique_ptr<GpuStatsSource>> nvml = OpenNvml();
  ASSERT_TRUE(nvml.ok()) << nvml.status();
  const absl::StatusOr<int> index = (*nvml)->IndexOfPciBusId(*bus);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_GE(*index, 0);
  EXPECT_TRUE((*nvml)->Sample(*index).ok());
  EXPECT_EQ((*nvml)->IndexOfPciBusId("ffff:ff:1f.7").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(DeviceTest, CpuBatchesUsePageableMemoryAndNoStream) {
  const torch::Tensor batch =
      torch::empty({2, 3}, HostBatchOptions(torch::kCPU, torch::kFloat));
  EXPECT_FALSE(batch.is_pinned());
  EXPECT_EQ(batch.scalar_type(), torch::kFloat);
  DeviceStreamScope scope(torch::kCPU);  // must not touch CUDA
  EXPECT_TRUE(scope.status().ok());
  EXPECT_TRUE(ReleaseCachedDeviceMemory(torch::kCPU).ok());
}

c10::Stream CurrentCudaStream() {
  return c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA)
      .getStream(torch::Device(torch::kCUDA, 0));
}

TEST(DeviceTest, EachThreadGetsItsOwnNonDefaultStream_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device gpu(torch::kCUDA, 0);
  const c10::Stream before = CurrentCudaStream();
  c10::Stream first = before;
  c10::Stream again = before;
  {
    DeviceStreamScope scope(gpu);
    EXPECT_TRUE(scope.status().ok()) << scope.status();
    first = CurrentCudaStream();
  }
  EXPECT_EQ(CurrentCudaStream(), before);  // restored
  {
    DeviceStreamScope scope(gpu);
    again = CurrentCudaStream();
  }
  EXPECT_NE(first, before);
  EXPECT_EQ(first, again);  // kept for the thread's life
  c10::Stream other = before;
  std::thread([&] {
    DeviceStreamScope scope(gpu);
    other = CurrentCudaStream();
  }).join();
  EXPECT_NE(other, first);
}

TEST(DeviceTest, CudaBatchesArePinnedAndCopyBackExactly_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device gpu(torch::kCUDA, 0);
  DeviceStreamScope scope(gpu);
  torch::Tensor host = torch::empty({64, 3, 8, 8}, HostBatchOptions(gpu, torch::kFloat));
  EXPECT_TRUE(host.is_pinned());
  host.copy_(torch::arange(host.numel(), torch::kFloat).view(host.sizes()));
  const torch::Tensor round_trip =
      host.to(gpu, torch::kFloat, /*non_blocking=*/true).mul(2).to(torch::kCPU);
  EXPECT_TRUE(torch::equal(round_trip, host * 2));
  EXPECT_TRUE(ReleaseCachedDeviceMemory(gpu).ok());
}

TEST(DeviceTest, TheCpuPassesItsProbe) { EXPECT_TRUE(ProbeDevice(torch::kCPU).ok()); }

TEST(DeviceTest, AWorkingGpuPassesItsProbe_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const absl::Status probe = ProbeDevice(torch::Device(torch::kCUDA, 0));
  EXPECT_TRUE(probe.ok()) << probe;
}

// A device-side assert breaks the CUDA context for the rest of the process, so the
// fault happens in a process of its own: "threadsafe" death tests run this binary
// again for the one test.
TEST(DeviceTest, AGpuBrokenByAKernelFaultFailsItsProbe_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        const torch::Device gpu(torch::kCUDA, 0);
        const bool fine_before = ProbeDevice(gpu).ok();
        try {
          // An index past the end trips index_select's device-side assert.
          const torch::Tensor values = torch::zeros({2}, torch::device(gpu));
          const torch::Tensor index =
              torch::full({1}, 5, torch::dtype(torch::kLong).device(gpu));
          values.index_select(0, index).cpu();
        } catch (const std::exception&) {
          // Expected: the fault surfaces at the copy, or at the probe below.
        }
        const absl::Status after = ProbeDevice(gpu);
        std::fprintf(stderr, "probe after the fault: %s\n", after.ToString().c_str());
        std::fflush(stderr);
        // No static destructors: they may abort on the broken context.
        std::_Exit(fine_before && after.code() == absl::StatusCode::kInternal ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "probe after the fault: INTERNAL");
}

}  // namespace
}  // namespace clipserve
