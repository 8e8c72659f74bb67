// The CPU limit of the process's cgroups (data-plane/include/lifl/dataplane/cgroup_limits.h),
// on cgroup trees written in a temporary directory: v2 with limits at several levels (the
// tightest counts), v2 unlimited, v1's CPU controller, and nothing readable.
#include "lifl/dataplane/cgroup_limits.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace lifl::dataplane {
namespace {

namespace fs = std::filesystem;

class CgroupLimits : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("lifl-cgroup-test-" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  void write(const fs::path& file, const std::string& text) {
    fs::create_directories((root_ / file).parent_path());
    std::ofstream(root_ / file) << text;
  }
  double limit() { return cgroupCpuLimit((root_ / "sys").string(), (root_ / "self").string()); }
  fs::path root_;
};

TEST_F(CgroupLimits, V2TakesTheTightestAncestor) {
  write("self", "0::/kubepods/pod1/agent\n");
  write("sys/cpu.max", "max 100000\n");
  write("sys/kubepods/pod1/cpu.max", "250000 100000\n");        // the pod: 2.5 CPUs
  write("sys/kubepods/pod1/agent/cpu.max", "400000 100000\n");  // the container: 4
  EXPECT_DOUBLE_EQ(limit(), 2.5);
}

TEST_F(CgroupLimits, V2UnlimitedIsZero) {
  write("self", "0::/user.slice\n");
  write("sys/user.slice/cpu.max", "max 100000\n");
  EXPECT_DOUBLE_EQ(limit(), 0);
}

TEST_F(CgroupLimits, V1CpuController) {
  write("self", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n");
  write("sys/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "150000\n");
  write("sys/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
  write("sys/cpu,cpuacct/docker/cpu.cfs_quota_us", "-1\n");  // unlimited above it
  write("sys/cpu,cpuacct/docker/cpu.cfs_period_us", "100000\n");
  EXPECT_DOUBLE_EQ(limit(), 1.5);
}

TEST_F(CgroupLimits, NothingReadableIsZero) {
  EXPECT_DOUBLE_EQ(limit(), 0);  // no self file at all
  write("self", "0::/gone\n");   // a path without files
  EXPECT_DOUBLE_EQ(limit(), 0);
}

}  // namespace
}  // namespace lifl::dataplane
