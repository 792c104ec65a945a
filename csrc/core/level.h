// The inline namespace of the core's code (every header in csrc/core).
//
// The core is compiled into csrc/cpu/kernels.cpp once per CPU level, with
// that level's instruction set, and into the other files for the default
// target. Each level's build defines its own namespace name, so the linker
// never takes one level's copy of an inline function for another's: a
// baseline caller cannot land in AVX-512 code. Qualified names
// (ncx::intm1::row_scale, ...) read the same in every build.
#pragma once

#ifndef NCX_LEVEL_NAMESPACE
#define NCX_LEVEL_NAMESPACE portable
#endif
