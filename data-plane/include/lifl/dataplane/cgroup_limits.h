// The CPU limit this process's cgroups set (a Kubernetes container's `resources.limits.cpu`
// becomes one): the node capacity an agent reports for placement (docs/kubernetes.md).
#pragma once

#include <string>

namespace lifl::dataplane {

/// CPUs the tightest CPU limit along this process's cgroup path allows, from cgroup v2's
/// cpu.max ("QUOTA PERIOD" or "max PERIOD") or v1's cpu.cfs_quota_us / cpu.cfs_period_us;
/// 0 when no cgroup limits it (or none can be read).
/// @param root where the cgroup file systems are mounted
/// @param selfCgroup the process's cgroup list (/proc/self/cgroup)
double cgroupCpuLimit(const std::string& root = "/sys/fs/cgroup",
                      const std::string& selfCgroup = "/proc/self/cgroup");

}  // namespace lifl::dataplane
