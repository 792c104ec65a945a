// The CPU level in use (csrc/cpu/kernels.h has the levels), for the Python
// module: ncx.ops.cpu_level / cpu_levels / set_cpu_level.
#pragma once
#include <string>
#include <vector>

namespace ncx {

// The level the CPU ops use: "baseline", "avx2" or "avx512".
std::string cpu_level();
// The levels this build and this CPU can run, lowest first.
std::vector<std::string> cpu_levels();
// Switches the level; std::invalid_argument for an unknown or unavailable one.
void set_cpu_level(const std::string& name);
// Applies NCX_CPU_LEVEL when it is set (at import of ncx._C).
void set_cpu_level_from_environment();
// The GEMM int_linear uses on the CPU at the current level (csrc/cpu/int_m1_cpu.cpp).
std::string cpu_int8_gemm();

}  // namespace ncx
