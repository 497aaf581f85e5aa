#ifndef CLIPSERVE_SERVER_COMMON_CPU_LIMIT_H_
#define CLIPSERVE_SERVER_COMMON_CPU_LIMIT_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace clipserve {

// How many CPUs a CFS quota of `quota` microseconds per `period` allows, rounded up
// (a limit of 2.5 CPUs keeps 3 threads busy part of the time); nullopt when either is
// not a positive number, as v1's quota of -1 (no limit).
std::optional<int> CpusOfQuota(absl::string_view quota, absl::string_view period);

// The same from a cgroup v2 `cpu.max` file's contents: "200000 100000", or
// "max 100000" (no limit: nullopt).
std::optional<int> CpusOfCpuMax(absl::string_view cpu_max);

// The CPU limit of this process's cgroup: the smallest quota along its path, under
// cgroup v2 (`cpu.max`) or else v1's cpu controller (`cpu.cfs_quota_us` and
// `cpu.cfs_period_us`), as `docker run --cpus` and a Kubernetes CPU limit set it.
// nullopt where no quota is set or none can be read. `root` prefixes every path read
// (/proc/self/cgroup and /sys/fs/cgroup/...): "" for the real ones, a folder in tests.
std::optional<int> CgroupCpuLimit(const std::string& root = "");

// CPUs this process may keep busy: its affinity mask (as cpusets and Kubernetes' static
// CPU manager set it), or its cgroup's CPU limit where that is smaller. A container
// limited to 2 CPUs on a 64-core node sees 64 CPUs in its mask: 64 busy threads would
// spend its quota in a fraction of each period and then all wait.
int UsableCpus();

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_COMMON_CPU_LIMIT_H_
