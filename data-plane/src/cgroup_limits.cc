#include "lifl/dataplane/cgroup_limits.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace lifl::dataplane {
namespace {

/// The CPUs a quota and period allow; 0 for none (no quota, or a malformed one).
double cpus(double quota, double period) { return quota > 0 && period > 0 ? quota / period : 0; }

/// The limit set in one cgroup directory, v2 then v1; 0 for none.
double limitIn(const std::filesystem::path& dir) {
  if (std::ifstream v2(dir / "cpu.max"); v2) {
    std::string quota;
    double period = 0;
    v2 >> quota >> period;
    return quota == "max" ? 0 : cpus(std::atof(quota.c_str()), period);
  }
  std::ifstream q(dir / "cpu.cfs_quota_us"), p(dir / "cpu.cfs_period_us");
  double quota = -1, period = 0;
  if (q && p && (q >> quota) && (p >> period)) return cpus(quota, period);
  return 0;
}

/// A v1 hierarchy's controller list ("cpu,cpuacct") that has the CPU controller.
bool namesCpu(const std::string& controllers) {
  std::istringstream list(controllers);
  std::string c;
  while (std::getline(list, c, ','))
    if (c == "cpu") return true;
  return false;
}

}  // namespace

double cgroupCpuLimit(const std::string& root, const std::string& selfCgroup) {
  std::ifstream in(selfCgroup);
  std::string line;
  double tightest = 0;
  while (std::getline(in, line)) {
    // "0::/path" (v2), or "N:cpu,cpuacct:/path" (v1's CPU controller).
    const auto first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1);
    std::filesystem::path base = root;  // v2: the unified hierarchy at root
    if (!controllers.empty()) {
      if (!namesCpu(controllers)) continue;
      base /= std::filesystem::exists(base / controllers) ? controllers : "cpu";
    }
    // Every ancestor, from the process's own cgroup up to the hierarchy's root.
    std::filesystem::path dir =
        base / std::filesystem::path(line.substr(second + 1)).relative_path();
    while (true) {
      if (const double limit = limitIn(dir); limit > 0)
        tightest = tightest > 0 ? std::min(tightest, limit) : limit;
      if (dir == base || !dir.has_parent_path() || dir.parent_path() == dir) break;
      dir = dir.parent_path();
    }
  }
  return tightest;
}

}  // namespace lifl::dataplane
