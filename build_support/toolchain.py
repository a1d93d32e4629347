"""The extension must use the process's libstdc++, never a private copy.

A compiler whose ``-shared`` links libstdc++ statically (seen on a GPU machine's
/opt/gcc) copies iostreams into the extension. The copy numbers locale facets on
its own, while torch's libstdc++ built the global locale, so the extension's
``ostringstream << 12345ul`` looks up the wrong facet: it printed nothing here
and crashed there. Every error message the extension formats goes that way, so
each bad argument became a segfault. The probe picks a compiler that links
libstdc++ as a shared library; the check refuses a built library that holds
its own copy anyway, whatever linked it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile

# std::ostream::_M_insert<unsigned long>: defined only by libstdc++ itself.
LIBSTDCXX_SYMBOL = "_ZNSo9_M_insertImEERSoT_"

_PROBE = ('#include <sstream>\n'
          'extern "C" int hpsgd_probe() { std::ostringstream s; s << 1ul; return (int)s.str().size(); }\n')


def defines_libstdcxx(library: str) -> bool | None:
    """Whether a shared library defines libstdc++'s own symbols (None: cannot tell, no nm)."""
    try:
        out = subprocess.run(["nm", "-D", "--defined-only", library], check=True,
                             capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return LIBSTDCXX_SYMBOL in out


def links_libstdcxx_statically(cxx: str) -> bool | None:
    """Whether ``cxx -shared`` copies libstdc++ into the library (None: cannot tell)."""
    with tempfile.TemporaryDirectory() as d:
        src, lib = os.path.join(d, "probe.cpp"), os.path.join(d, "probe.so")
        with open(src, "w") as f:
            f.write(_PROBE)
        try:
            subprocess.run([*shlex.split(cxx), "-shared", "-fPIC", "-O1", src, "-o", lib],
                           check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return None
        return defines_libstdcxx(lib)


def use_shared_libstdcxx_compiler(log=print) -> None:
    """Point CXX (and CC, which links and is nvcc's host compiler) at a compiler that
    links libstdc++ dynamically, when the one in use would copy it in."""
    cxx = os.environ.get("CXX", "c++")
    if not links_libstdcxx_statically(cxx):
        return
    for alt_cxx, alt_cc in (("/usr/bin/g++", "/usr/bin/gcc"), ("/usr/bin/c++", "/usr/bin/cc")):
        if os.path.exists(alt_cxx) and links_libstdcxx_statically(alt_cxx) is False:
            log(f"hpsgd_ext build: {cxx} links libstdc++ statically into shared libraries, "
                f"which breaks iostreams beside torch's libstdc++; using {alt_cxx}")
            os.environ["CXX"] = alt_cxx
            if os.path.exists(alt_cc):
                os.environ["CC"] = alt_cc
            return
    raise SystemExit(f"hpsgd_ext build: {cxx} links libstdc++ statically into shared libraries "
                     "and no other compiler was found; set CXX and CC to a compiler that links "
                     "libstdc++ as a shared library")


def check_built_library(library: str) -> None:
    """Refuse (and delete, so nothing imports it) a library that holds libstdc++."""
    if defines_libstdcxx(library):
        os.remove(library)
        raise SystemExit(f"hpsgd_ext build: {library} holds its own copy of libstdc++ "
                         f"(it defines {LIBSTDCXX_SYMBOL}); next to torch its error messages would "
                         "crash. Set CXX and CC to a compiler that links libstdc++ as a shared library.")
