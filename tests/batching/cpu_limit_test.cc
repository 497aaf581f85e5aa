#include "server/common/cpu_limit.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

namespace fs = std::filesystem;

TEST(CpusOfQuotaTest, RoundsUpAndRefusesWhatIsNoLimit) {
  EXPECT_EQ(CpusOfQuota("200000", "100000"), 2);
  EXPECT_EQ(CpusOfQuota("250000\n", "100000\n"), 3);  // 2.5 CPUs
  EXPECT_EQ(CpusOfQuota("50000", "100000"), 1);
  EXPECT_EQ(CpusOfQuota("-1", "100000"), std::nullopt);  // v1: no limit
  EXPECT_EQ(CpusOfQuota("0", "100000"), std::nullopt);
  EXPECT_EQ(CpusOfQuota("100000", "0"), std::nullopt);
  EXPECT_EQ(CpusOfQuota("lots", "100000"), std::nullopt);
  EXPECT_EQ(CpusOfCpuMax("400000 100000\n"), 4);
  EXPECT_EQ(CpusOfCpuMax("max 100000\n"), std::nullopt);
  EXPECT_EQ(CpusOfCpuMax("400000"), std::nullopt);
  EXPECT_EQ(CpusOfCpuMax(""), std::nullopt);
}

// A fake root: /proc/self/cgroup and a /sys/fs/cgroup tree, under a test folder.
class CgroupCpuLimitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(root_);
    fs::create_directories(root_ / "proc/self");
  }
  void TearDown() override { fs::remove_all(root_); }

  void Write(const std::string& path, const std::string& text) {
    fs::create_directories((root_ / path).parent_path());
    std::ofstream(root_ / path) << text;
  }
  std::optional<int> Limit() { return CgroupCpuLimit(root_.string()); }

  fs::path root_;
};

TEST_F(CgroupCpuLimitTest, V2ReadsTheSmallestQuotaAlongThePath) {
  Write("proc/self/cgroup", "0::/kubepods/pod1/ctr\n");
  Write("sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
  Write("sys/fs/cgroup/cpu.max", "max 100000\n");
  Write("sys/fs/cgroup/kubepods/cpu.max", "max 100000\n");
  Write("sys/fs/cgroup/kubepods/pod1/cpu.max", "300000 100000\n");
  Write("sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "max 100000\n");
  EXPECT_EQ(Limit(), 3);
  Write("sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "150000 100000\n");
  EXPECT_EQ(Limit(), 2);
}

// In a cgroup namespace (Docker's default under v2) the process sees itself at the
// root: /sys/fs/cgroup is its own cgroup.
TEST_F(CgroupCpuLimitTest, V2InANamespaceReadsTheMountsRoot) {
  Write("proc/self/cgroup", "0::/\n");
  Write("sys/fs/cgroup/cgroup.controllers", "cpu\n");
  Write("sys/fs/cgroup/cpu.max", "200000 100000\n");
  EXPECT_EQ(Limit(), 2);
  Write("sys/fs/cgroup/cpu.max", "max 100000\n");
  EXPECT_EQ(Limit(), std::nullopt);
  // A path that is not under the mount (another namespace's view) falls back to it.
  Write("proc/self/cgroup", "0::/system.slice/elsewhere\n");
  Write("sys/fs/cgroup/cpu.max", "100000 100000\n");
  EXPECT_EQ(Limit(), 1);
}

TEST_F(CgroupCpuLimitTest, V1ReadsTheCpuControllersQuota) {
  Write("proc/self/cgroup",
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n");
  Write("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n");
  Write("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
  Write("sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us", "400000\n");
  Write("sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(Limit(), 4);
  Write("sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us", "-1\n");
  EXPECT_EQ(Limit(), std::nullopt);
}

TEST_F(CgroupCpuLimitTest, NothingReadableIsNoLimit) {
  EXPECT_EQ(Limit(), std::nullopt);  // no /proc/self/cgroup
  Write("proc/self/cgroup", "garbage\n");
  EXPECT_EQ(Limit(), std::nullopt);
  Write("proc/self/cgroup", "0::/a\n");  // v2 named, but no cgroup2 mount
  EXPECT_EQ(Limit(), std::nullopt);
}

TEST(UsableCpusTest, IsAtLeastOneAndAtMostTheMachinesCpus) {
  const int cpus = UsableCpus();
  EXPECT_GE(cpus, 1);
  EXPECT_LE(cpus, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  if (std::optional<int> limit = CgroupCpuLimit()) {
    EXPECT_LE(cpus, *limit);
  }
}

}  // namespace
}  // namespace clipserve
