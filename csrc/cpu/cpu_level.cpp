// Which table of csrc/cpu/kernels.h the CPU ops use: the best level that both
// the build (setup.py CPU_LEVELS) and the CPU have, or the one set through
// NCX_CPU_LEVEL / ncx.ops.set_cpu_level, which may only go down (a level the
// CPU lacks would die on its first instruction).
#include "cpu_level.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "kernels.h"

namespace ncx {

// Each level's table, defined in csrc/cpu/kernels.cpp compiled for that level.
#if NCX_HAVE_LEVEL_BASELINE
namespace level_baseline { const CpuKernels* kernel_table(); }
#endif
#if NCX_HAVE_LEVEL_AVX2
namespace level_avx2 { const CpuKernels* kernel_table(); }
#endif
#if NCX_HAVE_LEVEL_AVX512
namespace level_avx512 { const CpuKernels* kernel_table(); }
#endif

namespace {

const char* const kLevelNames[kNumCpuLevels] = {"baseline", "avx2", "avx512"};

const CpuKernels* built_table(int level) {
  switch (level) {
#if NCX_HAVE_LEVEL_BASELINE
    case kLevelBaseline: return level_baseline::kernel_table();
#endif
#if NCX_HAVE_LEVEL_AVX2
    case kLevelAvx2: return level_avx2::kernel_table();
#endif
#if NCX_HAVE_LEVEL_AVX512
    case kLevelAvx512: return level_avx512::kernel_table();
#endif
    default: return nullptr;
  }
}

bool cpu_runs(int level) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  // The levels' -march flags: x86-64-v3 (AVX2, FMA, BMI1/2, LZCNT, MOVBE),
  // x86-64-v4 (AVX-512 F/BW/CD/DQ/VL) plus VNNI. The checks include the OS's
  // support for the wider registers.
  switch (level) {
    case kLevelBaseline: return true;
    case kLevelAvx2: return __builtin_cpu_supports("x86-64-v3");
    case kLevelAvx512: return __builtin_cpu_supports("x86-64-v4") && __builtin_cpu_supports("avx512vnni");
    default: return false;
  }
#else
  return level == kLevelBaseline;
#endif
}

bool usable(int level) { return built_table(level) != nullptr && cpu_runs(level); }

int best_level() {
  for (int level = kNumCpuLevels - 1; level > 0; --level)
    if (usable(level)) return level;
  return kLevelBaseline;
}

std::atomic<const CpuKernels*> active{nullptr};

}  // namespace

const CpuKernels& cpu_kernels() {
  const CpuKernels* t = active.load(std::memory_order_acquire);
  if (!t) {
    t = built_table(best_level());
    active.store(t, std::memory_order_release);
  }
  return *t;
}

std::string cpu_level() { return cpu_kernels().level; }

std::vector<std::string> cpu_levels() {
  std::vector<std::string> out;
  for (int level = 0; level < kNumCpuLevels; ++level)
    if (usable(level)) out.push_back(kLevelNames[level]);
  return out;
}

void set_cpu_level(const std::string& name) {
  std::string have;
  for (const auto& l : cpu_levels()) have += (have.empty() ? "" : ", ") + l;
  for (int level = 0; level < kNumCpuLevels; ++level) {
    if (name != kLevelNames[level]) continue;
    if (!usable(level))
      throw std::invalid_argument("CPU level '" + name + "' is not available here: " +
                                  (built_table(level) ? "this CPU lacks its instructions" : "this build lacks it") +
                                  " (available: " + have + ")");
    active.store(built_table(level), std::memory_order_release);
    return;
  }
  throw std::invalid_argument("unknown CPU level '" + name + "' (the levels: baseline, avx2, avx512; available here: " +
                              have + ")");
}

void set_cpu_level_from_environment() {
  const char* name = std::getenv("NCX_CPU_LEVEL");
  if (!name || !*name) return;
  try {
    set_cpu_level(name);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("NCX_CPU_LEVEL: ") + e.what());
  }
}

}  // namespace ncx
