#include "lifl/common/capabilities.h"

#include <grp.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

namespace lifl {

Result<void> dropAllCapabilities() {
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
    return systemError("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", errno);
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capset, &header, none) != 0) return systemError("capset", errno);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    return systemError("prctl(PR_SET_NO_NEW_PRIVS)", errno);
  return success();
}

Result<void> becomeUser(uint32_t uid, uint32_t gid) {
  if (::setgroups(0, nullptr) != 0) return systemError("setgroups", errno);
  if (::setresgid(gid, gid, gid) != 0) return systemError("setresgid", errno);
  if (::setresuid(uid, uid, uid) != 0) return systemError("setresuid", errno);
  if (uid != 0 && (::setuid(0) == 0 || ::getuid() != uid || ::geteuid() != uid))
    return makeError(500, "privilege_kept", "the process could still become root");
  return success();
}

}  // namespace lifl
