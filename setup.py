"""Build of the hpsgd_ext C++/CUDA extension (the source of truth for the package).

The CUDA kernels and the NCCL communicator are built whenever a CUDA toolkit and a
CUDA build of torch are present: that is decided by the toolkit, never by
``torch.cuda.is_available()``, so a machine without a GPU (CI) still compiles them.

Environment knobs:
  HPSGD_CUDA=0|1          force the C++-only or the CUDA build
  HPSGD_NCCL=0            build the CUDA kernels but not the NCCL communicator
  TORCH_CUDA_ARCH_LIST    default "8.0;8.6;8.9;9.0+PTX"
  HPSGD_CPU_ARCH          -march for the CPU kernels (default x86-64-v3 when the
                          build machine has AVX2/FMA/F16C; "" for the compiler's default)
  MAX_JOBS                parallel compile jobs (default: sized to cores and memory)
  CXX, CC                 the compilers; one that would copy libstdc++ into the extension
                          is replaced by /usr/bin/g++ (see build_support/toolchain.py)
"""

from __future__ import annotations

import glob
import os
import site
import sys
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home() -> str | None:
    # torch guesses CUDA_HOME from nvcc's path (/usr/local here); set it first.
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    for cand in (os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if cand and os.path.exists(os.path.join(cand, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = cand
            return cand
    return None


_find_cuda_home()

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

sys.path.insert(0, ROOT)
from build_support.toolchain import check_built_library, use_shared_libstdcxx_compiler  # noqa: E402


def _flag(name: str) -> str | None:
    v = os.environ.get(name)
    return None if v is None or v == "" else v


def _want_cuda() -> bool:
    forced = _flag("HPSGD_CUDA")
    have = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    if forced == "0":
        return False
    if forced == "1":
        if not have:
            sys.exit("HPSGD_CUDA=1 but no CUDA toolkit (nvcc) or no CUDA build of torch was found")
        return True
    return have


def _site_dirs() -> list[str]:
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    try:
        dirs += site.getsitepackages()
    except AttributeError:
        pass
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def _nvidia_includes() -> list[str]:
    # Headers torch's CUDA headers include (cuBLAS, cuSPARSE) ship in pip wheels.
    found = []
    for d in _site_dirs():
        found += sorted(glob.glob(os.path.join(d, "nvidia", "cu*", "include")))
        found += sorted(glob.glob(os.path.join(d, "nvidia", "*", "include")))
    return [f for f in dict.fromkeys(found) if not f.endswith(os.path.join("nccl", "include"))]


def _find_nccl() -> tuple[str, str, str] | None:
    """(include dir, library dir, library file name) of NCCL, or None."""
    cands = []
    if _flag("NCCL_HOME"):
        cands.append((os.path.join(os.environ["NCCL_HOME"], "include"),
                      os.path.join(os.environ["NCCL_HOME"], "lib")))
    for d in _site_dirs():
        cands.append((os.path.join(d, "nvidia", "nccl", "include"),
                      os.path.join(d, "nvidia", "nccl", "lib")))
    cands.append(("/usr/include", "/usr/lib/x86_64-linux-gnu"))
    for inc, lib in cands:
        if not os.path.exists(os.path.join(inc, "nccl.h")):
            continue
        libs = sorted(glob.glob(os.path.join(lib, "libnccl.so*")), key=len)
        if libs:
            return inc, lib, os.path.basename(libs[0])
    return None


def _cpu_arch_flags() -> list[str]:
    arch = os.environ.get("HPSGD_CPU_ARCH")
    if arch is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = set(f.read().split())
        except OSError:
            flags = set()
        arch = "x86-64-v3" if {"avx2", "fma", "f16c"} <= flags else ""
    return [f"-march={arch}"] if arch else []


def _default_jobs() -> None:
    if os.environ.get("MAX_JOBS"):
        return
    cores = os.cpu_count() or 1
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 8
    # nvcc on ATen headers peaks near 3 GB a job.
    os.environ["MAX_JOBS"] = str(max(1, min(cores, int(mem_gb // 3))))


def _extension():
    with_cuda = _want_cuda()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/comm/*.cpp")
                     + glob.glob("csrc/engine/*.cpp"))
    define = []
    # -ffp-contract=off: every product rounded once, as in torch's own CPU kernels (no
    # fused multiply-add), so the codec (csrc/quant.h, NOTE: [8-bit codec]) and the rule
    # give the plain-PyTorch reference's bits.
    cxx = ["-O3", "-fopenmp", "-fvisibility=hidden", "-Wall", "-Wno-unused-function",
           "-ffp-contract=off"] + _cpu_arch_flags()
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    library_dirs, libraries, link = [], [], ["-fopenmp"]
    if not with_cuda:
        return cpp_extension.CppExtension(
            "hpsgd_ext._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, extra_link_args=link)

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;8.6;8.9;9.0+PTX")
    sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/comm/*.cu"))
    define.append("HPSGD_WITH_CUDA")
    include_dirs += _nvidia_includes()
    nccl = None if _flag("HPSGD_NCCL") == "0" else _find_nccl()
    if nccl is not None:
        inc, lib, libfile = nccl
        include_dirs.append(inc)
        library_dirs.append(lib)
        link += [f"-l:{libfile}", f"-Wl,-rpath,{lib}"]
        define.append("HPSGD_WITH_NCCL")
    print(f"hpsgd_ext build: CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}, "
          f"NCCL {'at ' + nccl[0] if nccl else 'not built'}", flush=True)
    macros = [f"-D{d}" for d in define]
    return cpp_extension.CUDAExtension(
        "hpsgd_ext._C", sources, include_dirs=include_dirs, library_dirs=library_dirs,
        libraries=libraries,
        extra_compile_args={"cxx": cxx + macros, "nvcc": nvcc + macros},
        extra_link_args=link)


def _persistent_build_temp() -> str:
    """Where ``setup.py build_ext`` and ``pip wheel``/``pip install .`` keep the objects."""
    return os.path.join("build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")


class _BuildExt(cpp_extension.BuildExtension):
    def finalize_options(self) -> None:
        super().finalize_options()
        # `pip install -e .` (setuptools' editable wheel) compiles in a fresh temporary
        # directory each time: every install would recompile everything (about 8 minutes
        # with CUDA). Keep its objects where the other builds keep theirs, so ninja only
        # rebuilds what changed and an editable install after `build_ext --inplace`
        # (or the reverse) compiles nothing.
        if getattr(self, "editable_mode", False):
            self.build_temp = _persistent_build_temp()

    def build_extensions(self) -> None:
        super().build_extensions()
        for ext in self.extensions:
            check_built_library(self.get_ext_fullpath(ext.name))


_default_jobs()
use_shared_libstdcxx_compiler(lambda msg: print(msg, flush=True))

# The package list (pyproject.toml has none); build_support/ and tests/ are not installed.
setup(
    packages=find_packages(include=["hpsgd_ext", "hpsgd_ext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": _BuildExt.with_options(use_ninja=True)},
)
