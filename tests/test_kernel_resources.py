"""The CUDA kernels' resource use, read from the built library with cuobjdump (no GPU
needed): every instantiation present, no spills, registers under the bound that keeps
at least four blocks of 256 threads resident per SM (kMinBlocks in
csrc/cuda/multi_tensor_apply.cuh: the compiler caps registers there, and must not spill
to meet the cap)."""

from __future__ import annotations

import pytest

import hpsgd_ext
from hpsgd_ext.bench.kernels import cuobjdump_resources

# 65536 registers per SM / (4 blocks * 256 threads) = 64 (docs/kernel-notes.md, version 3).
MAX_REGISTERS = 64
# flatten/unflatten: 9 dtype pairs each; delta_flatten, merge and 6 round_step
# variants: 15 dtype combinations each (see [kernel variants] in csrc/boundary_ops.h).
KERNELS = 2 * 9 + 8 * 15


@pytest.fixture(scope="module")
def rows():
    if not hpsgd_ext.built_with_cuda():
        pytest.skip("built without CUDA")
    found = cuobjdump_resources()
    if found is None:
        pytest.skip("no cuobjdump on this machine")
    return found


@pytest.fixture(scope="module")
def kernels(rows):
    return [r for r in rows if "multi_tensor_kernel" in r["function"]]


def test_every_instantiation_is_built(kernels):
    assert len(kernels) == KERNELS


def test_no_spills_and_registers_bounded(kernels):
    for r in kernels:
        assert r["local"] == 0 and r["stack"] == 0, r
        assert r["registers"] <= MAX_REGISTERS, r


@pytest.mark.parametrize("name,count,max_registers", [
    # The verdict's scan and init kernels (csrc/cuda/verdict_cuda.cu): kernel
    # parameters indexed by flat, read in place (no local copy of the span table).
    ("verdict_cuda", 3, 128),
    # The 8-bit reduction's kernels (csrc/cuda/quant_sum_cuda.cu): the shard sum for
    # int8 and float8_e4m3fn codes (kBlock threads, one element each) and the extra
    # sum; 512 threads a block: 65536 / 512 registers.
    ("quant_sum_cuda", 3, 128),
    # round_step on an 8-bit wire (csrc/cuda/quantized_step_cuda.cu): one kernel per
    # round_step variant (6), param/anchor dtype pair (5) and code dtype (2); 128
    # threads a block.
    ("quantized_step_kernel", 60, 255),
])
def test_other_kernels_built_without_spills(rows, name, count, max_registers):
    found = [r for r in rows if name in r["function"]]
    assert len(found) == count, [r["function"] for r in found]
    for r in found:
        assert r["local"] == 0 and r["stack"] == 0, r
        assert r["registers"] <= max_registers, r
