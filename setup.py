"""Build of ncx._C: the CPU back end always; the CUDA back end when torch is a
CUDA build and nvcc is found (no visible GPU needed). NCX_CUDA=0/1 forces
either way; TORCH_CUDA_ARCH_LIST picks the GPU architectures (default here:
Hopper, 9.0, when no GPU is visible to pick from).

Install with `pip install --no-build-isolation -e .` so the extension is
compiled against the torch already installed.
"""
import glob
import os
import platform
import shutil
import sys
import sysconfig


def find_cuda_home():
    """The CUDA toolkit folder: CUDA_HOME/CUDA_PATH, else where nvcc really lives."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "bin", "nvcc")) and os.path.exists(
            os.path.join(c, "include", "cuda_runtime.h")
        ):
            return c
    return None


cuda_home = find_cuda_home()
if cuda_home:
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def want_cuda():
    flag = os.environ.get("NCX_CUDA")
    if flag is not None:
        if flag not in ("0", "1"):
            sys.exit(f"NCX_CUDA must be 0 or 1, got {flag!r}")
        if flag == "1" and (torch.version.cuda is None or cuda_home is None):
            sys.exit("NCX_CUDA=1 but torch is a CPU build or nvcc/CUDA_HOME was not found")
        return flag == "1"
    return torch.version.cuda is not None and cuda_home is not None


def extra_cuda_includes():
    """Headers torch's CUDA build includes (cusparse.h, ...) that a bare toolkit
    may lack: the nvidia/cu13 (or cu12) wheels beside torch carry them."""
    out = []
    if cuda_home and os.path.exists(os.path.join(cuda_home, "include", "cusparse.h")):
        return out
    # The site-packages holding torch first (a venv with system site-packages
    # has its own purelib, without the wheels), then every path entry.
    sites = [os.path.dirname(os.path.dirname(torch.__file__)), sysconfig.get_paths()["purelib"], *sys.path]
    for site in dict.fromkeys(p for p in sites if p and os.path.isdir(p)):
        for inc in sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include"))) + sorted(
            glob.glob(os.path.join(site, "nvidia", "*", "include"))
        ):
            if os.path.exists(os.path.join(inc, "cusparse.h")):
                return [inc]
    return out


here = os.path.dirname(os.path.abspath(__file__))
sources = ["csrc/ncx.cpp", "csrc/cpu/cpu_level.cpp", "csrc/cpu/ops_cpu.cpp", "csrc/cpu/int_m1_cpu.cpp",
           "csrc/cpu/window_vocab_cpu.cpp", "csrc/int_m1_forward.cpp"]
# -ffp-contract=off: the quantizer's float steps must round exactly as written
# (no fused multiply-add), so CPU and GPU produce the same integers.
# -fopenmp: at::parallel_for is a header template that, with torch's OpenMP
# backend, parallelizes through an inline `#pragma omp parallel`; without the
# flag the loops over streams silently run on one thread.
# -fno-trapping-math: lets GCC if-convert the float selects of the quantizer's
# exp so the logits loop vectorizes; it changes no value (no reassociation, no
# contraction), only the assumption that FP exception flags are not observed.
cxx_flags = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math", "-fopenmp"]
link_flags = ["-fopenmp"]
define_macros = []
include_dirs = [os.path.join(here, "csrc")]

# The CPU's hot loops (csrc/cpu/kernels.cpp) are compiled once per x86-64
# level and picked at run time from what the CPU has (csrc/cpu/cpu_level.cpp),
# so one build runs on any x86-64 CPU and uses AVX2 or AVX-512 where they are.
# Everything else is built for the compiler's default target: no -march=native,
# a wheel built here runs wherever it is copied. Other architectures build the
# kernels once, for their default target.
KERNELS_SOURCE = "csrc/cpu/kernels.cpp"
if platform.machine().lower() in ("x86_64", "amd64"):
    CPU_LEVELS = {
        "baseline": [],
        "avx2": ["-march=x86-64-v3"],  # AVX2, FMA, BMI1/2, LZCNT, MOVBE
        "avx512": ["-march=x86-64-v4", "-mavx512vnni"],  # AVX-512 F/BW/CD/DQ/VL and VNNI
    }
else:
    CPU_LEVELS = {"baseline": []}
for level in CPU_LEVELS:
    define_macros.append((f"NCX_HAVE_LEVEL_{level.upper()}", "1"))


class BuildWithCpuLevels(BuildExtension):
    """Compiles KERNELS_SOURCE once per CPU level, each into its own folder
    with its own flags and namespace, and links the objects in."""

    def build_extension(self, ext):
        objects = []
        for level, flags in CPU_LEVELS.items():
            postargs = cxx_flags + flags
            objects += self.compiler.compile(
                [KERNELS_SOURCE], output_dir=os.path.join(self.build_temp, f"level_{level}"),
                macros=ext.define_macros + [("NCX_LEVEL_NAMESPACE", f"level_{level}")],
                include_dirs=ext.include_dirs, extra_postargs={"cxx": postargs, "nvcc": []}, depends=ext.depends)
        ext.extra_objects = [o for o in ext.extra_objects if o not in objects] + objects
        super().build_extension(ext)

if want_cuda():
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    sources += ["csrc/cuda/ops_cuda.cpp", "csrc/cuda/kernels.cu", "csrc/cuda/int_m1_cuda.cpp",
                "csrc/cuda/int_m1_kernels.cu"]
    define_macros.append(("NCX_WITH_CUDA", None))
    include_dirs += extra_cuda_includes()
    ext = CUDAExtension(
        "ncx._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_link_args=link_flags,
        extra_compile_args={
            "cxx": cxx_flags,
            # --fmad=false: same reason as -ffp-contract=off above.
            "nvcc": ["-O3", "--fmad=false", "-lineinfo"],
        },
    )
else:
    ext = CppExtension(
        "ncx._C", sources, include_dirs=include_dirs, define_macros=define_macros, extra_compile_args=cxx_flags,
        extra_link_args=link_flags,
    )

setup(ext_modules=[ext], cmdclass={"build_ext": BuildWithCpuLevels.with_options(use_ninja=True)})
