// Linux capabilities of this process (docs/kubernetes.md, "Security model"): the agent holds
// only what its BPF work needs, and the function instances it starts hold none.
#pragma once

#include "lifl/common/error.h"

namespace lifl {

/// Clears this process's effective, permitted, inheritable and ambient capabilities and sets
/// no_new_privs, so that nothing it executes regains any. Its bounding set is left as it is
/// (dropping from it needs CAP_SETPCAP, which the agent does not hold); with an empty
/// permitted set and no_new_privs that grants nothing.
Result<void> dropAllCapabilities();
/// Becomes user `uid` with group `gid` and no supplementary groups (the process must hold
/// CAP_SETUID and CAP_SETGID: call it before dropAllCapabilities). Checked afterwards: a
/// process that could switch back would not be confined.
Result<void> becomeUser(uint32_t uid, uint32_t gid);

}  // namespace lifl
