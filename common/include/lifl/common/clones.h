// LIFL_CLONES: a hot CPU kernel compiled for AVX-512 (x86-64-v4), AVX2 (x86-64-v3) and the
// baseline, the best one picked at load time (GCC's target_clones). Builds with compilers
// that cannot clone every such function (clang, for the fuzz targets of tests/fuzz) define
// LIFL_NO_CLONES and get the baseline only.
#pragma once

#ifdef LIFL_NO_CLONES
#define LIFL_CLONES
#else
#define LIFL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
