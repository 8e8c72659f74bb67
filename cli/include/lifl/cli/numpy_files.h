// `lifl push` takes updates as safetensors, or as numpy files: one array (.npy, named by
// --tensor or the file's stem) or a dict of arrays (.npz, as np.savez and
// np.savez_compressed write them). Numpy files become safetensors before they are sent.
#pragma once

#include <string>

#include "lifl/common/error.h"

namespace lifl::cli {

/// The safetensors bytes of a .npy, .npz or .safetensors file (the last one as it is).
/// float32, float16 and int8 arrays keep their dtype; float64 arrays become float32.
/// @param tensorName the name of a .npy file's one array (empty: the file's stem)
Result<std::string> updateBodyFromFile(const std::string& path, const std::string& tensorName);

}  // namespace lifl::cli
