"""The package as users get it: installed into the environment (not only importable from
the repository root), with its console scripts, and as an sdist and a wheel that build and
install on their own."""

import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin/, not the interpreter it links to


def _expected_version() -> str:
    text = (ROOT / "hpsgd_ext" / "_version.py").read_text()
    return re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(extra)
    return env


def _run(cmd, cwd, env=None, timeout=120):
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or _clean_env(), timeout=timeout,
                         capture_output=True, text=True)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout


# A user's script anywhere: the package is installed, the version is the one in _version.py,
# the fused op runs on CPU tensors (first round: out = p - a, then p = a).
_USER_SCRIPT = textwrap.dedent("""
    import sys, torch, hpsgd_ext
    p = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[4.0, 5.0]])]
    a = [torch.zeros(3), torch.ones(1, 2)]
    out = torch.empty(5)
    hpsgd_ext.ops.round_step(p, a, None, out)
    assert out.tolist() == [1.0, 2.0, 3.0, 3.0, 4.0], out
    assert all(torch.equal(x, y) for x, y in zip(p, a))
    print(hpsgd_ext.__version__, hpsgd_ext.__file__, hpsgd_ext.built_with_cuda())
""")


def test_installed_package_imports_from_any_folder(tmp_path):
    out = _run([sys.executable, "-c", _USER_SCRIPT], cwd=tmp_path).split()
    assert out[0] == _expected_version()
    assert not Path(out[1]).is_relative_to(tmp_path)


@pytest.mark.parametrize("script", ["hpsgd-train", "hpsgd-bench"])
def test_console_scripts_installed(tmp_path, script):
    exe = BIN / script
    assert exe.exists(), f"{exe} missing: the package is not installed into this venv (make build does it)"
    assert "usage:" in _run([exe, "--help"], cwd=tmp_path)


def _build_sdist(out: Path) -> Path:
    # pypa/build if installed (the repository's build/ folder is a namespace package: no origin).
    spec = importlib.util.find_spec("build")
    if spec is not None and spec.origin not in (None, "namespace"):
        cmd = [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out]
    else:
        cmd = [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", out]
    # The sdist is made without compiling; a C++-only configuration keeps setup.py quick.
    _run(cmd, cwd=ROOT, env=_clean_env(HPSGD_CUDA="0"), timeout=300)
    (sdist,) = out.glob("hpsgd_ext-*.tar.gz")
    return sdist


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sdist_builds_a_wheel_that_installs_and_runs(tmp_path):
    """sdist -> wheel (a C++-only build from the unpacked sdist, so the sdist is proven
    complete and the repository's build/ is left alone) -> a fresh venv that sees this
    environment's torch without reinstalling it -> a user's script and the console scripts."""
    version = _expected_version()
    sdist = _build_sdist(tmp_path / "dist")
    top = f"hpsgd_ext-{version}"
    with tarfile.open(sdist) as tf:
        names = set(tf.getnames())
        for must in ["setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "requirements.txt",
                     "hpsgd_ext/_version.py", "hpsgd_ext/train/__main__.py", "hpsgd_ext/bench/__main__.py",
                     "build_support/toolchain.py", "csrc/ops.cpp", "csrc/checks.h"]:
            assert f"{top}/{must}" in names, f"{must} missing from the sdist"
        for ext in (".cu", ".cuh", ".h", ".cpp"):  # every CUDA source too, even from a C++-only sdist
            want = {f"{top}/{p.relative_to(ROOT)}" for p in (ROOT / "csrc").rglob(f"*{ext}")}
            assert want <= names, f"missing from the sdist: {sorted(want - names)[:5]}"
        assert not [n for n in names if n.endswith((".so", ".o"))]
        tf.extractall(tmp_path / "src", filter="data")

    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-build-isolation",
          "--no-deps", "-q", "-w", wheels, tmp_path / "src" / top],
         cwd=tmp_path, env=_clean_env(HPSGD_CUDA="0"), timeout=840)
    (wheel,) = wheels.glob(f"hpsgd_ext-{version}-*.whl")

    # A fresh venv without pip; this environment's site-packages (torch, scikit-learn, ...)
    # is appended to its path by a .pth file, so nothing is downloaded or reinstalled.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    vpy = venv / "bin" / "python"
    vsite = Path(_run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    (vsite / "_hpsgd_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", vpy, "install",
          "--no-deps", "--no-index", "-q", wheel], cwd=tmp_path, timeout=300)

    out = _run([vpy, "-c", _USER_SCRIPT], cwd=tmp_path).split()
    assert out[0] == version
    assert Path(out[1]).is_relative_to(vsite), f"imported {out[1]}, not the installed wheel"
    assert out[2] == "False"  # the C++-only build asked for
    for script in ["hpsgd-train", "hpsgd-bench"]:
        assert "usage:" in _run([venv / "bin" / script, "--help"], cwd=tmp_path)
