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

}  // namespace lifl
