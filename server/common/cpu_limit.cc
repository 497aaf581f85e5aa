#include "server/common/cpu_limit.h"

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace clipserve {
namespace {

namespace fs = std::filesystem;

// A small file's contents (these are a line each); nullopt where it cannot be read.
std::optional<std::string> ReadSmall(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The smallest of `limit(dir)` over `leaf` and its parents up to `mount`, both included.
// A leaf that does not exist under `mount` (a cgroup namespace, or v1's controller
// mounted at the container's own cgroup) leaves `mount` alone to read.
template <typename Limit>
std::optional<int> SmallestAlongPath(const fs::path& mount, absl::string_view leaf,
                                     const Limit& limit) {
  fs::path dir = mount;
  const std::string relative(absl::StripPrefix(leaf, "/"));
  std::error_code ec;
  if (!relative.empty() && fs::is_directory(mount / relative, ec)) dir = mount / relative;
  std::optional<int> smallest;
  while (true) {
    if (std::optional<int> cpus = limit(dir)) {
      smallest = smallest.has_value() ? std::min(*smallest, *cpus) : *cpus;
    }
    if (dir == mount || !dir.has_parent_path() || dir.parent_path() == dir) break;
    dir = dir.parent_path();
  }
  return smallest;
}

}  // namespace

std::optional<int> CpusOfQuota(absl::string_view quota, absl::string_view period) {
  int64_t q = 0, p = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(quota), &q) ||
      !absl::SimpleAtoi(absl::StripAsciiWhitespace(period), &p) || q <= 0 || p <= 0) {
    return std::nullopt;
  }
  const int64_t cpus = q / p + (q % p != 0 ? 1 : 0);
  return static_cast<int>(std::min<int64_t>(cpus, 1 << 20));
}

std::optional<int> CpusOfCpuMax(absl::string_view cpu_max) {
  const std::vector<absl::string_view> fields =
      absl::StrSplit(absl::StripAsciiWhitespace(cpu_max), ' ', absl::SkipEmpty());
  if (fields.size() != 2) return std::nullopt;
  return CpusOfQuota(fields[0], fields[1]);  // "max" is no number: no limit
}

std::optional<int> CgroupCpuLimit(const std::string& root) {
  const std::optional<std::string> membership = ReadSmall(root + "/proc/self/cgroup");
  if (!membership.has_value()) return std::nullopt;
  const fs::path cgroups = root + "/sys/fs/cgroup";
  std::optional<std::string> v2_path, v1_cpu_path;
  // Lines "ID:CONTROLLERS:PATH": "0::/kubepods/..." under v2, "4:cpu,cpuacct:/docker/..."
  // for v1's cpu controller.
  for (absl::string_view line : absl::StrSplit(*membership, '\n', absl::SkipEmpty())) {
    const std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    if (fields[0] == "0" && fields[1].empty()) v2_path = std::string(fields[2]);
    for (absl::string_view controller : absl::StrSplit(fields[1], ',')) {
      if (controller == "cpu") v1_cpu_path = std::string(fields[2]);
    }
  }
  std::error_code ec;
  if (v2_path.has_value() && fs::exists(cgroups / "cgroup.controllers", ec)) {
    return SmallestAlongPath(cgroups, *v2_path, [](const fs::path& dir) {
      const std::optional<std::string> cpu_max = ReadSmall(dir / "cpu.max");
      return cpu_max.has_value() ? CpusOfCpuMax(*cpu_max) : std::nullopt;
    });
  }
  if (v1_cpu_path.has_value()) {
    return SmallestAlongPath(cgroups / "cpu", *v1_cpu_path, [](const fs::path& dir) {
      const std::optional<std::string> quota = ReadSmall(dir / "cpu.cfs_quota_us");
      const std::optional<std::string> period = ReadSmall(dir / "cpu.cfs_period_us");
      if (!quota.has_value() || !period.has_value()) return std::optional<int>();
      return CpusOfQuota(*quota, *period);
    });
  }
  return std::nullopt;
}

int UsableCpus() {
  int cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = std::max(1, CPU_COUNT(&set));
  if (std::optional<int> limit = CgroupCpuLimit()) cpus = std::min(cpus, *limit);
  return cpus;
}

}  // namespace clipserve
