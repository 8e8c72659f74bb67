#pragma once

#include "lifl/common/error.h"

namespace lifl::cli {

int cmdUp(int argc, char** argv);
int cmdAgent(int argc, char** argv);
int cmdController(int argc, char** argv);
int cmdInstance(int argc, char** argv);
int cmdPush(int argc, char** argv);
int cmdPull(int argc, char** argv);
int cmdJob(int argc, char** argv);
int cmdStatus(int argc, char** argv);
int cmdBench(int argc, char** argv);
int cmdModel(int argc, char** argv);
int cmdToken(int argc, char** argv);

/// Prints an error as "lifl: <code>: <detail>" and returns the exit status for it.
int fail(const Error& e);

}  // namespace lifl::cli
