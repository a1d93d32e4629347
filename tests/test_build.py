"""The build compiled what the machine allows: CUDA kernels whenever a toolkit and a
CUDA torch are present (a GPU is not needed), NCCL whenever its header is."""

import os
import shutil

import pytest
import torch

import hpsgd_ext


def _toolkit_present():
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return torch.version.cuda is not None and (
        os.path.exists(os.path.join(home, "bin", "nvcc")) or shutil.which("nvcc"))


def test_version():
    assert isinstance(hpsgd_ext.__version__, str) and hpsgd_ext.__version__.count(".") == 2


@pytest.mark.skipif(os.environ.get("HPSGD_CUDA") == "0", reason="C++-only build forced")
def test_cuda_and_nccl_compiled_when_toolkit_present():
    if not _toolkit_present():
        pytest.skip("no CUDA toolkit on this machine")
    assert hpsgd_ext.built_with_cuda()
    assert hpsgd_ext.built_with_nccl()


def test_ops_registered_for_each_built_device():
    for name in ["flatten", "unflatten", "delta_flatten", "merge", "round_step"]:
        op = getattr(torch.ops.hpsgd, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU")
        if hpsgd_ext.built_with_cuda():
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA")


def test_extension_uses_the_process_libstdcxx():
    # A private copy of libstdc++ in the extension formats numbers with the wrong
    # locale facet: its error messages lost their numbers here and segfaulted on a GPU machine.
    from build_support.toolchain import defines_libstdcxx

    found = defines_libstdcxx(hpsgd_ext._C.__file__)
    if found is None:
        pytest.skip("no nm on this machine")
    assert not found


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
def test_toolchain_probe_tells_static_from_shared_libstdcxx():
    from build_support.toolchain import links_libstdcxx_statically

    shared = links_libstdcxx_statically("g++")
    if shared is None:
        pytest.skip("no nm on this machine")
    assert shared is False
    assert links_libstdcxx_statically("g++ -static-libstdc++") is True
